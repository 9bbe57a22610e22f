//! gRPC plumbing shared by every server: API-key authentication, per-RPC metrics, reflection.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use dispatch_core::Tenant;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use crate::metrics::{LATENCY_BUCKETS, register};

/// `[auth]`: who may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `api_keys` (default) or `none` (local development only: every caller is `dev_tenant`).
    pub mode: String,
    /// Tenant keys: the SHA-256 (hex) of each key, never the key itself.
    pub api_keys: Vec<ApiKeyEntry>,
    /// SHA-256 (hex) of the admin key (AdminService), separate from tenant keys.
    pub admin_key_sha256: Option<String>,
    /// The tenant of every caller when `mode = "none"`.
    pub dev_tenant: String,
}

/// One tenant API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The tenant this key acts for.
    pub tenant: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: "api_keys".into(),
            api_keys: Vec::new(),
            admin_key_sha256: None,
            dev_tenant: "dev".into(),
        }
    }
}

/// Hex SHA-256 of an API key (what settings store).
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Maps bearer tokens to tenants.
#[derive(Debug, Clone)]
pub struct Authenticator {
    none_tenant: Option<Tenant>,
    by_hash: HashMap<String, Tenant>,
    admin_hash: Option<String>,
}

impl Authenticator {
    /// Builds from settings.
    ///
    /// # Errors
    /// An unknown mode, an invalid tenant name or a malformed hash, naming the setting.
    pub fn from_settings(s: &AuthSettings) -> Result<Self, crate::SettingsError> {
        let bad = |m: String| crate::SettingsError(m);
        let none_tenant = match s.mode.as_str() {
            "api_keys" => None,
            "none" => Some(
                Tenant::parse(&s.dev_tenant).map_err(|e| bad(format!("auth.dev_tenant {e}")))?,
            ),
            other => {
                return Err(bad(format!(
                    "auth.mode must be \"api_keys\" or \"none\", not {other:?}"
                )));
            }
        };
        let valid_hash = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        let mut by_hash = HashMap::new();
        for (i, e) in s.api_keys.iter().enumerate() {
            if !valid_hash(&e.key_sha256) {
                return Err(bad(format!(
                    "auth.api_keys[{i}].key_sha256 must be 64 hex characters"
                )));
            }
            let t = Tenant::parse(&e.tenant)
                .map_err(|err| bad(format!("auth.api_keys[{i}].tenant {err}")))?;
            by_hash.insert(e.key_sha256.to_ascii_lowercase(), t);
        }
        if let Some(h) = &s.admin_key_sha256
            && !valid_hash(h)
        {
            return Err(bad("auth.admin_key_sha256 must be 64 hex characters".into()));
        }
        Ok(Self {
            none_tenant,
            by_hash,
            admin_hash: s.admin_key_sha256.as_ref().map(|h| h.to_ascii_lowercase()),
        })
    }

    fn bearer(md: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
        let raw = md.get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata (expected `Bearer <api key>`)")
        })?;
        let raw = raw
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not ASCII"))?;
        raw.strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <api key>`"))
    }

    /// The tenant of the caller.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, malformed or unknown key.
    pub fn tenant(&self, md: &tonic::metadata::MetadataMap) -> Result<Tenant, Status> {
        if let Some(t) = &self.none_tenant {
            return Ok(t.clone());
        }
        let key = Self::bearer(md)?;
        self.by_hash
            .get(&hash_key(key))
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown api key"))
    }

    /// Checks the admin key.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing or wrong key (a tenant key is not an admin key);
    /// with `mode = "none"` every caller is admin.
    pub fn admin(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if self.none_tenant.is_some() {
            return Ok(());
        }
        let key = Self::bearer(md)?;
        match &self.admin_hash {
            Some(h) if *h == hash_key(key) => Ok(()),
            _ => Err(Status::unauthenticated("admin api key required")),
        }
    }
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "dispatch_grpc_requests_total",
                "Finished gRPC requests by status code.",
            ),
            &["service", "method", "code"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "dispatch_grpc_request_duration_seconds",
                "gRPC server latency.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service", "method"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "dispatch_grpc_in_flight_requests",
                "gRPC requests being served.",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// Accepted connections of a gRPC listener, with `TCP_NODELAY` and keepalive set.
///
/// `Server::serve_with_incoming*` ignores the builder's `tcp_nodelay` (on by default only for
/// `serve(addr)`); a plain `TcpListenerStream` leaves Nagle's algorithm on, and small responses
/// then wait for the client's delayed ACK: 40 ms outliers at the tail of every latency figure.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)))
}

/// The canonical name of a status code (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Pre-creates the OK and common error series of `methods` so dashboards and alerts see them
/// before the first request.
pub fn init_rpc_metrics(service: &str, methods: &[&str]) {
    IN_FLIGHT.with_label_values(&[service]).set(0);
    for m in methods {
        let _ = DURATION.with_label_values(&[service, m]);
        for code in ["OK", "INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL"] {
            let _ = REQUESTS.with_label_values(&[service, m, code]);
        }
    }
}

/// Runs one RPC, recording its latency, status code and in-flight count: the one place every
/// gRPC handler's metrics come from.
pub async fn observe<T, F>(service: &'static str, method: &'static str, fut: F) -> Result<T, Status>
where
    F: std::future::Future<Output = Result<T, Status>>,
{
    let gauge = IN_FLIGHT.with_label_values(&[service]);
    gauge.inc();
    let start = Instant::now();
    let out = fut.await;
    gauge.dec();
    DURATION
        .with_label_values(&[service, method])
        .observe(start.elapsed().as_secs_f64());
    let code = match &out {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    REQUESTS
        .with_label_values(&[service, method, code_name(code)])
        .inc();
    out
}

/// Server reflection in both protocol versions, listing the dispatch services in `served` plus
/// health and reflection itself: `grpc.reflection.v1` (grpcurl, grpcui, Rust clients) and
/// `grpc.reflection.v1alpha` (Python's grpcio-reflection, older grpcurl, Postman, k6's `reflect`
/// still speak only this one).
///
/// Every server embeds the whole dispatch.v1 descriptor set, so any symbol resolves; only the
/// list is narrowed to `served`, because a client that lists a service expects to call it (the
/// gateway once listed TaskQueryService and AdminService and answered UNIMPLEMENTED).
///
/// # Errors
/// An embedded descriptor set does not decode (a build problem).
pub fn reflection_services(
    served: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    use tonic_reflection::pb::{v1, v1alpha};
    let always = [
        tonic_health::pb::health_server::SERVICE_NAME,
        v1::server_reflection_server::SERVICE_NAME,
        v1alpha::server_reflection_server::SERVICE_NAME,
    ];
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(dispatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(v1alpha::FILE_DESCRIPTOR_SET);
        for name in served.iter().chain(&always) {
            b = b.with_service_name(*name);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The server TLS config from `[grpc]`: `None` when `tls_cert_path`/`tls_key_path` are unset;
/// with `tls_client_ca_path` clients must present a certificate signed by that CA (mTLS).
///
/// # Errors
/// Only one of cert/key set, or an unreadable file (named in the message).
pub fn tls_config(
    s: &crate::settings::GrpcSettings,
) -> Result<Option<tonic::transport::ServerTlsConfig>, crate::SettingsError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |p: &std::path::Path, key: &str| {
        std::fs::read(p)
            .map_err(|e| crate::SettingsError(format!("grpc.{key} {}: {e}", p.display())))
    };
    match (&s.tls_cert_path, &s.tls_key_path) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let identity =
                Identity::from_pem(read(cert, "tls_cert_path")?, read(key, "tls_key_path")?);
            let mut cfg = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = &s.tls_client_ca_path {
                cfg = cfg.client_ca_root(Certificate::from_pem(read(ca, "tls_client_ca_path")?));
            }
            Ok(Some(cfg))
        }
        _ => Err(crate::SettingsError(
            "grpc.tls_cert_path and grpc.tls_key_path must be set together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        use futures::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let server_side = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(
            server_side.nodelay().expect("nodelay"),
            "TCP_NODELAY is set"
        );
    }

    fn md(v: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", v.parse().expect("ascii"));
        m
    }

    fn auth() -> Authenticator {
        Authenticator::from_settings(&AuthSettings {
            api_keys: vec![ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key("k1"),
            }],
            admin_key_sha256: Some(hash_key("root")),
            ..AuthSettings::default()
        })
        .expect("valid")
    }

    #[test]
    fn keys_map_to_tenants() {
        let a = auth();
        assert_eq!(a.tenant(&md("Bearer k1")).expect("ok").as_str(), "acme");
        assert_eq!(
            a.tenant(&md("Bearer nope")).expect_err("bad").code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.tenant(&md("k1")).expect_err("no scheme").code(),
            Code::Unauthenticated
        );
        assert_eq!(
            a.tenant(&tonic::metadata::MetadataMap::new())
                .expect_err("missing")
                .code(),
            Code::Unauthenticated
        );
        assert!(a.admin(&md("Bearer root")).is_ok());
        assert!(
            a.admin(&md("Bearer k1")).is_err(),
            "tenant keys are not admin keys"
        );
    }

    #[test]
    fn settings_are_validated() {
        let bad = AuthSettings {
            mode: "open".into(),
            ..AuthSettings::default()
        };
        assert!(
            Authenticator::from_settings(&bad)
                .expect_err("mode")
                .to_string()
                .contains("auth.mode")
        );
        let bad = AuthSettings {
            api_keys: vec![ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: "plain-key".into(),
            }],
            ..AuthSettings::default()
        };
        assert!(
            Authenticator::from_settings(&bad)
                .expect_err("hash")
                .to_string()
                .contains("key_sha256")
        );
        let none = AuthSettings {
            mode: "none".into(),
            ..AuthSettings::default()
        };
        let a = Authenticator::from_settings(&none).expect("none");
        assert_eq!(
            a.tenant(&tonic::metadata::MetadataMap::new())
                .expect("dev")
                .as_str(),
            "dev"
        );
    }
}
