//! The background loops: the scheduler, the schedule loop, the workflow advancer and the
//! retention purge.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::Utc;
use dispatch_runtime::metrics::LATENCY_BUCKETS;
use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge};

use super::{counter, counter_vec, float_gauge, gauge, histogram};

/// `dispatch_scheduler_claimed_total`.
static SCHEDULER_CLAIMED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_scheduler_claimed_total",
        "Scheduled tasks published when due.",
    )
});
/// `dispatch_retry_backstops_total`: retries published again from their backstop wait.
static BACKSTOPS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_retry_backstops_total",
        "Next attempts published again from MySQL because the task was still RETRYING well after its retry record was due (the record never reached a consumer, or the retry consumers lag).",
    )
});
/// `dispatch_schedule_fires_total{outcome}` ([`FireOutcome`]).
static FIRES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_schedule_fires_total",
        "Schedule fire times by outcome: fired, missed, overlap_skipped, duplicate, invalid.",
        &["outcome"],
    )
});
/// `dispatch_schedule_lag_seconds`: now minus the oldest `next_fire_at` of the unpaused
/// schedules (0 when none is due), as this instance saw it after its last pass.
static SCHEDULE_LAG: LazyLock<Gauge> = LazyLock::new(|| {
    float_gauge(
        "dispatch_schedule_lag_seconds",
        "How far the schedule loop is behind: now minus the oldest due next_fire_at (0 when none is due).",
    )
});
/// `dispatch_workflow_nodes_released_total`.
static RELEASED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_workflow_nodes_released_total",
        "Workflow nodes moved from WAITING to SCHEDULED once their dependencies finished.",
    )
});
/// `dispatch_workflow_node_cancels_total{cause}` ([`NodeCancelCause`]).
static NODE_CANCELS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_workflow_node_cancels_total",
        "CANCEL records produced for workflow nodes (cause: dependency failed, or workflow cancelled).",
        &["cause"],
    )
});
/// `dispatch_workflow_advance_errors_total`.
static ADVANCE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_workflow_advance_errors_total",
        "Workflow advancer passes that failed (database or Kafka); the next pass tries again.",
    )
});
/// `dispatch_retention_purged_rows_total{table}` ([`PurgedTable`]).
static PURGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_retention_purged_rows_total",
        "Rows deleted by the retention purge.",
        &["table"],
    )
});
/// `dispatch_retention_rounds_total{outcome}` ([`RetentionRound`]).
static ROUNDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_retention_rounds_total",
        "Retention purge rounds of the leader by outcome.",
        &["outcome"],
    )
});
/// `dispatch_retention_batch_duration_seconds`.
static BATCH_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "dispatch_retention_batch_duration_seconds",
        "Time one retention batch (read, lock, delete, commit) took.",
        LATENCY_BUCKETS,
    )
});
/// `dispatch_retention_leader`.
static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_retention_leader",
        "1 while this instance holds the retention leader lock.",
    )
});
/// `dispatch_retention_last_round_timestamp_seconds`.
static LAST_ROUND: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "dispatch_retention_last_round_timestamp_seconds",
        "Unix time the last complete retention round of this instance ended.",
    )
});
/// What became of a schedule's fire time: the `outcome` label of
/// `dispatch_schedule_fires_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    /// A task was submitted.
    Fired,
    /// A missed time the catch-up policy did not fire.
    Missed,
    /// Not fired: the previous fire's task was unfinished (overlap SKIP).
    OverlapSkipped,
    /// The fire's task existed already.
    Duplicate,
    /// The schedule's timing or template no longer parses.
    Invalid,
}

impl FireOutcome {
    const ALL: [Self; 5] = [
        Self::Fired,
        Self::Missed,
        Self::OverlapSkipped,
        Self::Duplicate,
        Self::Invalid,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Fired => "fired",
            Self::Missed => "missed",
            Self::OverlapSkipped => "overlap_skipped",
            Self::Duplicate => "duplicate",
            Self::Invalid => "invalid",
        }
    }
}

/// Why the advancer cancelled workflow nodes: the `cause` label of
/// `dispatch_workflow_node_cancels_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCancelCause {
    /// A dependency failed behind a `cancel` edge.
    Dependency,
    /// The workflow was cancelled.
    Workflow,
}

impl NodeCancelCause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dependency => "dependency",
            Self::Workflow => "workflow",
        }
    }
}

/// A table the retention purge deletes from: the `table` label of
/// `dispatch_retention_purged_rows_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgedTable {
    /// `tasks`.
    Tasks,
    /// `task_attempts`.
    TaskAttempts,
    /// `handler_executions`.
    HandlerExecutions,
    /// `workflow_nodes`.
    WorkflowNodes,
    /// `dead_letters`.
    DeadLetters,
}

impl PurgedTable {
    const ALL: [Self; 5] = [
        Self::Tasks,
        Self::TaskAttempts,
        Self::HandlerExecutions,
        Self::WorkflowNodes,
        Self::DeadLetters,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Tasks => "tasks",
            Self::TaskAttempts => "task_attempts",
            Self::HandlerExecutions => "handler_executions",
            Self::WorkflowNodes => "workflow_nodes",
            Self::DeadLetters => "dead_letters",
        }
    }
}

/// How a retention round of the leader ended: the `outcome` label of
/// `dispatch_retention_rounds_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionRound {
    /// Every tenant was purged.
    Complete,
    /// A database error ended it (the lock is given up).
    Failed,
    /// It stopped early: shutdown, or the lock was lost.
    Interrupted,
}

impl RetentionRound {
    const ALL: [Self; 3] = [Self::Complete, Self::Failed, Self::Interrupted];

    fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Pre-creates the series.
pub(super) fn init() {
    LazyLock::force(&SCHEDULER_CLAIMED);
    LazyLock::force(&BACKSTOPS);
    for o in FireOutcome::ALL {
        FIRES.with_label_values(&[o.as_str()]);
    }
    SCHEDULE_LAG.set(0.0);
    LazyLock::force(&RELEASED);
    LazyLock::force(&ADVANCE_ERRORS);
    for cause in [NodeCancelCause::Dependency, NodeCancelCause::Workflow] {
        NODE_CANCELS.with_label_values(&[cause.as_str()]);
    }
    for t in PurgedTable::ALL {
        PURGED.with_label_values(&[t.as_str()]);
    }
    for o in RetentionRound::ALL {
        ROUNDS.with_label_values(&[o.as_str()]);
    }
    LazyLock::force(&BATCH_DURATION);
    LEADER.set(0);
    LazyLock::force(&LAST_ROUND);
}

/// The scheduler published `n` due tasks.
pub fn scheduled_tasks_published(n: usize) {
    SCHEDULER_CLAIMED.inc_by(n as u64);
}

/// `n` retries were published again from their backstop waits.
pub fn retry_backstops(n: usize) {
    BACKSTOPS.inc_by(n as u64);
}

/// `n` fire times of a schedule pass ended with `outcome`.
pub fn schedule_fires(outcome: FireOutcome, n: u64) {
    FIRES.with_label_values(&[outcome.as_str()]).inc_by(n);
}

/// The schedule loop is `seconds` behind (now minus the oldest due `next_fire_at`; 0 when none
/// is due).
pub fn schedule_lag(seconds: f64) {
    SCHEDULE_LAG.set(seconds);
}

/// The count of fire times that ended with `outcome` so far in this process (for tests).
pub fn schedule_fire_count(outcome: FireOutcome) -> u64 {
    FIRES.with_label_values(&[outcome.as_str()]).get()
}

/// The advancer released `n` workflow nodes to SCHEDULED.
pub fn workflow_nodes_released(n: u64) {
    RELEASED.inc_by(n);
}

/// The advancer produced `n` CANCEL records for workflow nodes, for `cause`.
pub fn workflow_nodes_cancelled(cause: NodeCancelCause, n: usize) {
    NODE_CANCELS
        .with_label_values(&[cause.as_str()])
        .inc_by(n as u64);
}

/// An advancer pass failed; the next pass tries again.
pub fn workflow_pass_failed() {
    ADVANCE_ERRORS.inc();
}

/// This instance took (`true`) or gave up (`false`) the retention leader lock.
pub fn retention_leader(leading: bool) {
    LEADER.set(i64::from(leading));
}

/// A retention round of the leader ended with `outcome`; a complete one is the last round.
pub fn retention_round_ended(outcome: RetentionRound) {
    ROUNDS.with_label_values(&[outcome.as_str()]).inc();
    if outcome == RetentionRound::Complete {
        LAST_ROUND.set(Utc::now().timestamp());
    }
}

/// A retention batch deleted `rows` rows of `table`.
pub fn retention_purged(table: PurgedTable, rows: u64) {
    PURGED.with_label_values(&[table.as_str()]).inc_by(rows);
}

/// One retention batch took `elapsed`.
pub fn retention_batch_took(elapsed: Duration) {
    BATCH_DURATION.observe(elapsed.as_secs_f64());
}

/// The rows of `table` the retention purge deleted so far in this process (for tests).
pub fn retention_purged_rows(table: PurgedTable) -> u64 {
    PURGED.with_label_values(&[table.as_str()]).get()
}

#[cfg(test)]
mod tests {
    use super::{FireOutcome, NodeCancelCause, PurgedTable, RetentionRound};

    #[test]
    fn label_values_are_the_catalogued_ones() {
        assert_eq!(
            FireOutcome::ALL.map(FireOutcome::as_str),
            ["fired", "missed", "overlap_skipped", "duplicate", "invalid"]
        );
        assert_eq!(
            [NodeCancelCause::Dependency, NodeCancelCause::Workflow].map(NodeCancelCause::as_str),
            ["dependency", "workflow"]
        );
        assert_eq!(
            PurgedTable::ALL.map(PurgedTable::as_str),
            [
                "tasks",
                "task_attempts",
                "handler_executions",
                "workflow_nodes",
                "dead_letters"
            ]
        );
        assert_eq!(
            RetentionRound::ALL.map(RetentionRound::as_str),
            ["complete", "failed", "interrupted"]
        );
    }
}
