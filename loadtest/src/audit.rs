//! The audit: after a load run (with `--record-ids`) and a quiet period, prove from MySQL
//! (`tasks`, `task_attempts`), the simulate handler's execution ledger (`handler_executions`:
//! instance, start, finish, outcome of every execution) and the events topic that the guarantees
//! held. [`audit`] gathers a [`History`]; [`judge`] turns it into a [`Verdict`] and is a pure
//! function, so every check is unit-tested on a broken history.
//!
//! A verdict FAILS, with one reason per broken check, when:
//! - the run is empty (no accepted task), or accepted fewer submits than `--floor` of those
//!   offered (`--load` reports; rejected submits are reported by gRPC code), or the ids files
//!   hold fewer accepted submits than the load reports counted;
//! - `missing`: an accepted id has no row in `tasks` (a lost task);
//! - `not_terminal`: a row is not SUCCEEDED/DEAD/CANCELLED after the wait;
//! - the events topic was not read to its end in time (`events_complete = false`: never a silent
//!   partial count);
//! - `terminal_changed`: after a task's first terminal event, an event with another state or
//!   version (equal versions included; a redrive, a higher generation after DEAD, is the one
//!   exception) or the same state and version with another result; or the MySQL row differs from
//!   the first terminal event of its generation;
//! - `events_reordered` (reported, not a failure): an event with a lower version than one before
//!   it. One task's events come from several producers (the instance that ran attempt 1, the one
//!   that ran its retry, the scheduler), so an older event can land after a newer one; consumers
//!   apply an event only if it is newer than what they hold, and every publisher re-publishes the
//!   current row after its events are acknowledged, so the topic always *ends* with the row;
//! - `last_event_mismatch`: a task's last event differs from its MySQL state and version (a lost
//!   or reordered event), after the audit waited `--settle-s` for late events;
//! - `ran_after_terminal`: an execution (ledger, or a `task_attempts` row, which also covers
//!   handlers without a ledger) that started after the task's terminal state was committed; the
//!   commit time is the Kafka timestamp of the first terminal event (stamped when the writer
//!   produced it, after the MySQL commit). A claimed attempt (its RUNNING awaited and granted
//!   before the handler started, the ledger's `claimed`) meeting a CANCELLED is judged by its
//!   claim when the claim's RUNNING event is on the topic: it was RUNNING when it was cancelled
//!   (`claimed_before_cancel`, reported);
//! - `reran_after_commit`: an execution of an attempt that started after that attempt's outcome
//!   (RETRYING, SUCCEEDED or DEAD at its version) was committed;
//! - `concurrent_runs`: two executions of one task overlapping in time (start..finish), unless the
//!   first one's processor was frozen (`--frozen`: SIGSTOP windows) between the two starts: a
//!   frozen process loses its partitions and cannot be told to stop, so its overlap is a zombie
//!   (`zombie_overlaps`, reported) whose commit the other checks judge;
//! - `order_violations`: keys whose first attempts did not start in submission order. Submission
//!   order is the Kafka offset among Kafka-accepted records of one topic, the outbox id among
//!   outbox-accepted ones, and, across both paths and both gateways, "accepted before the other
//!   was sent" (the load generator records both times). Tasks with a `run_at` are left out (they
//!   run when due), and so are tasks without ledger rows (noop) and keyed tasks one of whose
//!   submits went unanswered (refused or past the client's deadline: it may have reached Kafka
//!   ahead of the accepted one, whose position the audit would otherwise use);
//! - `idempotency_conflicts_accepted`: one (tenant, idempotency key) accepted for submits that
//!   asked for different things (business key, type, priority, payload, run_at);
//!   `idempotency_split`: one key answered with two task ids;
//! - `key_mismatch` / `tenant_mismatch`: a stored row whose business key or tenant is not what
//!   the accepted submit asked for;
//! - `foreign_cancels_applied`: a task CANCELLED although only another tenant cancelled it;
//! - with `--workflows` (the workflow load; its nodes are ids-file lines, so every check above
//!   covers them too): a node not terminal, started before a dependency finished, SUCCEEDED
//!   behind a failed `cancel` edge, CANCELLED without a cause (every dependency SUCCEEDED, or
//!   none failed behind a `cancel` edge, and no CancelWorkflow), run although a dependency
//!   cancelled it, run after its terminal commit, having read a dependency before it finished;
//!   a workflow cancelled without a CancelWorkflow; accepted workflows below `--floor` (see
//!   `workflows`).
//!
//! `duplicate_runs_before_commit` counts re-executions of an attempt before its outcome was
//! committed (at-least-once after a crash or a lost partition); they are reported, not failures.
//!
//! The modules:
//! - `history`: the [`History`] and its records;
//! - reading it: `files` (the load generator's ids, cancels and SIGSTOP files), `mysql`
//!   (rows, the execution ledger, `task_attempts`), `topic` (the events topic);
//! - judging it: `verdict` ([`judge`], the [`Verdict`] and its reasons) over the checks
//!   `events` (`terminal_changed`, `events_reordered`, `last_event_mismatch`), `executions`
//!   (`ran_after_terminal`, `reran_after_commit`, `concurrent_runs`), `order`
//!   (`order_violations`) and `submits` (idempotency, key and tenant mismatches, foreign
//!   cancels), `workflows` (the workflow checks), and `timing` (time to start, retry delays,
//!   submit latency; measured, not judged);
//! - here: the flags ([`AuditArgs`], and [`DatabaseArgs`], which `cancel` takes too) and
//!   [`audit`], which reads the history and judges it.

mod events;
mod executions;
mod files;
mod history;
mod mysql;
mod order;
mod submits;
mod timing;
mod topic;
mod verdict;
mod workflows;

use std::collections::HashSet;
use std::time::Duration;

use dispatch_core::TaskId;
use sqlx::MySqlPool;

pub use files::{
    UNANSWERED, read_cancels, read_frozen, read_ids, read_ids_while_written, read_unanswered,
    read_workflows,
};
pub use history::{
    Accepted, AttemptRec, CancelRecord, EventRec, Exec, Frozen, History, LoadSummary, NodeRec,
    StoredRow, WorkflowRec, Workflows,
};
pub use timing::Timing;
pub use verdict::{Tally, Verdict, judge};
pub use workflows::WorkflowCounts;

use mysql::{attempts, ledger, results, rows, workflow_cancels};
use topic::EventsReader;

/// `--database-url`, the MySQL URL of the dispatch database, as `audit` and `cancel` take it.
#[derive(Debug, clap::Args, Clone)]
pub struct DatabaseArgs {
    /// MySQL URL of the dispatch database.
    #[arg(
        long,
        env = "DISPATCH_DATABASE__URL",
        default_value = "mysql://dispatch:dispatch@127.0.0.1:3306/dispatch"
    )]
    pub database_url: String,
}

/// Audit flags.
#[derive(Debug, clap::Args, Clone)]
pub struct AuditArgs {
    /// Files written by `run --record-ids` (repeatable).
    #[arg(long = "ids", required = true)]
    pub ids: Vec<std::path::PathBuf>,
    /// JSON reports of the load runs (`run --json`, repeatable): offered, accepted and rejected
    /// submits for the floor.
    #[arg(long = "load")]
    pub loads: Vec<std::path::PathBuf>,
    /// Accepted submits must be at least this share of those offered (0 disables the check).
    #[arg(long, default_value_t = 0.9)]
    pub floor: f64,
    /// Files written by `run/cancel --record-cancels` (repeatable).
    #[arg(long = "cancels")]
    pub cancels: Vec<std::path::PathBuf>,
    /// Files of SIGSTOP windows (`pid \t stopped_us \t continued_us`, repeatable).
    #[arg(long = "frozen")]
    pub frozen: Vec<std::path::PathBuf>,
    /// Files written by `run --scenario workflow --record-workflows` (repeatable): the workflow
    /// checks (their nodes are in the ids files too).
    #[arg(long = "workflows")]
    pub workflows: Vec<std::path::PathBuf>,
    /// The dispatch database.
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Kafka brokers (the events checks; empty fails the audit: it cannot see events).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Events topic.
    #[arg(long, default_value = "dispatch.task-events")]
    pub events_topic: String,
    /// Wait up to this long for every task to be terminal.
    #[arg(long, default_value_t = 120.0)]
    pub wait_s: f64,
    /// Read the events topic to its end within this long, or FAIL.
    #[arg(long, default_value_t = 120.0)]
    pub events_timeout_s: f64,
    /// While a task's last event differs from MySQL, read late events for up to this long.
    #[arg(long, default_value_t = 20.0)]
    pub settle_s: f64,
    /// Write the verdict as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Runs the audit.
///
/// # Errors
/// Unreachable database or unreadable files (a failed *guarantee* is a verdict, not an error).
pub async fn audit(a: &AuditArgs) -> anyhow::Result<Verdict> {
    let accepted = read_ids(&a.ids)?;
    let mut loads = Vec::new();
    for p in &a.loads {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        loads.push(
            serde_json::from_str::<LoadSummary>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        );
    }
    let mut h = History {
        unanswered: read_unanswered(&a.ids)?,
        cancels: read_cancels(&a.cancels)?,
        frozen: read_frozen(&a.frozen)?,
        workflows: read_workflows(&a.workflows)?,
        loads,
        floor: a.floor,
        ..Default::default()
    };
    let mut ids: Vec<TaskId> = accepted.iter().map(|x| x.task_id).collect();
    ids.sort();
    ids.dedup();
    h.accepted = accepted;
    let pool = MySqlPool::connect(&a.db.database_url).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.wait_s);
    h.rows = loop {
        let stored = rows(&pool, &ids).await?;
        let done = stored.len() == ids.len() && stored.values().all(|r| r.state.is_terminal());
        if done || tokio::time::Instant::now() >= deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    h.execs = ledger(&pool, &ids).await?;
    h.attempts = attempts(&pool, &ids).await?;
    if !h.workflows.accepted.is_empty() {
        let wfs: Vec<TaskId> = h.workflows.accepted.iter().map(|w| w.id).collect();
        h.workflows.cancel_requested = workflow_cancels(&pool, &wfs).await?;
        let readers: Vec<TaskId> = h
            .workflows
            .accepted
            .iter()
            .flat_map(|w| w.nodes.iter().filter(|n| n.with_deps).map(|n| n.task_id))
            .collect();
        h.workflows.results = results(&pool, &readers).await?;
    }

    let mut reader = if a.brokers.is_empty() {
        h.events_incomplete = Some("no --brokers: the events were not read".into());
        None
    } else {
        let wanted: HashSet<TaskId> = ids.iter().copied().collect();
        let (brokers, topic) = (a.brokers.clone(), a.events_topic.clone());
        let timeout = Duration::from_secs_f64(a.events_timeout_s);
        let r = tokio::task::spawn_blocking(
            move || -> anyhow::Result<(EventsReader, Option<String>)> {
                let mut r = EventsReader::open(&brokers, &topic, wanted)?;
                let why = r.catch_up(timeout)?;
                Ok((r, why))
            },
        )
        .await??;
        h.events_incomplete = r.1;
        Some(r.0)
    };
    let take = |h: &mut History, r: &EventsReader| {
        h.events = r.events.clone();
        h.events_checked = r.checked;
    };
    if let Some(r) = &reader {
        take(&mut h, r);
    }
    let mut v = judge(&h);
    // Events are produced after their MySQL commit: a last event that differs from MySQL may
    // still be on its way. Read on (and re-read the rows) for up to settle_s.
    let settle = tokio::time::Instant::now() + Duration::from_secs_f64(a.settle_s);
    while v.last_event_mismatch > 0
        && h.events_incomplete.is_none()
        && tokio::time::Instant::now() < settle
        && let Some(r) = reader.take()
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (r, why) = tokio::task::spawn_blocking(move || {
            let mut r = r;
            let why = r.catch_up(Duration::from_secs(30));
            (r, why)
        })
        .await?;
        h.events_incomplete = why?;
        take(&mut h, &r);
        reader = Some(r);
        h.rows = rows(&pool, &ids).await?;
        v = judge(&h);
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod workflow_tests;
