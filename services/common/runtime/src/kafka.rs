//! rdkafka configuration builders and topic bootstrap.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::settings::KafkaSettings;

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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{group}@{host}:{}", std::process::id());
    if n == 0 { id } else { format!("{id}#{n}") }
}

/// What every client (producer, consumer, admin) starts from: the brokers and the security
/// settings (`security_protocol`, `ssl_*`, `sasl_*`). Raw `librdkafka` overrides come last in
/// [`producer_config`] and [`consumer_config`].
pub fn client_config(s: &KafkaSettings) -> ClientConfig {
    use secrecy::ExposeSecret;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers);
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

/// How often librdkafka reports its statistics to a client that records them
/// ([`enable_statistics`]), unless the raw options set `statistics.interval.ms`.
pub const STATISTICS_INTERVAL_MS: u32 = 15_000;

/// Turns on librdkafka's statistics for a client whose context passes them to
/// [`record_statistics`] (a client without such a context must not: rdkafka's default context
/// logs every report).
pub fn enable_statistics(c: &mut ClientConfig, s: &KafkaSettings) {
    set_default(
        c,
        s,
        "statistics.interval.ms",
        STATISTICS_INTERVAL_MS.to_string(),
    );
}

fn stats_def<T>(r: Result<T, prometheus::Error>) -> T {
    r.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

fn stats_gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    crate::metrics::register(stats_def(prometheus::GaugeVec::new(
        prometheus::Opts::new(name, help),
        labels,
    )))
}

fn stats_counter(name: &str, help: &str) -> prometheus::IntCounterVec {
    crate::metrics::register(stats_def(prometheus::IntCounterVec::new(
        prometheus::Opts::new(name, help),
        &["service", "client", "broker"],
    )))
}

/// `dispatch_kafka_broker_rtt_seconds{service, client, broker, stat}` (`stat`, not `quantile`:
/// a gauge with a `quantile` label reads as a broken summary to Prometheus tooling).
static BROKER_RTT: std::sync::LazyLock<prometheus::GaugeVec> = std::sync::LazyLock::new(|| {
    stats_gauge(
        "dispatch_kafka_broker_rtt_seconds",
        "Broker round-trip time seen by a client over librdkafka's last statistics window (stat: p50, p99 or avg).",
        &["service", "client", "broker", "stat"],
    )
});
/// `dispatch_kafka_broker_requests{service, client, broker, queue}`.
static BROKER_REQUESTS: std::sync::LazyLock<prometheus::GaugeVec> = std::sync::LazyLock::new(
    || {
        stats_gauge(
            "dispatch_kafka_broker_requests",
            "Requests a client has queued for a broker (queue: outbuf, not yet sent) or sent and awaits (queue: waitresp).",
            &["service", "client", "broker", "queue"],
        )
    },
);
/// `dispatch_kafka_client_queue_messages{service, client}`.
static CLIENT_QUEUE: std::sync::LazyLock<prometheus::GaugeVec> = std::sync::LazyLock::new(|| {
    stats_gauge(
        "dispatch_kafka_client_queue_messages",
        "Messages in a client's queues: a producer's not yet delivered, a consumer's fetched and not yet polled.",
        &["service", "client"],
    )
});
/// `dispatch_kafka_broker_retries_total{service, client, broker}`.
static BROKER_RETRIES: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        stats_counter(
            "dispatch_kafka_broker_retries_total",
            "Requests a client re-sent to a broker (librdkafka txretries).",
        )
    });
/// `dispatch_kafka_broker_request_timeouts_total{service, client, broker}`.
static BROKER_TIMEOUTS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        stats_counter(
            "dispatch_kafka_broker_request_timeouts_total",
            "Requests to a broker that timed out (librdkafka req_timeouts).",
        )
    });
/// `dispatch_kafka_broker_errors_total{service, client, broker}`.
static BROKER_ERRORS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        stats_counter(
            "dispatch_kafka_broker_errors_total",
            "Transmission errors of a client towards a broker (librdkafka txerrs).",
        )
    });

/// Registers the librdkafka statistics metrics (empty until a client reports).
pub fn init_statistics_metrics() {
    use std::sync::LazyLock;
    LazyLock::force(&BROKER_RTT);
    LazyLock::force(&BROKER_REQUESTS);
    LazyLock::force(&CLIENT_QUEUE);
    LazyLock::force(&BROKER_RETRIES);
    LazyLock::force(&BROKER_TIMEOUTS);
    LazyLock::force(&BROKER_ERRORS);
}

/// Moves a counter that mirrors one of librdkafka's cumulative counts up to `now` (a count that
/// went down, a rebuilt client, adds nothing until it passes the mirrored value).
fn mirror(c: &prometheus::IntCounter, now: u64) {
    let seen = c.get();
    if now > seen {
        c.inc_by(now - seen);
    }
}

/// Records one librdkafka statistics report (the JSON a context's `stats_raw` gets) of a client
/// of `service` as the `dispatch_kafka_*` metrics: per broker RTT (p50, p99, average over the
/// window), requests queued and in flight, retries, timeouts and errors; the client's message
/// queue. Brokers that are only bootstrap entries (no node id) are skipped.
pub fn record_statistics(service: &str, json: &[u8]) {
    let s: rdkafka::Statistics = match serde_json::from_slice(json) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "unreadable librdkafka statistics");
            return;
        }
    };
    let client = s.name.as_str();
    CLIENT_QUEUE
        .with_label_values(&[service, client])
        .set(s.msg_cnt as f64);
    for b in s.brokers.values().filter(|b| b.nodeid >= 0) {
        let broker = b.nodename.as_str();
        if let Some(rtt) = &b.rtt {
            for (q, v) in [("p50", rtt.p50), ("p99", rtt.p99), ("avg", rtt.avg)] {
                BROKER_RTT
                    .with_label_values(&[service, client, broker, q])
                    .set(v as f64 / 1e6);
            }
        }
        BROKER_REQUESTS
            .with_label_values(&[service, client, broker, "outbuf"])
            .set(b.outbuf_cnt as f64);
        BROKER_REQUESTS
            .with_label_values(&[service, client, broker, "waitresp"])
            .set(b.waitresp_cnt as f64);
        mirror(
            &BROKER_RETRIES.with_label_values(&[service, client, broker]),
            b.txretries,
        );
        mirror(
            &BROKER_TIMEOUTS.with_label_values(&[service, client, broker]),
            b.req_timeouts,
        );
        mirror(
            &BROKER_ERRORS.with_label_values(&[service, client, broker]),
            b.txerrs,
        );
    }
}

/// A client context for clients without one of their own: it records librdkafka's statistics as
/// the `dispatch_kafka_*` metrics of `service` ([`record_statistics`]), counts TLS and SASL
/// failures in `dispatch_tls_errors_total` ([`crate::tls_failures::kafka_error`]) and otherwise
/// behaves as rdkafka's default context. Pair it with [`enable_statistics`].
#[derive(Debug, Clone, Copy)]
pub struct StatisticsContext {
    service: &'static str,
}

impl StatisticsContext {
    /// A context whose reports are labelled `service`.
    pub const fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl rdkafka::ClientContext for StatisticsContext {
    fn stats_raw(&self, statistics: &[u8]) {
        record_statistics(self.service, statistics);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let tls = crate::tls_failures::kafka_error(self.service, &error, reason);
        tracing::error!(error = %error, reason, tls, "librdkafka error");
    }
}

impl rdkafka::consumer::ConsumerContext for StatisticsContext {}

/// What [`ensure_topics`] creates for one topic.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Full name.
    pub name: String,
    /// Partitions.
    pub partitions: i32,
    /// Topic configs (retention, cleanup policy, ...).
    pub configs: Vec<(&'static str, String)>,
}

/// The topics dispatch needs under `s.topic_prefix`: task and retry topics with
/// `s.partitions`, the DLQ, and the events topic with compact+delete retention.
pub fn dispatch_topics(s: &KafkaSettings) -> Vec<TopicSpec> {
    let t = s.topics();
    let mut v: Vec<TopicSpec> = t
        .all_task_topics()
        .into_iter()
        .map(|name| TopicSpec {
            name,
            partitions: s.partitions,
            configs: vec![("retention.ms", "604800000".into())],
        })
        .collect();
    v.push(TopicSpec {
        name: t.dlq(),
        partitions: s.partitions,
        configs: vec![("retention.ms", "2592000000".into())],
    });
    v.push(TopicSpec {
        name: t.events(),
        partitions: s.partitions,
        configs: vec![
            ("cleanup.policy", "compact,delete".into()),
            ("retention.ms", "86400000".into()),
        ],
    });
    v
}

/// Creates every topic in `specs` that does not exist yet (idempotent: "already exists" is fine).
///
/// # Errors
/// The admin client cannot be created or the broker refuses for another reason.
pub async fn ensure_topics(s: &KafkaSettings, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(s)
        .create()
        .map_err(|e| anyhow::anyhow!("kafka admin client: {e}"))?;
    let news: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(s.replication_factor),
            );
            for (k, v) in &t.configs {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(news.iter(), &opts)
        .await
        .map_err(|e| anyhow::anyhow!("create topics: {e}"))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("create topic {name}: {code}"),
        }
    }
    Ok(())
}

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
fn security_problem(s: &KafkaSettings, line: &str) -> Option<String> {
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

#[cfg(test)]
mod security_tests {
    #[test]
    fn statistics_become_broker_and_queue_metrics() {
        let mut b = rdkafka::statistics::Broker {
            nodeid: 1,
            nodename: "kafka-1:9092".into(),
            outbuf_cnt: 3,
            waitresp_cnt: 2,
            txretries: 5,
            req_timeouts: 1,
            rtt: Some(rdkafka::statistics::Window {
                p50: 1_500,
                p99: 40_000,
                avg: 2_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let bootstrap = rdkafka::statistics::Broker {
            nodeid: -1,
            nodename: "bootstrap".into(),
            ..Default::default()
        };
        let mut s = rdkafka::Statistics {
            name: "stats-test#producer-1".into(),
            msg_cnt: 7,
            ..Default::default()
        };
        s.brokers.insert("kafka-1:9092/1".into(), b.clone());
        s.brokers.insert("bootstrap".into(), bootstrap);
        record_statistics("t", &serde_json::to_vec(&s).expect("json"));
        let labels = ["t", "stats-test#producer-1", "kafka-1:9092"];
        let q = |q: &str| {
            BROKER_RTT
                .with_label_values(&[labels[0], labels[1], labels[2], q])
                .get()
        };
        assert!((q("p99") - 0.04).abs() < 1e-9);
        assert!((q("p50") - 0.0015).abs() < 1e-9);
        assert_eq!(
            BROKER_REQUESTS
                .with_label_values(&[labels[0], labels[1], labels[2], "outbuf"])
                .get(),
            3.0
        );
        assert_eq!(
            CLIENT_QUEUE
                .with_label_values(&[labels[0], labels[1]])
                .get(),
            7.0
        );
        assert_eq!(BROKER_RETRIES.with_label_values(&labels).get(), 5);
        // Cumulative counts are mirrored: the next report adds the difference only.
        b.txretries = 8;
        s.brokers.insert("kafka-1:9092/1".into(), b);
        record_statistics("t", &serde_json::to_vec(&s).expect("json"));
        assert_eq!(BROKER_RETRIES.with_label_values(&labels).get(), 8);
        assert_eq!(BROKER_TIMEOUTS.with_label_values(&labels).get(), 1);
        // No series for the bootstrap entry; garbage is ignored.
        let bootstrap = prometheus::core::Collector::collect(&*BROKER_RETRIES)
            .iter()
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| m.get_label().iter().any(|l| l.value() == "bootstrap"))
            .count();
        assert_eq!(bootstrap, 0);
        record_statistics("t", b"not json");
    }

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
