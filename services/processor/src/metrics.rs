//! The processor's metrics (docs/metrics.md, "Processor"), registered once in the process
//! registry. [`init`] pre-creates every labelled series so dashboards see them before traffic.
//!
//! Over 400 lines because it is the processor's whole metric catalogue, one static per family with
//! its help text and labels, kept in one place to be checked against docs/metrics.md; the tests
//! start near line 419. A split by component (consumer, writer, scheduler) would come first.

use std::sync::LazyLock;

use dispatch_core::TaskState;
use dispatch_runtime::metrics::{LATENCY_BUCKETS, register};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

fn def<T>(r: Result<T, prometheus::Error>) -> T {
    r.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(def(IntCounter::new(name, help)))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(def(IntCounterVec::new(Opts::new(name, help), labels)))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(def(IntGauge::new(name, help)))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(def(IntGaugeVec::new(Opts::new(name, help), labels)))
}

/// `dispatch_consumer_lag_records{topic, partition}`.
pub static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dispatch_consumer_lag_records",
        "High watermark minus committed offset.",
        &["topic", "partition"],
    )
});
/// `dispatch_consumer_committed_offset{topic, partition}`: progress, for the stall alert.
pub static COMMITTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dispatch_consumer_committed_offset",
        "The group's committed offset of each partition this instance owns.",
        &["topic", "partition"],
    )
});
/// `dispatch_consumption_pause_started_timestamp_seconds{kind, target}`.
pub static PAUSE_STARTED: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    register(def(prometheus::GaugeVec::new(
        Opts::new(
            "dispatch_consumption_pause_started_timestamp_seconds",
            "When each operator pause in force began (kind: priority or task_type); no series when nothing is paused.",
        ),
        &["kind", "target"],
    )))
});
/// `dispatch_consumption_pauses`: operator pauses in force (always exported; 0 when none).
pub static PAUSES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumption_pauses",
        "Operator pauses in force (priorities and task types), as this instance last read them.",
    )
});
/// `dispatch_consumption_oldest_pause_age_seconds`: how long the oldest pause has held.
pub static OLDEST_PAUSE_AGE: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    register(def(prometheus::Gauge::new(
        "dispatch_consumption_oldest_pause_age_seconds",
        "Age of the oldest operator pause in force; 0 when nothing is paused.",
    )))
});
/// `dispatch_consumer_oldest_pending_age_seconds`.
pub static OLDEST_PENDING: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    register(def(prometheus::Gauge::new(
        "dispatch_consumer_oldest_pending_age_seconds",
        "Age of the oldest record consumed but not yet persisted.",
    )))
});
/// `dispatch_consumer_records_total{topic_kind}`.
pub static RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_consumer_records_total",
        "Records consumed.",
        &["topic_kind"],
    )
});
/// `dispatch_consumer_in_flight_records`.
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_in_flight_records",
        "Records consumed but not yet persisted.",
    )
});
/// `dispatch_consumer_in_flight_bytes`.
pub static IN_FLIGHT_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_in_flight_bytes",
        "Approximate memory held by records consumed but not yet persisted.",
    )
});
/// `dispatch_consumer_parked_records`.
pub static PARKED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_parked_records",
        "Records waiting outside the in-flight window (for their key's lane, a paused type or their type's permit).",
    )
});
/// `dispatch_consumer_parked_bytes`.
pub static PARKED_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_parked_bytes",
        "Approximate memory held by parked records.",
    )
});
/// `dispatch_consumer_paused_partitions`.
pub static PAUSED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_consumer_paused_partitions",
        "Partitions paused for backpressure, retry delays or by an operator.",
    )
});
/// `dispatch_consumer_rebalances_total{kind}`.
pub static REBALANCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_consumer_rebalances_total",
        "Rebalance callbacks.",
        &["kind"],
    )
});
/// `dispatch_handler_duration_seconds{task_type, outcome}`.
pub static HANDLER_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(def(HistogramVec::new(
        HistogramOpts::new("dispatch_handler_duration_seconds", "Handler latency.")
            .buckets(LATENCY_BUCKETS.to_vec()),
        &["task_type", "outcome"],
    )))
});
/// `dispatch_handler_executions_total{task_type, outcome}`.
pub static HANDLER_EXECUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_handler_executions_total",
        "Handler runs.",
        &["task_type", "outcome"],
    )
});
/// `dispatch_tasks_finished_total{state}`.
pub static FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_tasks_finished_total",
        "Terminal states written.",
        &["state"],
    )
});
/// `dispatch_retries_total{level}`.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_retries_total",
        "Records sent to a retry topic.",
        &["level"],
    )
});
/// `dispatch_dlq_records_total{error_class}`.
pub static DLQ: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_dlq_records_total",
        "Records sent to the DLQ.",
        &["error_class"],
    )
});
/// `dispatch_events_published_total`.
pub static EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_events_published_total",
        "State-change events produced.",
    )
});
/// `dispatch_events_republished_total`.
pub static EVENTS_REPAIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_events_republished_total",
        "Events published again because the task's row had moved past what an acknowledged event carried (another instance's event landed first).",
    )
});
/// `dispatch_db_batch_size_rows`.
pub static BATCH_ROWS: LazyLock<Histogram> = LazyLock::new(|| {
    register(def(Histogram::with_opts(
        HistogramOpts::new(
            "dispatch_db_batch_size_rows",
            "Rows per batch-writer transaction.",
        )
        .buckets(vec![
            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
        ]),
    )))
});
/// `dispatch_db_write_duration_seconds`.
pub static DB_WRITE: LazyLock<Histogram> = LazyLock::new(|| {
    register(def(Histogram::with_opts(
        HistogramOpts::new(
            "dispatch_db_write_duration_seconds",
            "Batch-writer transaction latency.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )))
});
/// `dispatch_task_start_delay_seconds{priority}`.
pub static START_DELAY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(def(HistogramVec::new(
        HistogramOpts::new(
            "dispatch_task_start_delay_seconds",
            "From a record's poll to its handler's start (lane, pause, type limit and slot waits).",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
        &["priority"],
    )))
});
/// Buckets of the symptom histograms (queue wait, completion): 10 ms to an hour. The SLO
/// thresholds (docs/metrics.md#slos) are bucket bounds: 10 s for the queue wait.
pub const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];
/// `dispatch_task_queue_wait_seconds{priority, tenant}`: what a user waits for before their task
/// runs (tenant: [`tenant_label`]).
pub static QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(def(HistogramVec::new(
        HistogramOpts::new(
            "dispatch_task_queue_wait_seconds",
            "From the gateway's accept (or the task's run_at, if later) to the start of its first attempt's handler.",
        )
        .buckets(WAIT_BUCKETS.to_vec()),
        &["priority", "tenant"],
    )))
});

/// Tenants with their own `tenant` label value; later ones share `other`, so a flood of new
/// tenants cannot grow the series without bound.
pub const MAX_TENANT_LABELS: usize = 100;

/// The `tenant` label value of `tenant`: itself for the first [`MAX_TENANT_LABELS`] tenants this
/// process sees, `other` after that.
pub fn tenant_label(tenant: &str) -> String {
    static SEEN: LazyLock<parking_lot::Mutex<std::collections::HashSet<String>>> =
        LazyLock::new(Default::default);
    let mut seen = SEEN.lock();
    if seen.contains(tenant) {
        return tenant.to_owned();
    }
    if seen.len() < MAX_TENANT_LABELS {
        seen.insert(tenant.to_owned());
        return tenant.to_owned();
    }
    "other".to_owned()
}
/// `dispatch_task_completion_seconds{priority, state}`: accept to terminal state.
pub static COMPLETION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(def(HistogramVec::new(
        HistogramOpts::new(
            "dispatch_task_completion_seconds",
            "From the gateway's accept (or the task's run_at, if later) to its terminal state's write, retries included.",
        )
        .buckets(WAIT_BUCKETS.to_vec()),
        &["priority", "state"],
    )))
});
/// `dispatch_slot_wait_seconds`.
pub static SLOT_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register(def(Histogram::with_opts(
        HistogramOpts::new(
            "dispatch_slot_wait_seconds",
            "How long a ready record waited for an execution slot.",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )))
});
/// `dispatch_writes_fenced_total`.
pub static FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_writes_fenced_total",
        "State writes the store dropped: replays, writes after a terminal state, and late outcomes of a partition's replaced owner.",
    )
});
/// `dispatch_handler_panics_total`.
pub static PANICS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_handler_panics_total",
        "Handler panics, each recorded as a failed attempt.",
        &["task_type"],
    )
});
/// `dispatch_cancels_ignored_total`.
pub static CANCELS_IGNORED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_cancels_ignored_total",
        "Cancel commands not applied, by reason (another tenant's task).",
        &["reason"],
    )
});
/// `dispatch_processor_tracked_entries{set}`.
pub static TRACKED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dispatch_processor_tracked_entries",
        "Entries of the processor's per-task memory: cancels remembered (bounded), attempts in flight and task locks (both bounded by the records in flight).",
        &["set"],
    )
});
/// `dispatch_db_write_errors_total`.
pub static DB_WRITE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_db_write_errors_total",
        "Failed batch transactions.",
    )
});
/// `dispatch_scheduler_claimed_total`.
pub static SCHEDULER_CLAIMED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_scheduler_claimed_total",
        "Scheduled tasks published when due.",
    )
});
/// Handler outcomes used as label values.
pub const OUTCOMES: [&str; 5] = [
    "succeeded",
    "retryable",
    "permanent",
    "timeout",
    "cancelled",
];
/// DLQ error classes used as label values.
pub const ERROR_CLASSES: [&str; 5] = [
    "permanent",
    "exhausted",
    "deadline",
    "unknown_type",
    "poison",
];

/// Seconds from `from` (the later of accept and `run_at`) to `to`, never negative.
pub fn since(
    from: chrono::DateTime<chrono::Utc>,
    run_at: Option<chrono::DateTime<chrono::Utc>>,
    to: chrono::DateTime<chrono::Utc>,
) -> f64 {
    let from = run_at.map_or(from, |r| r.max(from));
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

/// Registers every metric and pre-creates the labelled series (`task_types`: the configured types).
pub fn init(task_types: &[String]) {
    dispatch_runtime::metrics::register_runtime_metrics("processor");
    LazyLock::force(&LAG);
    LazyLock::force(&COMMITTED);
    LazyLock::force(&PAUSE_STARTED);
    PAUSES.set(0);
    OLDEST_PAUSE_AGE.set(0.0);
    OLDEST_PENDING.set(0.0);
    for k in ["tasks", "retry"] {
        RECORDS.with_label_values(&[k]);
    }
    IN_FLIGHT.set(0);
    IN_FLIGHT_BYTES.set(0);
    PARKED.set(0);
    PARKED_BYTES.set(0);
    PAUSED.set(0);
    for k in ["assign", "revoke"] {
        REBALANCES.with_label_values(&[k]);
    }
    for t in task_types {
        for o in OUTCOMES {
            HANDLER_DURATION.with_label_values(&[t.as_str(), o]);
            HANDLER_EXECUTIONS.with_label_values(&[t.as_str(), o]);
        }
    }
    for s in [TaskState::Succeeded, TaskState::Dead, TaskState::Cancelled] {
        FINISHED.with_label_values(&[s.as_str()]);
    }
    for l in 1..=dispatch_core::topics::RETRY_LEVELS {
        RETRIES.with_label_values(&[&l.to_string()]);
    }
    for c in ERROR_CLASSES {
        DLQ.with_label_values(&[c]);
    }
    LazyLock::force(&EVENTS);
    LazyLock::force(&BATCH_ROWS);
    LazyLock::force(&DB_WRITE);
    LazyLock::force(&DB_WRITE_ERRORS);
    LazyLock::force(&FENCED);
    LazyLock::force(&EVENTS_REPAIRED);
    for p in ["critical", "default", "low"] {
        START_DELAY.with_label_values(&[p]);
        // Tenants are known only once their tasks run; the `other` series of each priority
        // exists from the start, so the queue-wait SLO's queries and the live metrics check see
        // the family on a processor that has not run a first attempt yet (one restarted by a
        // fault scenario, one that owns no busy partition).
        QUEUE_WAIT.with_label_values(&[p, "other"]);
    }
    LazyLock::force(&SLOT_WAIT);
    for p in ["critical", "default", "low"] {
        for st in [TaskState::Succeeded, TaskState::Dead, TaskState::Cancelled] {
            COMPLETION.with_label_values(&[p, st.as_str()]);
        }
    }
    for t in task_types {
        PANICS.with_label_values(&[t.as_str()]);
    }
    CANCELS_IGNORED.with_label_values(&["tenant"]);
    for s in ["cancels", "in_flight", "task_locks"] {
        TRACKED.with_label_values(&[s]).set(0);
    }
    LazyLock::force(&SCHEDULER_CLAIMED);
    dispatch_runtime::producer::init_metrics(&["retry", "dlq", "events", "tasks"]);
    dispatch_runtime::metrics::db_pool_init("processor");
    crate::retention::init_metrics();
    crate::workflows::init_metrics();
    crate::schedules::init_metrics();
    crate::admin::init_metrics();
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::{MAX_TENANT_LABELS, since, tenant_label};

    #[test]
    fn waits_count_from_the_later_of_accept_and_run_at_and_never_go_negative() {
        let at = |s: i64| {
            Utc.timestamp_opt(1_800_000_000 + s, 0)
                .single()
                .expect("time")
        };
        assert!((since(at(0), None, at(3)) - 3.0).abs() < 1e-9);
        // Scheduled: the wait starts when it is due.
        assert!((since(at(0), Some(at(10)), at(12)) - 2.0).abs() < 1e-9);
        // A run_at before the accept changes nothing; clocks that disagree give 0, not < 0.
        assert!((since(at(5), Some(at(1)), at(6)) - 1.0).abs() < 1e-9);
        assert_eq!(since(at(5), None, at(4)), 0.0);
    }

    #[test]
    fn the_slo_histograms_are_exported_before_any_task_runs() {
        super::init(&[]);
        let families: Vec<String> = dispatch_runtime::metrics::registry()
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for name in [
            "dispatch_task_queue_wait_seconds",
            "dispatch_task_completion_seconds",
        ] {
            assert!(families.iter().any(|f| f == name), "{name} not exported");
        }
    }

    #[test]
    fn tenant_labels_are_bounded() {
        let mine = tenant_label("metrics-test-tenant");
        assert_eq!(mine, "metrics-test-tenant");
        for i in 0..MAX_TENANT_LABELS + 5 {
            let _ = tenant_label(&format!("flood-{i}"));
        }
        assert_eq!(tenant_label("metrics-test-latecomer"), "other");
        // A tenant seen before the flood keeps its label.
        assert_eq!(tenant_label("metrics-test-tenant"), "metrics-test-tenant");
    }
}
