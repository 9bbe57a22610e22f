//! librdkafka's statistics reports as the `dispatch_kafka_*` metrics.

use rdkafka::config::ClientConfig;

use super::set_default;
use crate::settings::KafkaSettings;

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

fn stats_gauge(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    crate::metrics::new::float_gauge_vec(name, help, labels)
}

fn stats_counter(name: &str, help: &str) -> prometheus::IntCounterVec {
    crate::metrics::new::counter_vec(name, help, &["service", "client", "broker"])
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
