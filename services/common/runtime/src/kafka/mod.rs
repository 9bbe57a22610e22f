//! Kafka clients: the rdkafka configuration builders (here), librdkafka's statistics as metrics
//! ([`statistics`]), the topics dispatch needs ([`topics`]) and the start-up check of the
//! security settings ([`check`]). Every item is re-exported here.

use rdkafka::config::ClientConfig;

use crate::settings::KafkaSettings;

pub mod check;
pub mod statistics;
pub mod topics;

pub use check::check_connection;
pub use statistics::{
    STATISTICS_INTERVAL_MS, StatisticsContext, enable_statistics, init_statistics_metrics,
    record_statistics,
};
pub use topics::{TopicSpec, dispatch_topics, ensure_topics};

/// Producer config: idempotent, `acks=all`, compressed, small linger, and the Java-compatible
/// `murmur2_random` partitioner so every client agrees which partition a business key lives on.
pub fn producer_config(s: &KafkaSettings) -> ClientConfig {
    let mut c = client_config(s);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &s.compression)
        .set("linger.ms", s.linger_ms.to_string())
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", s.message_timeout_ms.to_string())
        .set("socket.keepalive.enable", "true");
    apply_overrides(&mut c, s);
    c
}

/// Consumer config for `group`: offsets are *stored* by the application only when the work below
/// them is persisted (`enable.auto.offset.store=false`) and librdkafka commits stored offsets on a
/// timer; the application also commits on revoke and shutdown.
pub fn consumer_config(s: &KafkaSettings, group: &str) -> ClientConfig {
    let mut c = client_config(s);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", s.session_timeout_ms.to_string())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false")
        .set("socket.keepalive.enable", "true")
        .set("client.id", default_client_id(group));
    apply_overrides(&mut c, s);
    c
}

/// The `client.id` of a consumer of `group` unless the raw options set one (Kubernetes sets the
/// pod name): `<group>@<host>:<pid>`, and `#<n>` from the second consumer of a process on, so
/// group listings (`dispatchctl stats`) tell every instance apart, tests with several instances
/// in one process included.
pub fn default_client_id(group: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{group}@{}", dispatch_core::instance::name());
    if n == 0 { id } else { format!("{id}#{n}") }
}

/// What every client (producer, consumer, admin) starts from: the brokers and the security
/// settings (`security_protocol`, `ssl_*`, `sasl_*`). Raw `librdkafka` overrides come last in
/// [`producer_config`] and [`consumer_config`].
///
/// Reconnects back off to at most 1 s (librdkafka's default is 10 s): after a broker restart a
/// client whose backoff had grown to 10 s stayed away that long from a broker already serving
/// (the fault runs' `kafka-restart-x5`), and every processor's events and retries waited with it.
pub fn client_config(s: &KafkaSettings) -> ClientConfig {
    use secrecy::ExposeSecret;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("reconnect.backoff.max.ms", "1000");
    let protocol = s.security_protocol.to_ascii_lowercase();
    if protocol.is_empty() || protocol == "plaintext" {
        return c;
    }
    c.set("security.protocol", &protocol);
    let path = |p: &std::path::PathBuf| p.to_string_lossy().into_owned();
    if let Some(ca) = &s.ssl_ca_file {
        c.set("ssl.ca.location", path(ca));
    }
    if let Some(cert) = &s.ssl_cert_file {
        c.set("ssl.certificate.location", path(cert));
    }
    if let Some(key) = &s.ssl_key_file {
        c.set("ssl.key.location", path(key));
    }
    if protocol.starts_with("sasl") {
        c.set("sasl.mechanism", s.sasl_mechanism.to_ascii_uppercase());
        if let Some(user) = &s.sasl_username {
            c.set("sasl.username", user);
        }
        if let Some(password) = &s.sasl_password {
            c.set("sasl.password", password.expose_secret());
        }
    }
    c
}

/// Checks the security settings alone (no connection): a known protocol and mechanism, cert and
/// key together, credentials with SASL. The message names the setting.
///
/// # Errors
/// The first inconsistency found.
pub fn validate_security(s: &KafkaSettings) -> Result<(), crate::SettingsError> {
    let err = |m: String| Err(crate::SettingsError(m));
    let protocol = s.security_protocol.to_ascii_lowercase();
    if !["", "plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
        return err(format!(
            "kafka.security_protocol: {:?} is not one of plaintext, ssl, sasl_plaintext, sasl_ssl",
            s.security_protocol
        ));
    }
    if s.ssl_cert_file.is_some() != s.ssl_key_file.is_some() {
        return err("kafka.ssl_cert_file and kafka.ssl_key_file must be set together".into());
    }
    if protocol.starts_with("sasl") {
        let mechanism = s.sasl_mechanism.to_ascii_uppercase();
        if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
            return err(format!(
                "kafka.sasl_mechanism: {:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (required with security_protocol {protocol})",
                s.sasl_mechanism
            ));
        }
        if s.sasl_username.as_deref().unwrap_or_default().is_empty() || s.sasl_password.is_none() {
            return err(format!(
                "kafka.sasl_username and kafka.sasl_password are required with security_protocol {protocol}"
            ));
        }
    }
    Ok(())
}

/// Sets a service's own default for `key`, unless the raw `kafka.librdkafka` options set it: those
/// are applied when the config is built and always win.
pub fn set_default(c: &mut ClientConfig, s: &KafkaSettings, key: &str, value: impl Into<String>) {
    if !s.librdkafka.contains_key(key) {
        c.set(key, value);
    }
}

fn apply_overrides(c: &mut ClientConfig, s: &KafkaSettings) {
    for (k, v) in &s.librdkafka {
        c.set(k, v);
    }
}

#[cfg(test)]
mod tests {

    use super::check::security_problem;
    use super::*;

    fn sasl() -> KafkaSettings {
        KafkaSettings {
            security_protocol: "sasl_ssl".into(),
            ssl_ca_file: Some("/etc/dispatch/ca.pem".into()),
            sasl_mechanism: "scram-sha-512".into(),
            sasl_username: Some("dispatch".into()),
            sasl_password: Some(secrecy::SecretString::from("s3cret-pw".to_owned())),
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn security_settings_reach_every_client_config() {
        let s = sasl();
        for c in [
            client_config(&s),
            producer_config(&s),
            consumer_config(&s, "g"),
        ] {
            assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(c.get("sasl.username"), Some("dispatch"));
            assert_eq!(c.get("sasl.password"), Some("s3cret-pw"));
            assert_eq!(c.get("ssl.ca.location"), Some("/etc/dispatch/ca.pem"));
            assert_eq!(c.get("reconnect.backoff.max.ms"), Some("1000"));
        }
        // Plaintext sets nothing.
        let plain = client_config(&KafkaSettings::default());
        assert_eq!(plain.get("security.protocol"), None);
    }

    #[test]
    fn librdkafka_has_zstd_tls_and_scram() {
        use rdkafka::producer::BaseProducer;
        let zstd = KafkaSettings {
            compression: "zstd".into(),
            ..KafkaSettings::default()
        };
        let made: Result<BaseProducer, _> = producer_config(&zstd).create();
        assert!(made.is_ok(), "zstd: {:?}", made.err());
        let mut s = sasl();
        s.ssl_ca_file = None;
        let made: Result<BaseProducer, _> = producer_config(&s).create();
        assert!(made.is_ok(), "sasl_ssl with SCRAM: {:?}", made.err());
    }

    #[test]
    fn the_password_never_prints() {
        let s = sasl();
        assert!(!format!("{s:?}").contains("s3cret-pw"));
        let out = crate::settings::render_redacted(&s).expect("render");
        assert!(!out.contains("s3cret-pw"), "{out}");
        assert!(out.contains("sasl_password = \"<redacted>\""), "{out}");
    }

    #[test]
    fn inconsistent_security_settings_are_named() {
        type Break = fn(&mut KafkaSettings);
        let cases: [(&str, Break); 4] = [
            ("kafka.security_protocol", |s| {
                s.security_protocol = "tls".into()
            }),
            ("kafka.sasl_mechanism", |s| {
                s.sasl_mechanism = "GSSAPI".into()
            }),
            ("kafka.sasl_password", |s| s.sasl_password = None),
            ("kafka.ssl_key_file", |s| {
                s.ssl_cert_file = Some("c.pem".into())
            }),
        ];
        for (setting, break_it) in cases {
            let mut s = sasl();
            break_it(&mut s);
            let err = validate_security(&s).expect_err(setting).to_string();
            assert!(err.contains(setting), "{setting}: {err}");
        }
        assert!(validate_security(&sasl()).is_ok());
    }

    #[test]
    fn librdkafka_failures_name_the_setting() {
        let s = sasl();
        for (line, setting) in [
            (
                "sasl_ssl://b:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
                "kafka.ssl_ca_file",
            ),
            (
                "sasl_ssl://b:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
                "kafka.sasl_password",
            ),
        ] {
            let p = security_problem(&s, line).expect(setting);
            assert!(p.starts_with(setting), "{p}");
        }
        assert!(security_problem(&s, "Connection refused").is_none());
    }
}
