//! The batch writer: its transactions, the writes the store fenced, the terminal states written
//! and the events published for them.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::{Priority, TaskState};
use dispatch_runtime::metrics::LATENCY_BUCKETS;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use super::{WAIT_BUCKETS, counter, counter_vec, histogram, histogram_vec, priority_index, since};

/// `dispatch_tasks_finished_total{state}`.
static FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_tasks_finished_total",
        "Terminal states written.",
        &["state"],
    )
});
/// The terminal states, in the order of the resolved series arrays.
const TERMINAL: [TaskState; 3] = [TaskState::Succeeded, TaskState::Dead, TaskState::Cancelled];
/// [`FINISHED`] per terminal state, resolved once: one per task.
static FINISHED_BY_STATE: LazyLock<[IntCounter; 3]> =
    LazyLock::new(|| TERMINAL.map(|s| FINISHED.with_label_values(&[s.as_str()])));
/// `dispatch_task_completion_seconds{priority, state}`: accept to terminal state.
static COMPLETION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "dispatch_task_completion_seconds",
        "From the gateway's accept (or the task's run_at, if later) to its terminal state's write, retries included.",
        WAIT_BUCKETS,
        &["priority", "state"],
    )
});
/// [`COMPLETION`] per priority and terminal state, resolved once: one per task.
static COMPLETIONS: LazyLock<[[Histogram; 3]; 3]> = LazyLock::new(|| {
    Priority::ALL.map(|p| TERMINAL.map(|s| COMPLETION.with_label_values(&[p.as_str(), s.as_str()])))
});
/// `dispatch_events_published_total`.
static EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_events_published_total",
        "State-change events produced.",
    )
});
/// `dispatch_events_republished_total`.
static EVENTS_REPAIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_events_republished_total",
        "Events published again because the task's row had moved past what an acknowledged event carried (another instance's event landed first).",
    )
});
/// `dispatch_db_batch_size_rows`.
static BATCH_ROWS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "dispatch_db_batch_size_rows",
        "Rows per batch-writer transaction.",
        &[
            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
        ],
    )
});
/// `dispatch_db_write_duration_seconds`.
static DB_WRITE: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "dispatch_db_write_duration_seconds",
        "Batch-writer transaction latency.",
        LATENCY_BUCKETS,
    )
});
/// `dispatch_db_write_errors_total`.
static DB_WRITE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_db_write_errors_total",
        "Failed batch transactions.",
    )
});
/// `dispatch_writes_fenced_total`.
static FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_writes_fenced_total",
        "State writes the store dropped: replays, writes after a terminal state, and late outcomes of a partition's replaced owner.",
    )
});

/// Pre-creates the series.
pub(super) fn init() {
    LazyLock::force(&FINISHED_BY_STATE);
    LazyLock::force(&COMPLETIONS);
    LazyLock::force(&EVENTS);
    LazyLock::force(&BATCH_ROWS);
    LazyLock::force(&DB_WRITE);
    LazyLock::force(&DB_WRITE_ERRORS);
    LazyLock::force(&FENCED);
    LazyLock::force(&EVENTS_REPAIRED);
}

/// The index of a terminal state in [`TERMINAL`].
fn terminal_index(state: TaskState) -> Option<usize> {
    TERMINAL.iter().position(|s| *s == state)
}

/// A write of terminal `state` landed (its event is on its way).
pub fn task_finished(state: TaskState) {
    match terminal_index(state) {
        Some(i) => FINISHED_BY_STATE[i].inc(),
        None => FINISHED.with_label_values(&[state.as_str()]).inc(),
    }
}

/// A `priority` task accepted at `accepted` (due at `run_at`) reached terminal `state` at
/// `finished`.
pub fn task_completed(
    priority: Priority,
    state: TaskState,
    accepted: DateTime<Utc>,
    run_at: Option<DateTime<Utc>>,
    finished: DateTime<Utc>,
) {
    let seconds = since(accepted, run_at, finished);
    match terminal_index(state) {
        Some(i) => COMPLETIONS[priority_index(priority)][i].observe(seconds),
        None => COMPLETION
            .with_label_values(&[priority.as_str(), state.as_str()])
            .observe(seconds),
    }
}

/// A task's state-change event was acknowledged.
pub fn event_published() {
    EVENTS.inc();
}

/// An event is sent again: the task's row had moved past what an acknowledged event carried
/// (another instance's event landed first).
pub fn event_republished() {
    EVENTS_REPAIRED.inc();
}

/// A batch of `rows` entries committed in one transaction that took `elapsed`.
pub fn batch_written(rows: usize, elapsed: Duration) {
    DB_WRITE.observe(elapsed.as_secs_f64());
    BATCH_ROWS.observe(rows as f64);
}

/// A batch transaction failed (it is retried).
pub fn batch_failed() {
    DB_WRITE_ERRORS.inc();
}

/// The store dropped a state write (a replay, a write after a terminal state, or a replaced
/// owner's late outcome).
pub fn write_fenced() {
    FENCED.inc();
}
