//! The MySQL pool.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool};

/// Database settings (`[database]` section).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbSettings {
    /// `mysql://user:password@host:port/database`. A secret: never logged (`--print-config`
    /// redacts it).
    #[serde(serialize_with = "expose")]
    pub url: SecretString,
    /// Optional read replica for lookups (reader); falls back to `url`.
    #[serde(serialize_with = "expose_opt")]
    pub replica_url: Option<SecretString>,
    /// Upper bound of open connections.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long `acquire` waits for a free connection.
    pub acquire_timeout_ms: u64,
    /// Close connections idle longer than this.
    pub idle_timeout_ms: u64,
    /// Recycle connections older than this.
    pub max_lifetime_ms: u64,
    /// Give up connecting at start-up after this long (retrying with backoff until then).
    pub connect_timeout_ms: u64,
    /// TLS: `disabled`, `preferred`, `required`, `verify_ca` or `verify_identity` (the CA and
    /// the host name both checked). Unset: the URL's `ssl-mode`, else `preferred`.
    pub ssl_mode: Option<String>,
    /// PEM CA bundle the server's certificate must chain to (`verify_ca`, `verify_identity`).
    pub ssl_ca: Option<std::path::PathBuf>,
}

// Settings are layered by serializing the defaults, so the secret must serialize; printing
// settings goes through a redacting step instead.
fn expose<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}

fn expose_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.expose_secret()),
        None => s.serialize_none(),
    }
}

impl PartialEq for DbSettings {
    fn eq(&self, o: &Self) -> bool {
        self.url.expose_secret() == o.url.expose_secret()
            && self
                .replica_url
                .as_ref()
                .map(|u| u.expose_secret().to_owned())
                == o.replica_url.as_ref().map(|u| u.expose_secret().to_owned())
            && self.max_connections == o.max_connections
            && self.min_connections == o.min_connections
            && self.acquire_timeout_ms == o.acquire_timeout_ms
            && self.idle_timeout_ms == o.idle_timeout_ms
            && self.max_lifetime_ms == o.max_lifetime_ms
            && self.connect_timeout_ms == o.connect_timeout_ms
            && self.ssl_mode == o.ssl_mode
            && self.ssl_ca == o.ssl_ca
    }
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("mysql://dispatch:dispatch@127.0.0.1:3306/dispatch"),
            replica_url: None,
            max_connections: 16,
            min_connections: 1,
            acquire_timeout_ms: 2_000,
            idle_timeout_ms: 300_000,
            max_lifetime_ms: 1_800_000,
            connect_timeout_ms: 30_000,
            ssl_mode: None,
            ssl_ca: None,
        }
    }
}

impl DbSettings {
    /// Pool options from these settings.
    pub fn pool_options(&self) -> MySqlPoolOptions {
        MySqlPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(Duration::from_millis(self.acquire_timeout_ms))
            .idle_timeout(Duration::from_millis(self.idle_timeout_ms))
            .max_lifetime(Duration::from_millis(self.max_lifetime_ms))
    }

    /// Connect options of the primary (`url`) with the TLS settings applied.
    ///
    /// # Errors
    /// A malformed URL or an unknown `ssl_mode` ([`sqlx::Error::Configuration`]).
    pub fn connect_options(&self) -> Result<MySqlConnectOptions, sqlx::Error> {
        self.options(&self.url)
    }

    fn options(&self, url: &SecretString) -> Result<MySqlConnectOptions, sqlx::Error> {
        let mut opts: MySqlConnectOptions = url.expose_secret().parse()?;
        if let Some(mode) = &self.ssl_mode {
            opts = opts.ssl_mode(ssl_mode(mode)?);
        }
        if let Some(ca) = &self.ssl_ca {
            opts = opts.ssl_ca(ca);
        }
        // Statements are logged by our own spans; sqlx's per-statement INFO lines are noise.
        Ok(opts
            .log_statements(tracing::log::LevelFilter::Debug)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
    }

    /// Whether connections use TLS whatever the server offers (`required` or stricter).
    pub fn tls_required(&self) -> bool {
        use sqlx::mysql::MySqlSslMode as M;
        self.connect_options()
            .map(|o| !matches!(o.get_ssl_mode(), M::Disabled | M::Preferred))
            .unwrap_or(false)
    }
}

fn ssl_mode(v: &str) -> Result<sqlx::mysql::MySqlSslMode, sqlx::Error> {
    use sqlx::mysql::MySqlSslMode as M;
    Ok(match v.to_ascii_lowercase().replace('-', "_").as_str() {
        "disabled" => M::Disabled,
        "preferred" => M::Preferred,
        "required" => M::Required,
        "verify_ca" => M::VerifyCa,
        "verify_identity" => M::VerifyIdentity,
        _ => {
            return Err(sqlx::Error::Configuration(
                format!(
                    "database.ssl_mode: {v:?} is not one of disabled, preferred, required, verify_ca, verify_identity"
                )
                .into(),
            ));
        }
    })
}

/// One connection attempt, to tell a TLS or credentials problem (which retrying cannot fix) from
/// an unreachable server: `Err` with one line naming the setting for the former, `Ok` otherwise
/// (also when the server is down: the pool's own retries and the readiness handle that).
///
/// # Errors
/// The certificate does not verify, TLS is refused or required, or the login fails.
pub async fn check_tls(settings: &DbSettings) -> Result<(), String> {
    use sqlx::Connection as _;
    let opts = settings.connect_options().map_err(|e| e.to_string())?;
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::MySqlConnection::connect_with(&opts),
    )
    .await;
    let e = match attempt {
        Ok(Ok(c)) => {
            let _ = c.close().await;
            return Ok(());
        }
        Ok(Err(e)) => e,
        Err(_) => return Ok(()),
    };
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    let ca = settings
        .ssl_ca
        .as_ref()
        .map(|p| format!(" ({})", p.display()))
        .unwrap_or_default();
    let unreachable = match &e {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable
        ),
        sqlx::Error::PoolTimedOut => true,
        _ => false,
    };
    if unreachable {
        return Ok(());
    }
    Err(if lower.contains("expired") {
        format!("database.ssl_ca{ca}: the server's certificate has expired: {msg}")
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        format!(
            "database.ssl_mode verify_identity: the server's certificate is not valid for the host in database.url: {msg}"
        )
    } else if matches!(e, sqlx::Error::Tls(_))
        || lower.contains("certificate")
        || lower.contains("unknownissuer")
    {
        format!("database.ssl_ca{ca}: the server's certificate does not verify: {msg}")
    } else if lower.contains("secure transport") || lower.contains("insecure transport") {
        format!("database.ssl_mode: the server requires TLS: {msg}")
    } else if lower.contains("does not support tls") || lower.contains("not support ssl") {
        format!("database.ssl_mode: the server does not offer TLS: {msg}")
    } else if matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("28000")) {
        format!("database.url: login refused: {msg}")
    } else {
        format!("database: connecting with TLS failed: {msg}")
    })
}

/// Opens the primary pool, retrying with exponential backoff (100 ms doubling, capped at 5 s)
/// until `connect_timeout_ms` has passed.
///
/// # Errors
/// The last connection error once the time is up, or a malformed URL (not retried).
pub async fn connect(settings: &DbSettings) -> Result<MySqlPool, sqlx::Error> {
    connect_url(settings, &settings.url).await
}

/// Opens the replica pool if one is configured, else the primary.
///
/// # Errors
/// As [`connect`].
pub async fn connect_replica(settings: &DbSettings) -> Result<MySqlPool, sqlx::Error> {
    connect_url(
        settings,
        settings.replica_url.as_ref().unwrap_or(&settings.url),
    )
    .await
}

async fn connect_url(settings: &DbSettings, url: &SecretString) -> Result<MySqlPool, sqlx::Error> {
    let opts = settings.options(url)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(settings.connect_timeout_ms);
    let attempt = || async { settings.pool_options().connect_with(opts.clone()).await };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times(),
        )
        .when(|e| !matches!(e, sqlx::Error::Configuration(_) | sqlx::Error::Tls(_)) && tokio::time::Instant::now() < deadline)
        .notify(|e, after| tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "database not reachable yet"))
        .await
}
