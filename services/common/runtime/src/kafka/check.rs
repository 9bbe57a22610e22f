//! The start-up check of the Kafka security settings: one connection, and a message naming the
//! setting when the brokers refuse it.

use std::time::Duration;

use super::client_config;
use crate::settings::KafkaSettings;

/// Records what librdkafka reports while [`check_connection`] waits for metadata.
#[derive(Default)]
struct Recorder {
    errors: parking_lot::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for Recorder {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        ) {
            self.errors.lock().push(format!("{fac}: {log_message}"));
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.errors.lock().push(format!("{error}: {reason}"));
    }
}

impl rdkafka::consumer::ConsumerContext for Recorder {}

fn security_problem_kind(line: &str) -> bool {
    security_problem(&KafkaSettings::default(), line).is_some()
}

/// What a librdkafka error line says about the security settings, if anything.
pub(super) fn security_problem(s: &KafkaSettings, line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();
    let ca = s.ssl_ca_file.as_ref().map_or_else(
        || " (system roots)".to_owned(),
        |p| format!(" ({})", p.display()),
    );
    if lower.contains("sasl authentication error") || lower.contains("authentication failed") {
        Some(format!(
            "kafka.sasl_password: the brokers refused the {} login of kafka.sasl_username {:?}: {line}",
            s.sasl_mechanism.to_ascii_uppercase(),
            s.sasl_username.as_deref().unwrap_or_default()
        ))
    } else if lower.contains("certificate has expired") || lower.contains("certificate expired") {
        Some(format!(
            "kafka.ssl_ca_file{ca}: the broker's certificate has expired: {line}"
        ))
    } else if lower.contains("certificate verify failed") || lower.contains("could not be verified")
    {
        Some(format!(
            "kafka.ssl_ca_file{ca}: the broker's certificate does not verify: {line}"
        ))
    } else if lower.contains("ssl handshake failed") {
        Some(format!(
            "kafka.security_protocol {}: the TLS handshake with the broker failed: {line}",
            s.security_protocol
        ))
    } else if lower.contains("unsupported sasl mechanism") {
        Some(format!(
            "kafka.sasl_mechanism: the broker does not accept {}: {line}",
            s.sasl_mechanism
        ))
    } else {
        None
    }
}

/// Connects once with `s`'s security settings and waits (up to 10 s) for the cluster's metadata:
/// a certificate that does not verify, an expired one, a failed handshake or a refused SASL login
/// fails with one line naming the setting. Brokers that are merely unreachable pass (the services
/// degrade and report it).
///
/// # Errors
/// A security problem, or a client that cannot be created with these settings.
pub async fn check_connection(s: &KafkaSettings) -> Result<(), crate::SettingsError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let mut config = client_config(s);
    // librdkafka logs only as much as the `log` crate's level allows, which is off without a
    // `log` logger: the handshake and SASL failures are logged at error level.
    config.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    let consumer: BaseConsumer<Recorder> = config
        .create_with_context(Recorder::default())
        .map_err(|e| crate::SettingsError(format!("kafka: {e}")))?;
    let consumer = std::sync::Arc::new(consumer);
    let held = std::sync::Arc::clone(&consumer);
    let recorder = held.context();
    let fetch = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match consumer.fetch_metadata(None, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    // Serves the error callbacks (they reach the context through the queue).
                    let _ = consumer.poll(Duration::ZERO);
                    let found = {
                        let errors = consumer.context().errors.lock();
                        errors.iter().any(|l| security_problem_kind(l))
                    };
                    if found || std::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                }
            }
        }
    });
    tokio::pin!(fetch);
    loop {
        tokio::select! {
            done = &mut fetch => {
                let recorded = recorder.errors.lock().clone();
                if let Some(p) = recorded.iter().find_map(|l| security_problem(s, l)) {
                    return Err(crate::SettingsError(p));
                }
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "kafka not reachable at start-up");
                }
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                let recorded = recorder.errors.lock().clone();
                if let Some(p) = recorded.iter().find_map(|l| security_problem(s, l)) {
                    return Err(crate::SettingsError(p));
                }
            }
        }
    }
}
