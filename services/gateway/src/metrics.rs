//! The gateway's metrics (docs/metrics.md, "Gateway"), each with the one function that records it,
//! so a log line and its counter cannot drift apart. Labelled series are pre-created by [`init`].

use std::sync::LazyLock;
use std::time::Duration;

use dispatch_runtime::metrics::new::{counter, counter_vec};
use dispatch_runtime::metrics::register;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGaugeVec, Opts};

static SUBMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_submit_total",
        "Submitted tasks by outcome.",
        &["outcome"],
    )
});
static OUTBOX_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_outbox_writes_total",
        "Records written to the outbox.",
    )
});
static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_rate_limited_total",
        "Requests rejected by a rate limit.",
        &["scope"],
    )
});
static LOAD_SHED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_load_shed_total",
        "Requests rejected because the in-flight bound was reached.",
    )
});
static IDEMPOTENCY_HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_idempotency_hits_total",
        "Duplicate submits detected.",
        &["source"],
    )
});
static OUTBOX_BACKLOG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("dispatch_outbox_backlog_records", "Outbox rows by state."),
            &["state"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static OUTBOX_OLDEST: LazyLock<Gauge> = LazyLock::new(|| {
    register(
        Gauge::new(
            "dispatch_outbox_oldest_age_seconds",
            "Age of the oldest pending outbox row.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static OUTBOX_RELAYED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_outbox_relayed_total",
        "Outbox rows the relay tried to publish.",
        &["outcome"],
    )
});
static OUTBOX_BLOCKED_KEYS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "dispatch_outbox_blocked_keys",
                "Outbox keys whose oldest row cannot be published now (later rows wait behind it).",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static OUTBOX_PURGED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_outbox_purged_total",
        "Published outbox rows deleted after their retention.",
    )
});

static WORKFLOW_SUBMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_workflow_submit_total",
        "Submitted workflows by outcome.",
        &["outcome"],
    )
});
static WORKFLOW_NODES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dispatch_workflow_nodes_accepted_total",
        "Nodes of the workflows stored.",
    )
});
static WORKFLOW_CANCELS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dispatch_workflow_cancel_total",
        "CancelWorkflow requests by outcome.",
        &["outcome"],
    )
});

/// The service label.
pub const SERVICE: &str = "gateway";

/// Outcomes of `dispatch_submit_total`.
pub const SUBMIT_OUTCOMES: [&str; 9] = [
    "kafka",
    "outbox",
    "duplicate",
    "conflict",
    "invalid",
    "unavailable",
    "deadline_exceeded",
    "rate_limited",
    "unauthenticated",
];

/// Outcomes of `dispatch_workflow_submit_total`.
pub const WORKFLOW_SUBMIT_OUTCOMES: [&str; 7] = [
    "accepted",
    "duplicate",
    "conflict",
    "invalid",
    "unavailable",
    "rate_limited",
    "unauthenticated",
];

/// Outcomes of `dispatch_workflow_cancel_total`.
pub const WORKFLOW_CANCEL_OUTCOMES: [&str; 5] = [
    "accepted",
    "finished",
    "not_found",
    "invalid",
    "unavailable",
];

/// Pre-creates every labelled series.
pub fn init() {
    for o in SUBMIT_OUTCOMES {
        let _ = SUBMITS.with_label_values(&[o]);
    }
    let _ = OUTBOX_WRITES.get();
    for o in WORKFLOW_SUBMIT_OUTCOMES {
        let _ = WORKFLOW_SUBMITS.with_label_values(&[o]);
    }
    WORKFLOW_NODES.inc_by(0);
    for o in WORKFLOW_CANCEL_OUTCOMES {
        let _ = WORKFLOW_CANCELS.with_label_values(&[o]);
    }
    for s in ["tenant", "global"] {
        let _ = RATE_LIMITED.with_label_values(&[s]);
    }
    let _ = LOAD_SHED.get();
    for s in ["redis", "store"] {
        let _ = IDEMPOTENCY_HITS.with_label_values(&[s]);
    }
    for s in ["pending", "dead"] {
        let _ = OUTBOX_BACKLOG.with_label_values(&[s]);
    }
    OUTBOX_OLDEST.set(0.0);
    for r in ["failing", "dead"] {
        OUTBOX_BLOCKED_KEYS.with_label_values(&[r]).set(0);
    }
    OUTBOX_PURGED.inc_by(0);
    dispatch_runtime::producer::init_metrics(&["tasks", "cancel"]);
    for o in ["published", "failed"] {
        let _ = OUTBOX_RELAYED.with_label_values(&[o]);
    }
    dispatch_runtime::metrics::db_pool_init(SERVICE);
}

/// One submitted item finished with `outcome` (one of [`SUBMIT_OUTCOMES`]).
pub fn submit(outcome: &'static str) {
    SUBMITS.with_label_values(&[outcome]).inc();
}

/// `n` submitted items finished with `outcome`.
pub fn submit_n(outcome: &'static str, n: u64) {
    SUBMITS.with_label_values(&[outcome]).inc_by(n);
}

/// One SubmitWorkflow finished with `outcome` (one of [`WORKFLOW_SUBMIT_OUTCOMES`]).
pub fn workflow_submit(outcome: &'static str) {
    WORKFLOW_SUBMITS.with_label_values(&[outcome]).inc();
}

/// A workflow of `nodes` nodes was stored.
pub fn workflow_nodes_accepted(nodes: usize) {
    WORKFLOW_NODES.inc_by(nodes as u64);
}

/// One CancelWorkflow finished with `outcome` (one of [`WORKFLOW_CANCEL_OUTCOMES`]).
pub fn workflow_cancel(outcome: &'static str) {
    WORKFLOW_CANCELS.with_label_values(&[outcome]).inc();
}

/// A delivery report arrived after `elapsed`.
pub fn produced(topic_kind: &'static str, elapsed: Duration) {
    dispatch_runtime::producer::delivered(topic_kind, elapsed);
}

/// A produce failed or timed out.
pub fn produce_failed(topic_kind: &'static str, reason: &str) {
    tracing::warn!(topic_kind, reason, "kafka produce failed");
    dispatch_runtime::producer::delivery_failed(topic_kind);
}

/// A record was written to the outbox.
pub fn outbox_written(reason: &str) {
    tracing::debug!(reason, "record written to the outbox");
    OUTBOX_WRITES.inc();
}

/// A request was rejected by the `scope` (`tenant` / `global`) limit.
pub fn rate_limited(scope: &'static str, items: u32) {
    tracing::debug!(scope, items, "rate limited");
    RATE_LIMITED.with_label_values(&[scope]).inc();
}

/// A request was shed by the in-flight bound.
pub fn load_shed() {
    LOAD_SHED.inc();
}

/// A duplicate submit was detected by `source` (`redis` / `store`).
pub fn idempotency_hit(source: &'static str) {
    IDEMPOTENCY_HITS.with_label_values(&[source]).inc();
}

/// The outbox backlog as read by the relay.
pub fn outbox_backlog(b: &dispatch_store::outbox::Backlog) {
    OUTBOX_BACKLOG
        .with_label_values(&["pending"])
        .set(b.pending as i64);
    OUTBOX_BACKLOG
        .with_label_values(&["dead"])
        .set(b.dead as i64);
    OUTBOX_OLDEST.set(b.oldest_pending_age_seconds);
}

/// Keys blocked behind a failing (in backoff) or dead row, as the relay leader read them.
pub fn outbox_blocked_keys(failing: usize, dead: usize) {
    OUTBOX_BLOCKED_KEYS
        .with_label_values(&["failing"])
        .set(failing as i64);
    OUTBOX_BLOCKED_KEYS
        .with_label_values(&["dead"])
        .set(dead as i64);
}

/// One relay round finished.
pub fn outbox_relayed(published: usize, failed: usize) {
    if failed > 0 {
        tracing::warn!(published, failed, "outbox relay batch had failures");
    } else {
        tracing::debug!(published, "outbox relay batch published");
    }
    OUTBOX_RELAYED
        .with_label_values(&["published"])
        .inc_by(published as u64);
    OUTBOX_RELAYED
        .with_label_values(&["failed"])
        .inc_by(failed as u64);
}

/// Published outbox rows deleted after their retention.
pub fn outbox_purged(n: u64) {
    if n > 0 {
        tracing::info!(rows = n, "published outbox rows purged");
    }
    OUTBOX_PURGED.inc_by(n);
}

/// Pool usage.
pub fn pool(pool: &sqlx::MySqlPool, max: u32) {
    dispatch_runtime::metrics::db_pool(SERVICE, pool, max);
}

/// The current value of `dispatch_circuit_breaker_open{breaker}` (for tests).
pub fn breaker_is_open(name: &str) -> bool {
    dispatch_runtime::breaker::gauge_is_open(SERVICE, name)
}
