//! The settings sections every service shares; each service's own settings struct holds them
//! under these names (`[kafka]`, `[redis]`, ...).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[kafka]`: brokers, topic naming, client tuning and security (TLS, SASL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// Prefix of every topic name (empty in production; tests use a unique one).
    pub topic_prefix: String,
    /// Create missing topics at start-up through the admin API (idempotent).
    pub create_topics: bool,
    /// Partitions of created task topics.
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Producer: how long to wait to batch records.
    pub linger_ms: u32,
    /// Producer: `lz4`, `zstd`, `snappy`, `gzip` or `none`.
    pub compression: String,
    /// Producer: how long a record may take to be acknowledged before it fails.
    pub message_timeout_ms: u32,
    /// Consumer: group session timeout.
    pub session_timeout_ms: u32,
    /// Raw librdkafka options applied last (escape hatch), e.g. `{ "socket.keepalive.enable" = "true" }`.
    pub librdkafka: std::collections::BTreeMap<String, String>,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: String,
    /// PEM CA bundle the brokers' certificates must chain to (the system's when unset).
    pub ssl_ca_file: Option<PathBuf>,
    /// PEM client certificate (TLS client authentication; with `ssl_key_file`).
    pub ssl_cert_file: Option<PathBuf>,
    /// PEM private key of `ssl_cert_file`.
    pub ssl_key_file: Option<PathBuf>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    pub sasl_mechanism: String,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password. A secret: `--print-config` redacts it and `Debug` does not show it.
    #[serde(serialize_with = "expose_opt")]
    pub sasl_password: Option<secrecy::SecretString>,
}

// Settings are layered by serializing the defaults, so a secret must serialize; printing settings
// goes through [`render_redacted`] instead.
fn expose_opt<S: serde::Serializer>(
    v: &Option<secrecy::SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    match v {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

impl PartialEq for KafkaSettings {
    fn eq(&self, o: &Self) -> bool {
        // Field by field through their serialized form (the password has no `PartialEq`).
        toml::Value::try_from(self).ok() == toml::Value::try_from(o).ok()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            linger_ms: 2,
            compression: "lz4".into(),
            message_timeout_ms: 5_000,
            session_timeout_ms: 10_000,
            librdkafka: Default::default(),
            security_protocol: "plaintext".into(),
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            sasl_mechanism: String::new(),
            sasl_username: None,
            sasl_password: None,
        }
    }
}

impl KafkaSettings {
    /// Topic names under this prefix.
    pub fn topics(&self) -> dispatch_core::Topics {
        dispatch_core::Topics::new(self.topic_prefix.clone())
    }
}

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// PEM CA bundle a `rediss://` server's certificate must chain to (the system's when unset).
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key (tests use a unique one).
    pub key_prefix: String,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Per-command timeout (a slow Redis counts as a failing one).
    pub command_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            tls_ca_file: None,
            key_prefix: "dispatch:".into(),
            connect_timeout_ms: 1_000,
            command_timeout_ms: 250,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `tracing` filter directive, e.g. `info` or `info,dispatch_processor=debug`. `RUST_LOG` wins.
    pub log_level: String,
    /// `json` (default) or `pretty`.
    pub log_format: String,
    /// OTLP/gRPC endpoint such as `http://127.0.0.1:4317`; traces are off when unset.
    pub otlp_endpoint: Option<String>,
    /// PEM CA bundle an `https://` OTLP endpoint's certificate must chain to (the system's when
    /// unset).
    pub otlp_ca_file: Option<PathBuf>,
    /// Fraction of new root traces sampled (children follow their parent).
    pub sampling_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "json".into(),
            otlp_endpoint: None,
            otlp_ca_file: None,
            sampling_ratio: 0.05,
        }
    }
}

/// `[admin]`: the admin HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Listen address of `/metrics`, `/healthz`, `/readyz` (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Serve CPU profiles at `/debug/pprof/profile` (admin key required). Off by default: a
    /// profile samples every thread at 99 Hz while it runs.
    pub profiling: bool,
}

impl AdminSettings {
    /// Admin server on `port` of loopback.
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            profiling: false,
        }
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self::on_port(0)
    }
}

/// `[grpc]`: a gRPC server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    /// Listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest accepted request message.
    pub max_request_bytes: usize,
    /// Requests served at once; beyond that, requests are shed with UNAVAILABLE.
    pub max_concurrent_requests: usize,
    /// Upper bound on any request (a smaller `grpc-timeout` from the client wins).
    pub request_timeout_ms: u64,
    /// HTTP/2 streams (concurrent requests) one connection may open.
    pub max_concurrent_streams: u32,
    /// Largest request header list (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`, metadata included);
    /// a larger one is refused before it reaches a handler.
    pub max_header_list_bytes: u32,
    /// PEM certificate chain; TLS is on when this and `tls_key_path` are set.
    pub tls_cert_path: Option<PathBuf>,
    /// PEM private key.
    pub tls_key_path: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate signed by it (mTLS).
    pub tls_client_ca_path: Option<PathBuf>,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_request_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 4096,
            request_timeout_ms: 10_000,
            max_concurrent_streams: 1024,
            max_header_list_bytes: 16 * 1024,
            tls_cert_path: None,
            tls_key_path: None,
            tls_client_ca_path: None,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// Upper bound on draining in-flight work after SIGTERM (keep below the pod's grace period).
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 20_000,
        }
    }
}

/// `[health]` of the gateway and the processor: the dependency probes behind gRPC health and
/// `/readyz`, which also turn run-time TLS failures into readiness
/// ([`crate::tls_failures`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// How often the probe runs (`SELECT 1`; the gateway's also Kafka metadata and Redis `PING`,
    /// the processor's a Kafka metadata request while a Kafka TLS failure waits to clear).
    pub probe_interval_ms: u64,
    /// Timeout of one probe.
    pub probe_timeout_ms: u64,
    /// How long a TLS failure of a dependency (a certificate that does not verify, a refused
    /// handshake, a wrong SASL password) keeps its readiness component `<dependency>_tls`
    /// failing at least, besides until the dependency has worked again.
    pub tls_hold_ms: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            probe_interval_ms: 1_000,
            probe_timeout_ms: 2_000,
            tls_hold_ms: crate::tls_failures::DEFAULT_HOLD_MS,
        }
    }
}
