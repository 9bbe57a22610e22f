//! [`judge`]: a [`History`] in, a [`Verdict`] out (the checks are in the sibling modules), with a
//! few examples per failed check.

use std::collections::{BTreeMap, HashMap, HashSet};

use dispatch_core::TaskId;
use serde::Serialize;

use super::events::check_events;
use super::executions::check_executions;
use super::history::History;
use super::order::check_order;
use super::submits::check_submits;
use super::timing::{Timing, timing};
use super::workflows::{WorkflowCounts, check_workflows};

/// Examples kept per check.
const EXAMPLES_PER_CHECK: usize = 3;

/// Counts per label (a gRPC code, a state, a workflow shape), in label order: a JSON object in
/// the verdict.
pub type Tally = BTreeMap<String, u64>;

/// The outcome.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// Distinct accepted ids.
    pub accepted: u64,
    /// Accepted submits recorded in the ids files (resubmits included).
    pub recorded: u64,
    /// Submits offered (load reports).
    pub offered: u64,
    /// Submits accepted (load reports).
    pub accepted_submits: u64,
    /// Submits refused, by gRPC code (load reports).
    pub rejected_by_code: Tally,
    /// Rows found.
    pub stored: u64,
    /// Terminal rows by state.
    pub terminal: Tally,
    /// Lost.
    pub missing: u64,
    /// Still live after the wait.
    pub not_terminal: u64,
    /// Tasks with an execution that started after their terminal commit.
    pub ran_after_terminal: u64,
    /// Tasks with an attempt executed again after its outcome was committed.
    pub reran_after_commit: u64,
    /// Tasks run twice at once by live processors.
    pub concurrent_runs: u64,
    /// Tasks run twice at once because a frozen processor resumed (reported, allowed).
    pub zombie_overlaps: u64,
    /// Tasks whose claimed attempt's handler started after a cancel committed over the claim
    /// (reported, allowed: the task was RUNNING when it was cancelled).
    pub claimed_before_cancel: u64,
    /// Extra executions before a commit (allowed).
    pub duplicate_runs_before_commit: u64,
    /// Tasks whose committed terminal state changed.
    pub terminal_changed: u64,
    /// Tasks with an event older than one before it.
    pub events_reordered: u64,
    /// Tasks whose last event is not their MySQL state and version.
    pub last_event_mismatch: u64,
    /// Events read for the audited tasks.
    pub events_checked: u64,
    /// The events topic was read to its end.
    pub events_complete: bool,
    /// Keys with first attempts out of submission order.
    pub order_violations: u64,
    /// Keys whose order was checked.
    pub keys_checked: u64,
    /// Idempotency keys accepted for submits that asked for different things.
    pub idempotency_conflicts_accepted: u64,
    /// Idempotency keys answered with more than one task id.
    pub idempotency_split: u64,
    /// Tasks stored with another business key than submitted.
    pub key_mismatch: u64,
    /// Tasks stored with another tenant than submitted.
    pub tenant_mismatch: u64,
    /// Tasks CANCELLED by another tenant's cancel alone.
    pub foreign_cancels_applied: u64,
    /// The workflow checks' counts (`--workflows`; None without).
    pub workflows: Option<WorkflowCounts>,
    /// Why the verdict is FAIL (empty: PASS).
    pub reasons: Vec<String>,
    /// A few failing tasks per check, with their evidence.
    pub examples: Vec<String>,
    /// Per ids file (its name without `.ids`): time to start and retry delays, measured, not
    /// judged (fault scenarios bound them).
    pub timing: BTreeMap<String, Timing>,
}

impl Verdict {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The one-line verdict.
    pub fn line(&self) -> String {
        let head = if self.passed() {
            "audit PASS".to_owned()
        } else {
            format!("audit FAIL ({})", self.reasons.join("; "))
        };
        let workflows = self
            .workflows
            .as_ref()
            .map(|w| format!("; {}", w.line()))
            .unwrap_or_default();
        format!(
            "{head}: accepted={} recorded={} offered={} accepted_submits={} rejected={:?} stored={} terminal={:?} missing={} not_terminal={} terminal_changed={} events_reordered={} last_event_mismatch={} (events {}{}) ran_after_terminal={} reran_after_commit={} concurrent_runs={} zombie_overlaps={} claimed_before_cancel={} duplicate_runs_before_commit={} order_violations={} (keys {}) idempotency_conflicts_accepted={} idempotency_split={} key_mismatch={} tenant_mismatch={} foreign_cancels_applied={}{workflows}",
            self.accepted,
            self.recorded,
            self.offered,
            self.accepted_submits,
            self.rejected_by_code,
            self.stored,
            self.terminal,
            self.missing,
            self.not_terminal,
            self.terminal_changed,
            self.events_reordered,
            self.last_event_mismatch,
            self.events_checked,
            if self.events_complete {
                ""
            } else {
                ", INCOMPLETE"
            },
            self.ran_after_terminal,
            self.reran_after_commit,
            self.concurrent_runs,
            self.zombie_overlaps,
            self.claimed_before_cancel,
            self.duplicate_runs_before_commit,
            self.order_violations,
            self.keys_checked,
            self.idempotency_conflicts_accepted,
            self.idempotency_split,
            self.key_mismatch,
            self.tenant_mismatch,
            self.foreign_cancels_applied,
        )
    }
}

pub(super) struct Examples<'a> {
    out: &'a mut Vec<String>,
    per: HashMap<&'static str, usize>,
}

impl Examples<'_> {
    pub(super) fn add(&mut self, check: &'static str, text: impl FnOnce() -> String) {
        let n = self.per.entry(check).or_default();
        if *n < EXAMPLES_PER_CHECK {
            *n += 1;
            self.out.push(format!("{check}: {}", text()));
        }
    }
}

/// The reason of each count above 0, in order: `"{n} {what}"`.
pub(super) fn counted<'a>(
    counts: impl IntoIterator<Item = (u64, &'a str)>,
) -> impl Iterator<Item = String> {
    counts
        .into_iter()
        .filter(|&(n, _)| n > 0)
        .map(|(n, what)| format!("{n} {what}"))
}

/// Judges a history.
pub fn judge(h: &History) -> Verdict {
    let mut v = Verdict::default();
    let mut examples = Vec::new();
    let mut ex = Examples {
        out: &mut examples,
        per: HashMap::new(),
    };
    let ids: HashSet<TaskId> = h.accepted.iter().map(|a| a.task_id).collect();
    v.accepted = ids.len() as u64;
    v.recorded = h.accepted.len() as u64;
    for l in &h.loads {
        let (o, a, r) = l.items();
        v.offered += o;
        v.accepted_submits += a;
        for (k, n) in r {
            *v.rejected_by_code.entry(k).or_default() += n;
        }
    }
    v.stored = ids.iter().filter(|id| h.rows.contains_key(id)).count() as u64;
    v.missing = v.accepted - v.stored;
    for id in &ids {
        if let Some(r) = h.rows.get(id) {
            if r.state.is_terminal() {
                *v.terminal.entry(r.state.as_str().to_owned()).or_default() += 1;
            } else {
                v.not_terminal += 1;
            }
        }
    }
    for id in ids.iter().filter(|id| !h.rows.contains_key(id)) {
        ex.add("missing", || id.to_string());
    }
    v.events_checked = h.events_checked;
    v.events_complete = h.events_incomplete.is_none();

    // (Rows, ledger rows and events are read for the accepted ids only.)
    check_events(h, &mut v, &mut ex);
    check_executions(h, &mut v, &mut ex);
    check_order(h, &mut v, &mut ex);
    check_submits(h, &mut v, &mut ex);

    let mut r = Vec::new();
    if v.accepted == 0 {
        r.push("empty run: no accepted task to audit".to_owned());
    }
    if h.floor > 0.0 {
        if h.loads.is_empty() {
            r.push("no load report (--load): the floor of accepted work was not checked".into());
        } else if (v.accepted_submits as f64) < h.floor * v.offered as f64 {
            r.push(format!(
                "too little work: {} of {} offered submits accepted, below the floor of {:.0}% (rejected {:?})",
                v.accepted_submits,
                v.offered,
                h.floor * 100.0,
                v.rejected_by_code
            ));
        }
    }
    if !h.loads.is_empty() && v.recorded < v.accepted_submits {
        r.push(format!(
            "the ids files hold {} accepted submits, the load reports {}",
            v.recorded, v.accepted_submits
        ));
    }
    if let Some(why) = &h.events_incomplete {
        r.push(format!("events topic not read to its end: {why}"));
    }
    // The counted failures, grouped as the checks count them: what became of the tasks (rows,
    // events), how they ran (executions, order), what their submits got (submits).
    let outcomes = [
        (v.missing, "tasks missing"),
        (v.not_terminal, "tasks not terminal"),
        (
            v.terminal_changed,
            "tasks changed a committed terminal state",
        ),
        (
            v.last_event_mismatch,
            "tasks whose last event differs from MySQL",
        ),
    ];
    let executions = [
        (
            v.ran_after_terminal,
            "tasks executed after their terminal commit",
        ),
        (
            v.reran_after_commit,
            "tasks with an attempt re-run after its outcome was committed",
        ),
        (v.concurrent_runs, "tasks run by two executions at once"),
        (v.order_violations, "keys out of submission order"),
    ];
    let submits = [
        (
            v.idempotency_conflicts_accepted,
            "idempotency keys accepted for different requests",
        ),
        (
            v.idempotency_split,
            "idempotency keys with several task ids",
        ),
        (
            v.key_mismatch,
            "tasks stored with another business key than submitted",
        ),
        (
            v.tenant_mismatch,
            "tasks stored with another tenant than submitted",
        ),
        (
            v.foreign_cancels_applied,
            "tasks cancelled by another tenant",
        ),
    ];
    let counts = outcomes.into_iter().chain(executions).chain(submits);
    r.extend(counted(counts));
    v.reasons = r;
    // After the task checks' reasons: the workflow checks add theirs.
    check_workflows(h, &mut v, &mut ex);
    v.examples = examples;
    v.timing = timing(h);
    v
}
