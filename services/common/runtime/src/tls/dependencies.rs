//! Start-up checks of the TLS and SASL settings of a service's dependencies (Kafka, MySQL,
//! Redis), with its own server certificate files first.

use std::time::Duration;

use super::{ServerTls, install_crypto_provider, read_certs, read_key};
use crate::SettingsError;
use crate::settings::{DbSettings, GrpcSettings, KafkaSettings, RedisSettings};

/// The TLS checks every service makes before it binds: its own gRPC certificate files (read now,
/// so a bad path fails start-up rather than the first handshake), then [`check_dependencies`]
/// (`redis` is `None` for a service without Redis). Returns the gRPC server's TLS, if any.
///
/// # Errors
/// The first problem found.
pub async fn check_at_start(
    grpc: &GrpcSettings,
    kafka: &KafkaSettings,
    db: &DbSettings,
    redis: Option<&RedisSettings>,
) -> Result<Option<ServerTls>, SettingsError> {
    let tls = ServerTls::from_settings(grpc)?;
    check_dependencies(kafka, db, redis).await?;
    Ok(tls)
}

/// Checks every TLS file the dependency settings name, then, where TLS or SASL is configured,
/// connects once to each dependency: a certificate that does not verify, an expired one, TLS
/// refused, or a wrong SASL password fails with one line naming the setting and the cause.
/// Unreachable dependencies pass (the services start degraded and report it on `/readyz`).
/// `redis` is `None` for a service without Redis (the processor).
///
/// # Errors
/// The first problem found.
pub async fn check_dependencies(
    kafka: &KafkaSettings,
    db: &DbSettings,
    redis: Option<&RedisSettings>,
) -> Result<(), SettingsError> {
    install_crypto_provider();
    crate::kafka::validate_security(kafka)?;
    for (setting, path) in [
        ("kafka.ssl_ca_file", kafka.ssl_ca_file.as_ref()),
        ("kafka.ssl_cert_file", kafka.ssl_cert_file.as_ref()),
        ("database.ssl_ca", db.ssl_ca.as_ref()),
        (
            "redis.tls_ca_file",
            redis.and_then(|r| r.tls_ca_file.as_ref()),
        ),
    ] {
        if let Some(p) = path {
            read_certs(setting, p)?;
        }
    }
    if let Some(key) = &kafka.ssl_key_file {
        read_key("kafka.ssl_key_file", key)?;
    }
    let protocol = kafka.security_protocol.to_ascii_lowercase();
    if !(protocol.is_empty() || protocol == "plaintext") {
        crate::kafka::check_connection(kafka).await?;
    }
    if db.tls_required() || db.ssl_ca.is_some() {
        dispatch_store::pool::check_tls(db)
            .await
            .map_err(SettingsError)?;
    }
    if let Some(redis) = redis.filter(|r| r.url.starts_with("rediss://")) {
        check_redis(redis).await?;
    }
    Ok(())
}

async fn check_redis(s: &RedisSettings) -> Result<(), SettingsError> {
    let client =
        crate::redis_client::client(s).map_err(|e| SettingsError(format!("redis: {e}")))?;
    let wait = Duration::from_millis(s.connect_timeout_ms.max(2_000));
    let e = match tokio::time::timeout(wait, client.get_multiplexed_async_connection()).await {
        Ok(Ok(_)) | Err(_) => return Ok(()),
        Ok(Err(e)) => e,
    };
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    let ca = s.tls_ca_file.as_ref().map_or_else(
        || " (system roots)".to_owned(),
        |p| format!(" ({})", p.display()),
    );
    let problem = if lower.contains("expired") {
        format!("redis.tls_ca_file{ca}: the server's certificate has expired: {msg}")
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        format!("redis.url: the server's certificate is not valid for the URL's host: {msg}")
    } else if lower.contains("certificate") || lower.contains("unknownissuer") {
        format!("redis.tls_ca_file{ca}: the server's certificate does not verify: {msg}")
    } else if lower.contains("tls") || lower.contains("handshake") || lower.contains("corrupt") {
        format!("redis.url: TLS with the server failed (is it a TLS port?): {msg}")
    } else if lower.contains("auth") || lower.contains("wrongpass") {
        format!("redis.url: login refused: {msg}")
    } else {
        return Ok(());
    };
    Err(SettingsError(problem))
}
