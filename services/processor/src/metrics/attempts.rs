//! One attempt's life: its start (start delay, slot wait, queue wait), its handler, and the
//! per-task memory it occupies meanwhile. What follows a failed attempt (a retry or a dead
//! letter) is in `dead_letters.rs`.

use foldhash::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::Priority;
use dispatch_runtime::metrics::LATENCY_BUCKETS;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{
    WAIT_BUCKETS, counter_vec, gauge_vec, histogram, histogram_vec, priority_index, since,
};

/// `dispatch_handler_duration_seconds{task_type, outcome}`.
static HANDLER_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dispatch_handler_duration_seconds",
        "Handler latency.",
        LATENCY_BUCKETS,
        &["task_type", "outcome"],
    )
});
/// `dispatch_handler_executions_total{task_type, outcome}`.
static HANDLER_EXECUTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_handler_executions_total",
        "Handler runs.",
        &["task_type", "outcome"],
    )
});
/// `dispatch_handler_panics_total{task_type}`.
static PANICS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_handler_panics_total",
        "Handler panics, each recorded as a failed attempt.",
        &["task_type"],
    )
});
/// `dispatch_task_start_delay_seconds{priority}`.
static START_DELAY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dispatch_task_start_delay_seconds",
        "From a record's poll to its handler's start (lane, pause, type limit and slot waits).",
        LATENCY_BUCKETS,
        &["priority"],
    )
});
/// [`START_DELAY`] per priority ([`Priority::ALL`] order), resolved once: one per attempt.
static START_DELAYS: LazyLock<[Histogram; 3]> =
    LazyLock::new(|| Priority::ALL.map(|p| START_DELAY.with_label_values(&[p.as_str()])));
/// `dispatch_slot_wait_seconds`.
static SLOT_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "dispatch_slot_wait_seconds",
        "How long a ready record waited for an execution slot.",
        LATENCY_BUCKETS,
    )
});
/// `dispatch_task_queue_wait_seconds{priority, tenant}`: what a user waits for before their task
/// runs (tenant: the first [`MAX_TENANT_LABELS`] tenants this process sees, `other` after that).
static QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dispatch_task_queue_wait_seconds",
        "From the gateway's accept (or the task's run_at, if later) to the start of its first attempt's handler.",
        WAIT_BUCKETS,
        &["priority", "tenant"],
    )
});
/// [`QUEUE_WAIT`] of the tenants with a label of their own, per priority, each series created
/// when the tenant's first task of that priority starts.
static TENANT_WAITS: LazyLock<parking_lot::Mutex<HashMap<String, [Option<Histogram>; 3]>>> =
    LazyLock::new(Default::default);
/// [`QUEUE_WAIT`] of every later tenant (`tenant="other"`), per priority.
static OTHER_WAITS: LazyLock<[Histogram; 3]> =
    LazyLock::new(|| Priority::ALL.map(|p| QUEUE_WAIT.with_label_values(&[p.as_str(), "other"])));
/// `dispatch_cancels_ignored_total{reason}`.
static CANCELS_IGNORED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_cancels_ignored_total",
        "Cancel commands not applied, by reason (another tenant's task).",
        &["reason"],
    )
});
/// `dispatch_processor_tracked_entries{set}`.
static TRACKED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "dispatch_processor_tracked_entries",
        "Entries of the processor's per-task memory: cancels remembered (bounded), attempts in flight and task locks (both bounded by the records in flight).",
        &["set"],
    )
});
/// [`TRACKED`] per [`Tracked`] set, resolved once: set twice per task.
static TRACKED_BY_SET: LazyLock<[IntGauge; 3]> =
    LazyLock::new(|| Tracked::ALL.map(|s| TRACKED.with_label_values(&[s.as_str()])));

/// Tenants with their own `tenant` label value; later ones share `other`, so a flood of new
/// tenants cannot grow the series without bound.
pub const MAX_TENANT_LABELS: usize = 100;

/// How a handler run ended: the `outcome` label of `dispatch_handler_*` (and the outcome of the
/// attempt's row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// It returned a result.
    Succeeded,
    /// It failed and may be retried (a panic too).
    Retryable,
    /// It failed for good.
    Permanent,
    /// It ran past its timeout.
    Timeout,
    /// The task was cancelled while it ran, or the run was stopped (revoke, shutdown).
    Cancelled,
}

impl HandlerOutcome {
    /// Every outcome, in label order.
    pub const ALL: [Self; 5] = [
        Self::Succeeded,
        Self::Retryable,
        Self::Permanent,
        Self::Timeout,
        Self::Cancelled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A set of the processor's per-task memory: the `set` label of
/// `dispatch_processor_tracked_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// Cancels remembered.
    Cancels,
    /// Attempts in flight.
    InFlight,
    /// Task locks.
    TaskLocks,
}

impl Tracked {
    const ALL: [Self; 3] = [Self::Cancels, Self::InFlight, Self::TaskLocks];

    fn as_str(self) -> &'static str {
        match self {
            Self::Cancels => "cancels",
            Self::InFlight => "in_flight",
            Self::TaskLocks => "task_locks",
        }
    }
}

/// The handler series of one task type, resolved once: the handler registry keeps one per type,
/// so an attempt records its outcome without looking its labels up.
pub struct TaskTypeSeries {
    duration: [Histogram; 5],
    executions: [IntCounter; 5],
    panics: IntCounter,
}

impl TaskTypeSeries {
    /// The series of `task_type` (created with every outcome's if new).
    pub fn of(task_type: &str) -> Self {
        Self {
            duration: HandlerOutcome::ALL
                .map(|o| HANDLER_DURATION.with_label_values(&[task_type, o.as_str()])),
            executions: HandlerOutcome::ALL
                .map(|o| HANDLER_EXECUTIONS.with_label_values(&[task_type, o.as_str()])),
            panics: PANICS.with_label_values(&[task_type]),
        }
    }
}

/// Pre-creates the series (`task_types`: the configured types).
pub(super) fn init(task_types: &[String]) {
    for t in task_types {
        TaskTypeSeries::of(t);
    }
    LazyLock::force(&START_DELAYS);
    // Tenants are known only once their tasks run; the `other` series of each priority exists
    // from the start, so the queue-wait SLO's queries and the live metrics check see the family
    // on a processor that has not run a first attempt yet (one restarted by a fault scenario, one
    // that owns no busy partition).
    LazyLock::force(&OTHER_WAITS);
    LazyLock::force(&SLOT_WAIT);
    CANCELS_IGNORED.with_label_values(&["tenant"]);
    for g in TRACKED_BY_SET.iter() {
        g.set(0);
    }
}

/// An attempt of a `priority` task starts its handler, `since_poll` after its record was polled
/// and `slot_wait` after it asked for an execution slot.
pub fn attempt_started(priority: Priority, since_poll: Duration, slot_wait: Duration) {
    START_DELAYS[priority_index(priority)].observe(since_poll.as_secs_f64());
    SLOT_WAIT.observe(slot_wait.as_secs_f64());
}

/// The first attempt of a task of `tenant` starts its handler now; the task was accepted at
/// `submitted_at` and due at `run_at`.
pub fn first_attempt_started(
    priority: Priority,
    tenant: &str,
    submitted_at: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
) {
    queue_wait_of(priority, tenant).observe(since(submitted_at, run_at, Utc::now()));
}

/// The queue-wait series of `tenant`'s `priority` tasks: its own for the first
/// [`MAX_TENANT_LABELS`] tenants this process sees, `other` after that.
fn queue_wait_of(priority: Priority, tenant: &str) -> Histogram {
    let i = priority_index(priority);
    let mut seen = TENANT_WAITS.lock();
    if let Some(series) = seen.get_mut(tenant) {
        return series[i]
            .get_or_insert_with(|| QUEUE_WAIT.with_label_values(&[priority.as_str(), tenant]))
            .clone();
    }
    if seen.len() >= MAX_TENANT_LABELS {
        return OTHER_WAITS[i].clone();
    }
    let h = QUEUE_WAIT.with_label_values(&[priority.as_str(), tenant]);
    let mut series: [Option<Histogram>; 3] = Default::default();
    series[i] = Some(h.clone());
    seen.insert(tenant.to_owned(), series);
    h
}

/// A handler of `series`' task type ran for `elapsed` and ended with `outcome`.
pub fn handler_finished(series: &TaskTypeSeries, outcome: HandlerOutcome, elapsed: Duration) {
    let i = outcome as usize;
    series.duration[i].observe(elapsed.as_secs_f64());
    series.executions[i].inc();
}

/// A handler of `series`' task type panicked (the attempt is recorded as failed).
pub fn handler_panicked(series: &TaskTypeSeries) {
    series.panics.inc();
}

/// A cancel of another tenant's task was not applied.
pub fn cancel_of_another_tenant_ignored() {
    CANCELS_IGNORED.with_label_values(&["tenant"]).inc();
}

/// The per-task memory `set` holds `entries` entries.
pub fn tracked(set: Tracked, entries: usize) {
    TRACKED_BY_SET[set as usize].set(entries as i64);
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use dispatch_core::Priority;

    use super::{HandlerOutcome, MAX_TENANT_LABELS, Tracked, first_attempt_started};

    /// The (priority, tenant) pairs of `dispatch_task_queue_wait_seconds` in the registry.
    fn queue_wait_series() -> Vec<(String, String)> {
        let families = dispatch_runtime::metrics::registry().gather();
        let Some(f) = families
            .iter()
            .find(|f| f.name() == "dispatch_task_queue_wait_seconds")
        else {
            return Vec::new();
        };
        f.get_metric()
            .iter()
            .map(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                (label("priority"), label("tenant"))
            })
            .collect()
    }

    #[test]
    fn tenant_labels_are_bounded() {
        let now = Utc::now();
        let has = |p: &str, t: &str| {
            queue_wait_series()
                .iter()
                .any(|(sp, st)| sp == p && st == t)
        };
        first_attempt_started(Priority::Default, "metrics-test-tenant", now, None);
        assert!(has("default", "metrics-test-tenant"));
        for i in 0..MAX_TENANT_LABELS + 5 {
            first_attempt_started(Priority::Default, &format!("flood-{i}"), now, None);
        }
        first_attempt_started(Priority::Default, "metrics-test-latecomer", now, None);
        assert!(!has("default", "metrics-test-latecomer"));
        assert!(has("default", "other"));
        // A tenant seen before the flood keeps its label, at any priority.
        first_attempt_started(Priority::Low, "metrics-test-tenant", now, None);
        assert!(has("low", "metrics-test-tenant"));
    }

    #[test]
    fn label_values_are_the_catalogued_ones() {
        assert_eq!(
            HandlerOutcome::ALL.map(HandlerOutcome::as_str),
            [
                "succeeded",
                "retryable",
                "permanent",
                "timeout",
                "cancelled"
            ]
        );
        assert_eq!(
            Tracked::ALL.map(Tracked::as_str),
            ["cancels", "in_flight", "task_locks"]
        );
        // The arrays of resolved series are indexed by the enums' discriminants.
        for (i, o) in HandlerOutcome::ALL.into_iter().enumerate() {
            assert_eq!(o as usize, i);
        }
        for (i, s) in Tracked::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i);
        }
    }
}
