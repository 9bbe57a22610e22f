//! Redis connection manager (reconnects by itself) with bounded timeouts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::settings::RedisSettings;

/// Connects a [`ConnectionManager`]. Fails fast (connect timeout) so a missing Redis degrades a
/// service instead of blocking it.
///
/// # Errors
/// Malformed URL or Redis not reachable.
pub async fn connect(s: &RedisSettings) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(s.url.as_str())?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(s.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(s.command_timeout_ms)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, cfg).await
}
