//! Redis connection manager (reconnects by itself) with bounded timeouts; TLS with `rediss://`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::settings::RedisSettings;

/// The client for `s.url`: with `rediss://` the server's certificate must chain to
/// `s.tls_ca_file` (the system roots when unset) and name the URL's host.
///
/// # Errors
/// Malformed URL or an unreadable CA file.
pub fn client(s: &RedisSettings) -> redis::RedisResult<redis::Client> {
    match &s.tls_ca_file {
        Some(ca) if s.url.starts_with("rediss://") => {
            crate::tls::install_crypto_provider();
            let root = std::fs::read(ca).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "redis.tls_ca_file",
                    format!("{}: {e}", ca.display()),
                ))
            })?;
            redis::Client::build_with_tls(
                s.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            )
        }
        _ => {
            if s.url.starts_with("rediss://") {
                crate::tls::install_crypto_provider();
            }
            redis::Client::open(s.url.as_str())
        }
    }
}

/// Connects a [`ConnectionManager`]. Fails fast (connect timeout) so a missing Redis degrades a
/// service instead of blocking it.
///
/// # Errors
/// Malformed URL or Redis not reachable.
pub async fn connect(s: &RedisSettings) -> redis::RedisResult<ConnectionManager> {
    let client = client(s)?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(s.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(s.command_timeout_ms)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, cfg).await
}
