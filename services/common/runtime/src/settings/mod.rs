//! Layered, typed settings.
//!
//! Order (later wins): `T::default()` < the TOML file named by `DISPATCH_CONFIG` (or passed in) <
//! environment variables `DISPATCH_<SECTION>__<KEY>` (e.g. `DISPATCH_KAFKA__BROKERS`,
//! `DISPATCH_DATABASE__MAX_CONNECTIONS`). Every settings struct uses `deny_unknown_fields`, so a
//! typo in a file or an env var fails start-up with a message naming the key.
//!
//! Over 400 lines because it holds the loader and every section the services share, with the
//! redacted rendering `--print-config` prints and their tests; the shared section structs would
//! move to a `sections` module first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use dispatch_store::DbSettings;

/// A settings problem, with the offending key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(pub String);

/// Loads `T` from its defaults, the optional file and the environment.
///
/// # Errors
/// Unknown keys, wrong types, an unreadable file; the message names the key and its source.
pub fn load<T>(file: Option<&Path>) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default,
{
    load_from(file, std::env::vars())
}

/// [`load`] with an explicit environment (for tests).
///
/// # Errors
/// As [`load`].
pub fn load_from<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let env: Vec<(String, String)> = env.into_iter().collect();
    let file: Option<PathBuf> = file.map(Path::to_path_buf).or_else(|| {
        env.iter()
            .find(|(k, _)| k == "DISPATCH_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
    });
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = &file {
        if !path.exists() {
            return Err(SettingsError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    // Only DISPATCH_<SECTION>__<KEY> variables are settings; other DISPATCH_* variables (such as
    // DISPATCH_CONFIG or test harness variables) are not keys and are ignored.
    let vars: Vec<(String, String)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("DISPATCH_")?;
            rest.contains("__").then(|| (rest.to_owned(), v))
        })
        .collect();
    // Figment's own Env provider reads the process environment; building the dict ourselves lets
    // tests pass an explicit environment.
    let env_dict = toml_table_from_env(&vars)?;
    if !env_dict.is_empty() {
        fig = fig.merge(Serialized::defaults(env_dict));
    }
    fig.extract::<T>().map_err(|e| SettingsError(describe(e)))
}

/// Turns `KAFKA__BROKERS=a` into `{ kafka: { brokers: "a" } }`, parsing each value as a TOML
/// scalar/array when possible (so `8`, `true`, `[1, 2]` get their types) and as a string otherwise.
fn toml_table_from_env(vars: &[(String, String)]) -> Result<figment::value::Dict, SettingsError> {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    for (key, raw) in vars {
        let path: Vec<String> = key.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(SettingsError(format!(
                "environment variable DISPATCH_{key} has an empty key segment"
            )));
        }
        let value: Value = raw
            .parse::<Value>()
            .ok()
            .filter(|v| !matches!(v, Value::String(..)))
            .unwrap_or_else(|| Value::from(raw.clone()));
        let mut dict = &mut root;
        for seg in &path[..path.len() - 1] {
            let entry = dict
                .entry(seg.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            match entry {
                Value::Dict(_, d) => dict = d,
                _ => {
                    return Err(SettingsError(format!(
                        "DISPATCH_{key}: {seg} is not a section"
                    )));
                }
            }
        }
        dict.insert(path[path.len() - 1].clone(), value);
    }
    Ok(root)
}

fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let kind = e.kind.to_string();
            if path.is_empty() {
                kind
            } else {
                format!("{kind} (at `{path}`)")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct S {
        kafka: KafkaSettings,
        admin: AdminSettings,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[kafka]\nbrokers = \"file:9092\"\npartitions = 3\n").expect("write");
        let s: S =
            load_from(Some(&path), env(&[("DISPATCH_KAFKA__PARTITIONS", "12")])).expect("load");
        assert_eq!(s.kafka.brokers, "file:9092");
        assert_eq!(s.kafka.partitions, 12);
        assert_eq!(s.kafka.linger_ms, KafkaSettings::default().linger_ms);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_from::<S>(None, env(&[("DISPATCH_KAFKA__BROKRES", "x")])).expect_err("typo");
        assert!(err.to_string().contains("brokres"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[nope]\nx = 1\n").expect("write");
        let err = load_from::<S>(Some(&path), env(&[])).expect_err("unknown section");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn wrong_types_and_missing_files_are_reported() {
        let err =
            load_from::<S>(None, env(&[("DISPATCH_KAFKA__PARTITIONS", "many")])).expect_err("type");
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = load_from::<S>(Some(Path::new("/nonexistent.toml")), env(&[])).expect_err("file");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn non_setting_dispatch_vars_are_ignored() {
        let s: S = load_from(
            None,
            env(&[
                ("DISPATCH_TEST_KAFKA", "x"),
                ("DISPATCH_CONFIG_UNUSED", "y"),
            ]),
        )
        .expect("load");
        assert_eq!(s, S::default());
    }
}

/// Renders settings as TOML with secrets redacted (`--print-config`): URL passwords and any key
/// whose name contains `secret`, `password`, `token`, `key_hash`, `api_key` or `key_sha256`
/// (API key digests: `auth.api_keys[].key_sha256`, `auth.admin_key_sha256`,
/// `auth.admin_keys[].key_sha256`; a digest of a short key can be brute-forced).
///
/// # Errors
/// The settings do not serialize to TOML.
pub fn render_redacted<T: Serialize>(settings: &T) -> Result<String, SettingsError> {
    let mut value = toml::Value::try_from(settings).map_err(|e| SettingsError(e.to_string()))?;
    redact(&mut value, "");
    toml::to_string_pretty(&value).map_err(|e| SettingsError(e.to_string()))
}

fn redact(v: &mut toml::Value, key: &str) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t.iter_mut() {
                redact(child, k);
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(|c| redact(c, key)),
        toml::Value::String(s) => {
            let k = key.to_ascii_lowercase();
            if [
                "secret",
                "password",
                "token",
                "key_hash",
                "api_key",
                "key_sha256",
            ]
            .iter()
            .any(|w| k.contains(w))
            {
                *s = "<redacted>".into();
            } else if let Some((scheme, rest)) = s.split_once("://")
                && let Some((creds, host)) = rest.rsplit_once('@')
            {
                let user = creds.split(':').next().unwrap_or_default();
                *s = format!("{scheme}://{user}:<redacted>@{host}");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        use crate::server::auth::{AdminKeyEntry, ApiKeyEntry, AuthSettings, hash_key};
        #[derive(Serialize)]
        struct S {
            database: DbSettings,
            auth: AuthSettings,
        }
        // The real `[auth]` section, with every field that holds a key digest.
        let (tenant, legacy, named) = (hash_key("t"), hash_key("l"), hash_key("n"));
        let out = render_redacted(&S {
            database: DbSettings::default(),
            auth: AuthSettings {
                api_keys: vec![ApiKeyEntry {
                    tenant: "acme".into(),
                    key_sha256: tenant.clone(),
                }],
                admin_key_sha256: Some(legacy.clone()),
                admin_keys: vec![AdminKeyEntry {
                    id: "ops-2026".into(),
                    key_sha256: named.clone(),
                }],
                ..AuthSettings::default()
            },
        })
        .expect("render");
        assert!(!out.contains("dispatch:dispatch@"), "{out}");
        assert!(
            out.contains("mysql://dispatch:<redacted>@127.0.0.1:3306/dispatch"),
            "{out}"
        );
        for (field, digest) in [
            ("auth.api_keys[0].key_sha256", &tenant),
            ("auth.admin_key_sha256", &legacy),
            ("auth.admin_keys[0].key_sha256", &named),
        ] {
            assert!(!out.contains(digest.as_str()), "{field} printed:\n{out}");
        }
        assert!(out.contains("admin_key_sha256 = \"<redacted>\""), "{out}");
        // What is not secret stays readable.
        assert!(out.contains("acme") && out.contains("ops-2026"), "{out}");
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
