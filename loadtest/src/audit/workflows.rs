//! The workflow checks (`--workflows`): the nodes of every accepted workflow against their
//! dependencies, from the tasks' rows (state, `finished_at`), the execution ledger, the events
//! (the terminal commit), `workflows.cancel_requested_at` and the results of the nodes that read
//! their dependencies. Failures, counted per node:
//! - `not_terminal`: a node without a row, or not SUCCEEDED/DEAD/CANCELLED after the wait;
//! - `started_before_dependency`: an execution that started before a dependency's `finished_at`
//!   (or while a dependency had none: it had not finished);
//! - `succeeded_after_failed_dependency`: a SUCCEEDED node with a `cancel`-edge dependency that
//!   did not succeed;
//! - `cancelled_although_dependencies_succeeded`: CANCELLED, every dependency SUCCEEDED (a root:
//!   none), and its workflow was not cancelled;
//! - `cancelled_without_cause`: CANCELLED, its workflow not cancelled, some dependency failed
//!   but none behind a `cancel` edge;
//! - `ran_although_cancelled_by_dependency`: CANCELLED behind a failed `cancel` edge (its
//!   workflow not cancelled), yet it has an execution: such a node is never released;
//! - `ran_after_terminal`: an execution that started after the node's terminal commit (the
//!   first terminal event's timestamp, else `finished_at`);
//! - `read_unfinished_dependency`: a SUCCEEDED node that put its dependencies into its result
//!   and read one in a state other than its final one (not finished, or a dependency missing
//!   from what it read);
//! - `cancel_without_request`: a workflow with `cancel_requested_at` whose client never sent
//!   CancelWorkflow;
//! - the floor: accepted workflows below `--floor` of those offered (accepted + refused).
//!
//! Reported, not failures: `ran_after_workflow_cancel`, executions of nodes of a cancelled
//! workflow that started after the cancel was requested (a node released by one advancer while
//! another carries the cancel out runs until its CANCEL reaches it).
//!
//! Over 400 lines because it is one check per rule above, each with its counted reason, kept in
//! one place so the list and the checks stay together; its tests are in `workflow_tests.rs`.

use std::collections::HashMap;

use dispatch_core::{TaskId, TaskState};
use serde::Serialize;

use super::history::{Exec, History, NodeRec};
use super::verdict::{Examples, Tally, Verdict, counted};

/// Kafka timestamps have millisecond resolution (as in the executions checks).
const TS_SLACK_US: i64 = 1_000;

/// The workflow checks' counts.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct WorkflowCounts {
    /// SubmitWorkflow calls offered (accepted + refused).
    pub offered: u64,
    /// Workflows accepted.
    pub accepted: u64,
    /// Refused submits by code.
    pub refused: Tally,
    /// Workflows by shape.
    pub shapes: Tally,
    /// Nodes of the accepted workflows.
    pub nodes: u64,
    /// Nodes by final state.
    pub states: Tally,
    /// Edges, and those of them that run their node when the dependency fails.
    pub edges: u64,
    /// `run` edges.
    pub run_edges: u64,
    /// Workflows the client sent CancelWorkflow for, and those with `cancel_requested_at`.
    pub cancel_calls: u64,
    /// Workflows with `cancel_requested_at`.
    pub cancelled_workflows: u64,
    /// Nodes whose result (dependencies read) was checked.
    pub results_checked: u64,
    /// Nodes that ran (ledger rows).
    pub ran: u64,
    /// Failures, per node (see the module doc).
    pub not_terminal: u64,
    /// Per node.
    pub started_before_dependency: u64,
    /// Per node.
    pub succeeded_after_failed_dependency: u64,
    /// Per node.
    pub cancelled_although_dependencies_succeeded: u64,
    /// Per node.
    pub cancelled_without_cause: u64,
    /// Per node.
    pub ran_although_cancelled_by_dependency: u64,
    /// Per node.
    pub ran_after_terminal: u64,
    /// Per node.
    pub read_unfinished_dependency: u64,
    /// Per workflow.
    pub cancel_without_request: u64,
    /// Reported: nodes of cancelled workflows with an execution that started after the request.
    pub ran_after_workflow_cancel: u64,
}

impl WorkflowCounts {
    /// The counts as the verdict line shows them.
    pub fn line(&self) -> String {
        format!(
            "workflows: offered={} accepted={} refused={:?} shapes={:?} nodes={} states={:?} edges={} (run {}) cancel_calls={} cancelled_workflows={} ran={} results_checked={} not_terminal={} started_before_dependency={} succeeded_after_failed_dependency={} cancelled_although_dependencies_succeeded={} cancelled_without_cause={} ran_although_cancelled_by_dependency={} ran_after_terminal={} read_unfinished_dependency={} cancel_without_request={} ran_after_workflow_cancel={}",
            self.offered,
            self.accepted,
            self.refused,
            self.shapes,
            self.nodes,
            self.states,
            self.edges,
            self.run_edges,
            self.cancel_calls,
            self.cancelled_workflows,
            self.ran,
            self.results_checked,
            self.not_terminal,
            self.started_before_dependency,
            self.succeeded_after_failed_dependency,
            self.cancelled_although_dependencies_succeeded,
            self.cancelled_without_cause,
            self.ran_although_cancelled_by_dependency,
            self.ran_after_terminal,
            self.read_unfinished_dependency,
            self.cancel_without_request,
            self.ran_after_workflow_cancel,
        )
    }

    /// Why the checks failed (empty: they held), `floor` as the audit's `--floor`.
    pub fn reasons(&self, floor: f64) -> Vec<String> {
        let mut r = Vec::new();
        if self.accepted == 0 {
            r.push("workflow load: no accepted workflow to audit".to_owned());
        } else if floor > 0.0 && (self.accepted as f64) < floor * self.offered as f64 {
            r.push(format!(
                "too few workflows: {} of {} offered accepted, below the floor of {:.0}% (refused {:?})",
                self.accepted,
                self.offered,
                floor * 100.0,
                self.refused
            ));
        }
        let counts = [
            (self.not_terminal, "workflow nodes not terminal"),
            (
                self.started_before_dependency,
                "workflow nodes started before a dependency finished",
            ),
            (
                self.succeeded_after_failed_dependency,
                "workflow nodes SUCCEEDED behind a failed cancel edge",
            ),
            (
                self.cancelled_although_dependencies_succeeded,
                "workflow nodes CANCELLED although every dependency SUCCEEDED",
            ),
            (
                self.cancelled_without_cause,
                "workflow nodes CANCELLED without a failed cancel edge or CancelWorkflow",
            ),
            (
                self.ran_although_cancelled_by_dependency,
                "workflow nodes cancelled by a dependency that ran",
            ),
            (
                self.ran_after_terminal,
                "workflow nodes executed after their terminal commit",
            ),
            (
                self.read_unfinished_dependency,
                "workflow nodes that read a dependency before it finished",
            ),
            (
                self.cancel_without_request,
                "workflows cancelled without a CancelWorkflow",
            ),
        ];
        r.extend(counted(counts));
        r
    }
}

/// The start of an execution (µs).
fn start(e: &Exec) -> i64 {
    e.start().0
}

/// When the node's terminal state was committed: its first terminal event, else `finished_at`.
fn terminal_commit(h: &History, id: &TaskId) -> Option<i64> {
    h.events
        .get(id)
        .and_then(|evs| {
            evs.iter()
                .find(|e| e.state.is_terminal())
                .and_then(|e| e.ts_us)
        })
        .or_else(|| h.rows.get(id).and_then(|r| r.finished_us))
}

/// What a node's result says it read: `(dependency task id, state)`; None when the result is
/// not a JSON object with a `dependencies` list.
fn read_dependencies(result: &[u8]) -> Option<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_slice(result).ok()?;
    v.get("dependencies")?
        .as_array()?
        .iter()
        .map(|d| {
            Some((
                d.get("task_id")?.as_str()?.to_owned(),
                d.get("state")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

pub(super) fn check_workflows(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
    let w = &h.workflows;
    if w.accepted.is_empty() && w.refused.is_empty() {
        return;
    }
    let mut c = WorkflowCounts {
        accepted: w.accepted.len() as u64,
        refused: w.refused.clone(),
        ..Default::default()
    };
    c.offered = c.accepted + w.refused.values().sum::<u64>();
    let none: Vec<Exec> = Vec::new();
    let state = |id: &TaskId| h.rows.get(id).map(|r| r.state);
    for wf in &w.accepted {
        *c.shapes.entry(wf.shape.clone()).or_default() += 1;
        let requested = w.cancel_requested.get(&wf.id).copied();
        c.cancel_calls += u64::from(!wf.cancels.is_empty());
        c.cancelled_workflows += u64::from(requested.is_some());
        if requested.is_some() && wf.cancels.is_empty() {
            c.cancel_without_request += 1;
            ex.add("workflow cancel_without_request", || {
                format!(
                    "workflow {}: cancel_requested_at set, no CancelWorkflow sent",
                    wf.id
                )
            });
        }
        for n in &wf.nodes {
            c.nodes += 1;
            c.edges += n.deps.len() as u64;
            c.run_edges += n.deps.iter().filter(|d| d.1).count() as u64;
            let execs = h.execs.get(&n.task_id).unwrap_or(&none);
            c.ran += u64::from(!execs.is_empty());
            let Some(st) = state(&n.task_id).filter(|s| s.is_terminal()) else {
                c.not_terminal += 1;
                ex.add("workflow not_terminal", || {
                    format!(
                        "{} ({} of workflow {}): {:?}",
                        n.task_id,
                        n.name,
                        wf.id,
                        state(&n.task_id)
                    )
                });
                continue;
            };
            *c.states.entry(st.as_str().to_owned()).or_default() += 1;
            judge_node(h, &mut c, ex, (wf.id, requested), n, st, execs);
        }
    }
    v.reasons.extend(c.reasons(h.floor));
    v.workflows = Some(c);
}

/// The checks of one terminal node in state `st` of workflow `wf` (cancel requested at).
fn judge_node(
    h: &History,
    c: &mut WorkflowCounts,
    ex: &mut Examples<'_>,
    (wf, requested): (TaskId, Option<i64>),
    n: &NodeRec,
    st: TaskState,
    execs: &[Exec],
) {
    let dep_state = |id: &TaskId| h.rows.get(id).map(|r| r.state);
    let describe = |id: &TaskId| {
        let r = h.rows.get(id);
        format!(
            "{id} {:?} finished_us {:?}",
            r.map(|r| r.state),
            r.and_then(|r| r.finished_us)
        )
    };
    // Started before a dependency finished.
    let early = execs.iter().find_map(|e| {
        n.deps.iter().find_map(|(d, _)| {
            let finished = h
                .rows
                .get(d)
                .filter(|r| r.state.is_terminal())
                .and_then(|r| r.finished_us);
            match finished {
                Some(f) if start(e) >= f => None,
                _ => Some((e, d)),
            }
        })
    });
    if let Some((e, d)) = early {
        c.started_before_dependency += 1;
        ex.add("workflow started_before_dependency", || {
            format!(
                "{} ({} of workflow {wf}) started at {} on {}, dependency {}",
                n.task_id,
                n.name,
                start(e),
                e.instance,
                describe(d)
            )
        });
    }
    let failed = |s: Option<TaskState>| matches!(s, Some(TaskState::Dead | TaskState::Cancelled));
    let cancel_edge_failed = n.deps.iter().find(|(d, run)| !run && failed(dep_state(d)));
    match st {
        TaskState::Succeeded => {
            if let Some((d, _)) = n
                .deps
                .iter()
                .find(|(d, run)| !run && dep_state(d) != Some(TaskState::Succeeded))
            {
                c.succeeded_after_failed_dependency += 1;
                ex.add("workflow succeeded_after_failed_dependency", || {
                    format!(
                        "{} ({} of workflow {wf}) SUCCEEDED, cancel-edge dependency {}",
                        n.task_id,
                        n.name,
                        describe(d)
                    )
                });
            }
        }
        TaskState::Cancelled if requested.is_none() => match cancel_edge_failed {
            Some((d, _)) => {
                if let Some(e) = execs.first() {
                    c.ran_although_cancelled_by_dependency += 1;
                    ex.add("workflow ran_although_cancelled_by_dependency", || {
                        format!(
                            "{} ({} of workflow {wf}) CANCELLED behind {}, ran at {} on {}",
                            n.task_id,
                            n.name,
                            describe(d),
                            start(e),
                            e.instance
                        )
                    });
                }
            }
            None if n
                .deps
                .iter()
                .all(|(d, _)| dep_state(d) == Some(TaskState::Succeeded)) =>
            {
                c.cancelled_although_dependencies_succeeded += 1;
                ex.add("workflow cancelled_although_dependencies_succeeded", || {
                    format!(
                        "{} ({} of workflow {wf}) CANCELLED, {} dependencies all SUCCEEDED, workflow not cancelled",
                        n.task_id,
                        n.name,
                        n.deps.len()
                    )
                });
            }
            None => {
                c.cancelled_without_cause += 1;
                ex.add("workflow cancelled_without_cause", || {
                    format!(
                        "{} ({} of workflow {wf}) CANCELLED, no failed cancel edge, workflow not cancelled",
                        n.task_id, n.name
                    )
                });
            }
        },
        _ => {}
    }
    if let Some(at) = requested
        && execs.iter().any(|e| start(e) > at)
    {
        c.ran_after_workflow_cancel += 1;
    }
    // Ran after the terminal commit.
    if let Some(commit) = terminal_commit(h, &n.task_id)
        && let Some(e) = execs.iter().find(|e| start(e) > commit + TS_SLACK_US)
    {
        c.ran_after_terminal += 1;
        ex.add("workflow ran_after_terminal", || {
            format!(
                "{} ({} of workflow {wf}) {st:?} committed at {commit}, execution started at {} on {}",
                n.task_id,
                n.name,
                start(e),
                e.instance
            )
        });
    }
    // What it read of its dependencies is their final state.
    if n.with_deps && st == TaskState::Succeeded {
        c.results_checked += 1;
        let read = h
            .workflows
            .results
            .get(&n.task_id)
            .and_then(|r| read_dependencies(r));
        let read: HashMap<String, String> = read.unwrap_or_default().into_iter().collect();
        let wrong = n.deps.iter().find(|(d, _)| {
            let final_state = dep_state(d).map(TaskState::as_str);
            read.get(&d.to_string()).map(String::as_str) != final_state
        });
        if let Some((d, _)) = wrong {
            c.read_unfinished_dependency += 1;
            ex.add("workflow read_unfinished_dependency", || {
                format!(
                    "{} ({} of workflow {wf}) read {:?} of dependency {}",
                    n.task_id,
                    n.name,
                    read.get(&d.to_string()),
                    describe(d)
                )
            });
        }
    }
}
