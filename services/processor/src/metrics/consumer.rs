//! Consumption: records read, the in-flight window, lag, rebalances and operator pauses.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::Utc;
use dispatch_store::pauses::{Pause, PauseTarget};
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{counter_vec, float_gauge, float_gauge_vec, gauge, gauge_vec};
use crate::consumer::Source;
use crate::consumer::offsets::Window;
use crate::lag::PartitionStats;

/// `dispatch_consumer_lag_records{topic, partition}`.
static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dispatch_consumer_lag_records",
        "High watermark minus committed offset.",
        &["topic", "partition"],
    )
});
/// `dispatch_consumer_committed_offset{topic, partition}`: progress, for the stall alert.
static COMMITTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dispatch_consumer_committed_offset",
        "The group's committed offset of each partition this instance owns.",
        &["topic", "partition"],
    )
});
/// `dispatch_consumption_pause_started_timestamp_seconds{kind, target}`.
static PAUSE_STARTED: LazyLock<GaugeVec> = LazyLock::new(|| {
    float_gauge_vec(
        "dispatch_consumption_pause_started_timestamp_seconds",
        "When each operator pause in force began (kind: priority or task_type); no series when nothing is paused.",
        &["kind", "target"],
    )
});
/// `dispatch_consumption_pauses`: operator pauses in force (always exported; 0 when none).
static PAUSES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumption_pauses",
        "Operator pauses in force (priorities and task types), as this instance last read them.",
    )
});
/// `dispatch_consumption_oldest_pause_age_seconds`: how long the oldest pause has held.
static OLDEST_PAUSE_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    float_gauge(
        "dispatch_consumption_oldest_pause_age_seconds",
        "Age of the oldest operator pause in force; 0 when nothing is paused.",
    )
});
/// `dispatch_consumer_oldest_pending_age_seconds`.
static OLDEST_PENDING: LazyLock<Gauge> = LazyLock::new(|| {
    float_gauge(
        "dispatch_consumer_oldest_pending_age_seconds",
        "Age of the oldest record consumed but not yet persisted.",
    )
});
/// `dispatch_consumer_records_total{topic_kind}`.
static RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_consumer_records_total",
        "Records consumed.",
        &["topic_kind"],
    )
});
/// [`RECORDS`] of the first-attempt (`tasks`) and the retry topics, resolved once: one per record.
static RECORDS_BY_KIND: LazyLock<[IntCounter; 2]> =
    LazyLock::new(|| ["tasks", "retry"].map(|k| RECORDS.with_label_values(&[k])));
/// `dispatch_consumer_in_flight_records`.
static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_in_flight_records",
        "Records consumed but not yet persisted.",
    )
});
/// `dispatch_consumer_in_flight_bytes`.
static IN_FLIGHT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_in_flight_bytes",
        "Approximate memory held by records consumed but not yet persisted.",
    )
});
/// `dispatch_consumer_parked_records`.
static PARKED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_parked_records",
        "Records waiting outside the in-flight window (for their key's lane, a paused type or their type's permit).",
    )
});
/// `dispatch_consumer_parked_bytes`.
static PARKED_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_parked_bytes",
        "Approximate memory held by parked records.",
    )
});
/// `dispatch_consumer_paused_partitions`.
static PAUSED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_paused_partitions",
        "Partitions paused for backpressure, retry delays or by an operator.",
    )
});
/// `dispatch_consumer_rebalances_total{kind}`.
static REBALANCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_consumer_rebalances_total",
        "Rebalance callbacks.",
        &["kind"],
    )
});

/// Pre-creates the series.
pub(super) fn init() {
    LazyLock::force(&LAG);
    LazyLock::force(&COMMITTED);
    LazyLock::force(&PAUSE_STARTED);
    PAUSES.set(0);
    OLDEST_PAUSE_AGE.set(0.0);
    OLDEST_PENDING.set(0.0);
    LazyLock::force(&RECORDS_BY_KIND);
    IN_FLIGHT.set(0);
    IN_FLIGHT_BYTES.set(0);
    PARKED.set(0);
    PARKED_BYTES.set(0);
    PAUSED.set(0);
    for k in ["assign", "revoke"] {
        REBALANCES.with_label_values(&[k]);
    }
}

/// A record was consumed from a topic of `source`'s kind (`topic_kind`: `tasks` or `retry`).
pub fn record_consumed(source: Source) {
    let i = match source {
        Source::Tasks(_) => 0,
        Source::Retry(_) => 1,
    };
    RECORDS_BY_KIND[i].inc();
}

/// The in-flight window as the poll loop last measured it (records and bytes in flight, parked).
pub fn consumer_window(w: &Window) {
    IN_FLIGHT.set(w.records as i64);
    IN_FLIGHT_BYTES.set(w.bytes as i64);
    PARKED.set(w.parked as i64);
    PARKED_BYTES.set(w.parked_bytes as i64);
}

/// `n` partitions are paused (backpressure, retry delays, operator pauses).
pub fn paused_partitions(n: usize) {
    PAUSED.set(n as i64);
}

/// A rebalance revoked partitions of this instance.
pub fn partitions_revoked() {
    REBALANCES.with_label_values(&["revoke"]).inc();
}

/// A rebalance assigned partitions to this instance.
pub fn partitions_assigned() {
    REBALANCES.with_label_values(&["assign"]).inc();
}

/// The age of the oldest record consumed but not yet persisted.
pub fn oldest_pending_age(age: Duration) {
    OLDEST_PENDING.set(age.as_secs_f64());
}

/// The lag and committed offset of every partition this instance owns, replacing the last read
/// (a partition no longer owned loses its series).
pub fn partition_positions(partitions: &[PartitionStats]) {
    LAG.reset();
    COMMITTED.reset();
    for p in partitions {
        let labels = [p.topic.as_str(), &p.partition.to_string()];
        LAG.with_label_values(&labels).set(p.lag);
        COMMITTED.with_label_values(&labels).set(p.committed_offset);
    }
}

/// The operator pauses in force are exactly `stored` (their count, the oldest one's age, and when
/// each began; a pause lifted loses its series).
pub fn operator_pauses(stored: &[Pause]) {
    PAUSE_STARTED.reset();
    PAUSES.set(stored.len() as i64);
    OLDEST_PAUSE_AGE.set(
        stored
            .iter()
            .map(|p| (Utc::now() - p.paused_at).num_milliseconds().max(0) as f64 / 1000.0)
            .fold(0.0, f64::max),
    );
    for p in stored {
        let (kind, target) = match &p.target {
            PauseTarget::Priority(t) => ("priority", t),
            PauseTarget::TaskType(t) => ("task_type", t),
        };
        PAUSE_STARTED
            .with_label_values(&[kind, target])
            .set(p.paused_at.timestamp_millis() as f64 / 1000.0);
    }
}
