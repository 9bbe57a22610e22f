//! The processor's metrics (docs/metrics.md, "Processor"), registered once in the process
//! registry. Each family is a private static recorded through one function that says what
//! happened (`handler_finished`, `retry_scheduled`, `batch_written`, ...), so callers never name a
//! label; labels from a fixed set take an enum ([`HandlerOutcome`], [`ErrorClass`], [`Tracked`],
//! [`PurgedTable`], ...). [`init`] pre-creates every labelled series so dashboards see them
//! before traffic.
//!
//! The catalogue, by the component that records it:
//! - `metrics/consumer.rs`: consumption (records, window, lag, rebalances, operator pauses);
//! - `metrics/attempts.rs`: one attempt's life (start delay, queue wait, handler, the per-task
//!   memory);
//! - `metrics/dead_letters.rs`: retry and DLQ records, and the operator's redrives;
//! - `metrics/writer.rs`: the batch writer and the events it publishes (terminal states,
//!   completion);
//! - `metrics/loops.rs`: the background loops (scheduler, schedules, workflow advancer,
//!   retention).
//!
//! All are re-exported here: callers write `metrics::handler_finished(..)`. The names, types
//! and labels are checked against docs/metrics.md by the `it::catalogue` test.
//!
//! Series recorded per record or per task are resolved once (arrays indexed by the enum, or a
//! task type's [`TaskTypeSeries`] kept by the handler registry), not looked up by their label
//! values on every call.

mod attempts;
mod consumer;
mod dead_letters;
mod loops;
mod writer;

pub use attempts::*;
pub use consumer::*;
pub use dead_letters::*;
pub use loops::*;
pub use writer::*;

use dispatch_core::Priority;
use dispatch_runtime::metrics::new::{
    counter, counter_vec, float_gauge, float_gauge_vec, gauge, gauge_vec, histogram, histogram_vec,
};

/// Buckets of the symptom histograms (queue wait, completion): 10 ms to an hour. The SLO
/// thresholds (docs/metrics.md#slos) are bucket bounds: 10 s for the queue wait.
pub const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// The index of `p` in [`Priority::ALL`] (and in the per-priority series arrays).
fn priority_index(p: Priority) -> usize {
    match p {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Low => 2,
    }
}

/// Seconds from `from` (the later of accept and `run_at`) to `to`, never negative.
fn since(
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
    consumer::init();
    attempts::init(task_types);
    dead_letters::init();
    writer::init();
    loops::init();
    dispatch_runtime::producer::init_metrics(&["retry", "dlq", "events", "tasks"]);
    dispatch_runtime::metrics::db_pool_init("processor");
}

/// The processor's database pool usage (`dispatch_db_pool_*{service="processor"}`).
pub fn db_pool(pool: &dispatch_store::MySqlPool, max_connections: u32) {
    dispatch_runtime::metrics::db_pool("processor", pool, max_connections);
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use dispatch_core::Priority;

    use super::{priority_index, since};

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
    fn priority_indexes_follow_priority_all() {
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(priority_index(p), i);
        }
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
}
