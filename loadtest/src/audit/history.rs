//! The [`History`] the audit judges, and its records: accepted submits, load reports, cancels,
//! SIGSTOP windows (from the load generator's files), MySQL rows, ledger rows, `task_attempts`
//! rows and events.

use std::collections::{BTreeMap, HashMap, HashSet};

use dispatch_core::{TaskId, TaskState};
use serde::Deserialize;

/// One accepted submit, as recorded by the load generator (one line of an ids file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// Task id.
    pub task_id: TaskId,
    /// Business key.
    pub key: String,
    /// `kafka` or `outbox`.
    pub via: String,
    /// Topic (the target topic for outbox; empty when the answer had no coordinates).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset (outbox id for outbox).
    pub offset: i64,
    /// When the submit was sent (µs since the epoch; 0 unknown).
    pub sent_us: i64,
    /// When it was answered.
    pub acked_us: i64,
    /// Tenant of the submitting key, when the generator knew it.
    pub tenant: Option<String>,
    /// Idempotency key.
    pub idem: Option<String>,
    /// Fingerprint of what was asked for.
    pub fp: Option<String>,
    /// Had a `run_at`.
    pub scheduled: bool,
    /// Answered as a duplicate.
    pub duplicate: bool,
    /// The ids file it came from (its name without `.ids`), for the per-load timing.
    pub source: String,
}

/// What a load run reported (`run --json`); fields of older reports default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoadSummary {
    /// Label.
    pub label: String,
    /// Successful calls (measured window).
    pub ok: u64,
    /// Failed calls (measured window).
    pub errors: u64,
    /// Items per call.
    pub items_per_call: usize,
    /// Failed calls by code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Tasks offered (whole run).
    pub items_offered: u64,
    /// Tasks accepted (whole run).
    pub items_accepted: u64,
    /// Tasks refused by code (whole run).
    pub items_rejected_by_code: BTreeMap<String, u64>,
}

impl LoadSummary {
    /// (offered, accepted, rejected by code), from the item counts or, in older reports, calls.
    pub(super) fn items(&self) -> (u64, u64, BTreeMap<String, u64>) {
        if self.items_offered > 0 {
            return (
                self.items_offered,
                self.items_accepted,
                self.items_rejected_by_code.clone(),
            );
        }
        let n = self.items_per_call.max(1) as u64;
        (
            (self.ok + self.errors) * n,
            self.ok * n,
            self.errors_by_code
                .iter()
                .map(|(k, v)| (k.clone(), v * n))
                .collect(),
        )
    }
}

/// One cancel sent by the load generator.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelRecord {
    /// The id cancelled.
    pub task_id: TaskId,
    /// Sent by a tenant that does not own the task (a cross-tenant cancel).
    pub foreign: bool,
    /// `accepted`, `finished` or a gRPC code.
    pub outcome: String,
}

/// A window in which a processor process was stopped (SIGSTOP .. SIGCONT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frozen {
    /// Its pid.
    pub pid: u32,
    /// Stopped at (µs since the epoch).
    pub from_us: i64,
    /// Continued at.
    pub to_us: i64,
}

/// A task's row in MySQL.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// State.
    pub state: TaskState,
    /// Version.
    pub version: u64,
    /// Generation.
    pub generation: u32,
    /// `finished_at` (µs since the epoch).
    pub finished_us: Option<i64>,
    /// Tenant.
    pub tenant: String,
    /// Business key.
    pub business_key: String,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    /// Row id (grows in insert order).
    pub id: u64,
    /// Generation.
    pub generation: u32,
    /// Attempt.
    pub attempt: u32,
    /// `<host>:<pid>` ('' before the ledger recorded it).
    pub instance: String,
    /// Start (None before the ledger recorded it).
    pub started_us: Option<i64>,
    /// Finish (`executed_at`).
    pub finished_us: i64,
    /// ok, failed, cancelled, panic ('' before the ledger recorded it).
    pub outcome: String,
    /// Its attempt's RUNNING was committed before the handler started.
    pub claimed: bool,
}

impl Exec {
    pub(super) fn start(&self) -> (i64, u64) {
        (self.started_us.unwrap_or(self.finished_us), self.id)
    }
    pub(super) fn pid(&self) -> Option<u32> {
        self.instance
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
    }
}

/// One `task_attempts` row.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRec {
    /// Generation.
    pub generation: u32,
    /// Attempt.
    pub attempt: u32,
    /// Outcome.
    pub outcome: String,
    /// Handler start (of the last run that wrote the row).
    pub started_us: i64,
}

/// One event of a task, in topic order.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRec {
    /// State.
    pub state: TaskState,
    /// Version.
    pub version: u64,
    /// Kafka timestamp in µs (ms resolution), if the record had one.
    pub ts_us: Option<i64>,
    /// The snapshot's result.
    pub result: Vec<u8>,
}

/// One node of an accepted workflow (`--record-workflows`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRec {
    /// Its task.
    pub task_id: TaskId,
    /// Its name.
    pub name: String,
    /// Its plan puts its dependencies into its result.
    pub with_deps: bool,
    /// Its plan fails permanently.
    pub fails: bool,
    /// `(dependency, runs when it fails)`: `false` is a `cancel` edge.
    pub deps: Vec<(TaskId, bool)>,
}

/// One accepted workflow and the CancelWorkflow calls sent for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowRec {
    /// Its id.
    pub id: TaskId,
    /// `chain`, `fanout` or `diamond`.
    pub shape: String,
    /// Nodes, in the submitted order.
    pub nodes: Vec<NodeRec>,
    /// CancelWorkflow calls: (outcome, sent at µs).
    pub cancels: Vec<(String, i64)>,
}

/// The workflow load's records, and what MySQL holds of them beyond the tasks' rows.
#[derive(Debug, Clone, Default)]
pub struct Workflows {
    /// Accepted workflows.
    pub accepted: Vec<WorkflowRec>,
    /// Refused (or unanswered) SubmitWorkflow calls, by code.
    pub refused: BTreeMap<String, u64>,
    /// `workflows.cancel_requested_at` (µs) of the accepted workflows that have one.
    pub cancel_requested: HashMap<TaskId, i64>,
    /// Results of the nodes that put their dependencies into theirs.
    pub results: HashMap<TaskId, Vec<u8>>,
}

/// Everything the audit judges.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every accepted submit (ids-file lines).
    pub accepted: Vec<Accepted>,
    /// Tasks of keyed submits that were also sent without an OK answer
    /// ([`UNANSWERED`](super::UNANSWERED)): such a submit may have been made durable before the
    /// accepted one, so the task's place in its key's order is unknown and the order check leaves
    /// it out.
    pub unanswered: HashSet<TaskId>,
    /// Load reports.
    pub loads: Vec<LoadSummary>,
    /// The floor (share of offered submits that must be accepted; 0 disables).
    pub floor: f64,
    /// Cancels sent.
    pub cancels: Vec<CancelRecord>,
    /// SIGSTOP windows.
    pub frozen: Vec<Frozen>,
    /// Rows by task.
    pub rows: HashMap<TaskId, StoredRow>,
    /// Ledger rows by task, in id order.
    pub execs: HashMap<TaskId, Vec<Exec>>,
    /// `task_attempts` rows by task.
    pub attempts: HashMap<TaskId, Vec<AttemptRec>>,
    /// Events by task, in topic order.
    pub events: HashMap<TaskId, Vec<EventRec>>,
    /// None when the events topic was read to its end; else why not.
    pub events_incomplete: Option<String>,
    /// Events of audited tasks read.
    pub events_checked: u64,
    /// The workflow load (empty without `--workflows`).
    pub workflows: Workflows,
}

/// (generation, attempt) of a version; attempt None for CANCELLED.
pub(super) fn decode(version: u64) -> (u32, Option<u32>) {
    let generation = (version >> 32) as u32;
    let low = version & 0xFFFF_FFFF;
    if low == 0xFFFF_FFFF {
        (generation, None)
    } else {
        (generation, Some((low >> 3) as u32))
    }
}
