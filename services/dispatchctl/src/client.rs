//! Connections to the dispatch gRPC services, with errors mapped to the CLI's exit codes.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use crate::CliError;

/// Default endpoints.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:50051";
/// Default reader endpoint.
pub const DEFAULT_READER: &str = "http://127.0.0.1:50052";
/// Default AdminService (processor) endpoint.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:50053";
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Endpoints and keys as given on the command line or in the environment; anything left unset
/// comes from the config file ([`crate::config`]), then from the defaults.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnArgs {
    /// Gateway gRPC address [default: http://127.0.0.1:50051].
    #[arg(long, env = "DISPATCH_GATEWAY", global = true)]
    pub gateway: Option<String>,
    /// Reader gRPC address [default: http://127.0.0.1:50052].
    #[arg(long, env = "DISPATCH_READER", global = true)]
    pub reader: Option<String>,
    /// Processor AdminService gRPC address [default: http://127.0.0.1:50053].
    #[arg(long, env = "DISPATCH_ADMIN", global = true)]
    pub admin: Option<String>,
    /// API key: the tenant key for task commands (and the admin key when --admin-key is unset).
    #[arg(long, env = "DISPATCH_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Admin key for `dlq`, `pause`, `resume` and `stats` (falls back to --api-key).
    #[arg(
        long,
        env = "DISPATCH_ADMIN_KEY",
        hide_env_values = true,
        global = true
    )]
    pub admin_key: Option<String>,
    /// Per-request timeout in milliseconds [default: 10000].
    #[arg(long, env = "DISPATCH_TIMEOUT_MS", global = true)]
    pub timeout_ms: Option<u64>,
    /// PEM CA bundle the servers' certificates must chain to, for https:// addresses [default:
    /// the system roots].
    #[arg(long, env = "DISPATCH_CA", global = true, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate presented to https:// servers that require one (mTLS; with
    /// --client-key).
    #[arg(
        long,
        visible_alias = "client-cert",
        env = "DISPATCH_CERT",
        global = true,
        value_name = "FILE"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long = "client-key",
        env = "DISPATCH_CLIENT_KEY",
        global = true,
        value_name = "FILE"
    )]
    pub client_key: Option<std::path::PathBuf>,
    /// Config file [default: $XDG_CONFIG_HOME/dispatchctl.toml or ~/.config/dispatchctl.toml].
    #[arg(long, env = "DISPATCHCTL_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,
}

/// Where to connect and with which keys (flags > env > config file > defaults).
#[derive(Debug, Clone)]
pub struct Conn {
    /// Gateway gRPC address.
    pub gateway: String,
    /// Reader gRPC address.
    pub reader: String,
    /// Processor AdminService gRPC address.
    pub admin: String,
    /// Tenant API key.
    pub api_key: String,
    /// Admin key (empty: use `api_key`).
    pub admin_key: String,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// CA bundle for https:// addresses (system roots when unset).
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate (mTLS).
    pub cert: Option<std::path::PathBuf>,
    /// Client key (mTLS).
    pub key: Option<std::path::PathBuf>,
}

impl Default for Conn {
    fn default() -> Self {
        Self {
            gateway: DEFAULT_GATEWAY.into(),
            reader: DEFAULT_READER.into(),
            admin: DEFAULT_ADMIN.into(),
            api_key: String::new(),
            admin_key: String::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            ca: None,
            cert: None,
            key: None,
        }
    }
}

impl Conn {
    /// Opens a channel to `addr`: TLS for `https://` (verified against `--ca` or the system
    /// roots, presenting `--cert`/`--key` when set), plaintext for `http://`.
    ///
    /// # Errors
    /// [`CliError::Invalid`] for a malformed address or unreadable TLS file,
    /// [`CliError::Unreachable`] when it refuses (a failed handshake included).
    pub async fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        let mut ep = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| CliError::Invalid(format!("invalid address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        if addr.starts_with("https://") {
            ep = ep
                .tls_config(self.tls()?)
                .map_err(|e| CliError::Invalid(format!("TLS for {addr}: {e}")))?;
        } else if self.ca.is_some() || self.cert.is_some() {
            return Err(CliError::Invalid(format!(
                "--ca/--cert are set but {addr} is not an https:// address"
            ))
            .into());
        }
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

    fn tls(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |flag: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| CliError::Invalid(format!("{flag} {}: {e}", p.display())))
        };
        let mut tls = match &self.ca {
            Some(ca) => {
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca", ca)?))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read("--cert", cert)?,
                    read("--key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Invalid("--cert and --client-key go together".into()).into());
            }
        }
        Ok(tls)
    }

    /// A request with the tenant key and timeout set.
    ///
    /// # Errors
    /// The key is not ASCII.
    pub fn request<T>(&self, msg: T) -> anyhow::Result<Request<T>> {
        self.with_key(msg, &self.api_key, "--api-key")
    }

    /// A request with the admin key (else the API key) and timeout set.
    ///
    /// # Errors
    /// The key is not ASCII.
    pub fn admin_request<T>(&self, msg: T) -> anyhow::Result<Request<T>> {
        if self.admin_key.is_empty() {
            self.with_key(msg, &self.api_key, "--api-key")
        } else {
            self.with_key(msg, &self.admin_key, "--admin-key")
        }
    }

    fn with_key<T>(&self, msg: T, key: &str, flag: &str) -> anyhow::Result<Request<T>> {
        let mut r = Request::new(msg);
        if !key.is_empty() {
            let v: MetadataValue<Ascii> = format!("Bearer {key}")
                .parse()
                .map_err(|_| CliError::Invalid(format!("{flag} must be printable ASCII")))?;
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
            "{what}: authentication failed ({}); check --api-key / DISPATCH_API_KEY (admin commands: --admin-key / DISPATCH_ADMIN_KEY)",
            s.message()
        ))
        .into(),
        Code::Unavailable => CliError::Unreachable(msg).into(),
        _ => anyhow::anyhow!("{msg} ({:?})", s.code()),
    }
}
