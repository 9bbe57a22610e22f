//! Connections to the dispatch gRPC services, with errors mapped to the CLI's exit codes.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::CliError;

/// Where to connect and with which key (flags or env).
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Gateway gRPC address.
    #[arg(
        long,
        env = "DISPATCH_GATEWAY",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub gateway: String,
    /// Reader gRPC address.
    #[arg(
        long,
        env = "DISPATCH_READER",
        default_value = "http://127.0.0.1:50052",
        global = true
    )]
    pub reader: String,
    /// Processor AdminService gRPC address.
    #[arg(
        long,
        env = "DISPATCH_ADMIN",
        default_value = "http://127.0.0.1:50053",
        global = true
    )]
    pub admin: String,
    /// API key (tenant key for tasks, admin key for admin commands).
    #[arg(
        long,
        env = "DISPATCH_API_KEY",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    pub api_key: String,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,
}

impl Conn {
    /// Opens a channel to `addr`.
    ///
    /// # Errors
    /// [`CliError::Invalid`] for a malformed address, [`CliError::Unreachable`] when it refuses.
    pub async fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        let ep = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| CliError::Invalid(format!("invalid address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        ep.connect().await.map_err(|e| {
            // tonic's top-level message is just "transport error": show the cause chain.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            CliError::Unreachable(format!(
                "cannot connect to {addr} ({msg}); is the service running?"
            ))
            .into()
        })
    }

    /// A request with the bearer key and timeout set.
    ///
    /// # Errors
    /// The key is not ASCII.
    pub fn request<T>(&self, msg: T) -> anyhow::Result<Request<T>> {
        let mut r = Request::new(msg);
        if !self.api_key.is_empty() {
            let v: MetadataValue<Ascii> = format!("Bearer {}", self.api_key)
                .parse()
                .map_err(|_| CliError::Invalid("--api-key must be printable ASCII".into()))?;
            r.metadata_mut().insert("authorization", v);
        }
        r.set_timeout(Duration::from_millis(self.timeout_ms));
        Ok(r)
    }
}

/// Maps a gRPC status to a CLI error with a clear message.
pub fn status_error(what: &str, s: Status) -> anyhow::Error {
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            CliError::Invalid(msg).into()
        }
        Code::NotFound => CliError::NotFound(msg).into(),
        Code::Unauthenticated | Code::PermissionDenied => CliError::Auth(format!(
            "{what}: authentication failed ({}); check --api-key / DISPATCH_API_KEY",
            s.message()
        ))
        .into(),
        Code::Unavailable => CliError::Unreachable(msg).into(),
        _ => anyhow::anyhow!("{msg} ({:?})", s.code()),
    }
}
