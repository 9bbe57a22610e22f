//! The executions checks: `ran_after_terminal`, `reran_after_commit`, `concurrent_runs` (and
//! the reported `zombie_overlaps` and `duplicate_runs_before_commit`), against the commit times the
//! events give.

use std::collections::{HashMap, HashSet};

use dispatch_core::{TaskId, TaskState};

use super::history::{EventRec, Exec, History, StoredRow, decode};
use super::verdict::{Examples, Verdict};

/// Kafka timestamps have millisecond resolution: an execution counts as started after an event
/// only when it started at least this long after the event's timestamp.
const TS_SLACK_US: i64 = 1_000;

/// When each (generation, attempt) outcome and each generation's terminal state was first
/// committed, from the events' timestamps.
struct Commits {
    outcomes: HashMap<(u32, u32), i64>,
    /// (generation, state, committed at), first terminal event per generation.
    terminals: Vec<(u32, TaskState, i64)>,
}

fn commits(evs: &[EventRec], row: Option<&StoredRow>) -> Commits {
    let mut outcomes = HashMap::new();
    let mut terminals: Vec<(u32, TaskState, i64)> = Vec::new();
    for e in evs {
        let Some(ts) = e.ts_us else { continue };
        let (g, a) = decode(e.version);
        if matches!(
            e.state,
            TaskState::Retrying | TaskState::Succeeded | TaskState::Dead
        ) && let Some(a) = a
        {
            outcomes.entry((g, a)).or_insert(ts);
        }
        if e.state.is_terminal() && !terminals.iter().any(|t| t.0 == g) {
            terminals.push((g, e.state, ts));
        }
    }
    // No terminal event (lost): the row's finished_at, which the writer sets just before its
    // commit (the missing event fails the audit on its own).
    if terminals.is_empty()
        && let Some(r) = row
        && r.state.is_terminal()
        && let Some(f) = r.finished_us
    {
        terminals.push((r.generation, r.state, f));
    }
    Commits {
        outcomes,
        terminals,
    }
}

/// Whether an execution of `generation` starting at `start_us` started after a committed
/// terminal state that it may not follow (a redrive of DEAD in a later generation may).
fn after_terminal(c: &Commits, generation: u32, start_us: i64) -> Option<(u32, TaskState, i64)> {
    c.terminals.iter().copied().find(|&(g, st, ts)| {
        start_us > ts + TS_SLACK_US && (generation <= g || st != TaskState::Dead)
    })
}

pub(super) fn check_executions(h: &History, v: &mut Verdict, ex: &mut Examples<'_>) {
    let no_events: Vec<EventRec> = Vec::new();
    let ids: HashSet<&TaskId> = h.execs.keys().chain(h.attempts.keys()).collect();
    for id in ids {
        let execs = h.execs.get(id).map(Vec::as_slice).unwrap_or_default();
        let attempts = h.attempts.get(id).map(Vec::as_slice).unwrap_or_default();
        let evs = h.events.get(id).unwrap_or(&no_events);
        let c = commits(evs, h.rows.get(id));

        let mut per_attempt: HashMap<(u32, u32), u64> = HashMap::new();
        for e in execs {
            *per_attempt.entry((e.generation, e.attempt)).or_default() += 1;
        }
        v.duplicate_runs_before_commit += per_attempt.values().map(|n| n - 1).sum::<u64>();

        // Ran after terminal (ledger rows, then task_attempts rows).
        let late_exec = execs.iter().find_map(|e| {
            let s = e.started_us?;
            after_terminal(&c, e.generation, s).map(|t| (e, t))
        });
        let late_attempt = attempts
            .iter()
            .find_map(|a| after_terminal(&c, a.generation, a.started_us).map(|t| (a, t)));
        if late_exec.is_some() || late_attempt.is_some() {
            v.ran_after_terminal += 1;
            ex.add("ran_after_terminal", || match (late_exec, late_attempt) {
                (Some((e, t)), _) => format!(
                    "{id}: {} committed at {} us (generation {}); execution of generation {} attempt {} on {} started at {} us",
                    t.1, t.2, t.0, e.generation, e.attempt, e.instance, e.started_us.unwrap_or(0)
                ),
                (None, Some((a, t))) => format!(
                    "{id}: {} committed at {} us (generation {}); attempt {} of generation {} ({}) started at {} us (task_attempts)",
                    t.1, t.2, t.0, a.attempt, a.generation, a.outcome, a.started_us
                ),
                (None, None) => String::new(),
            });
        }

        // Re-run after its own outcome was committed.
        if let Some(e) = execs.iter().find(|e| {
            e.started_us.is_some_and(|s| {
                c.outcomes
                    .get(&(e.generation, e.attempt))
                    .is_some_and(|&ts| s > ts + TS_SLACK_US)
            })
        }) {
            v.reran_after_commit += 1;
            ex.add("reran_after_commit", || {
                format!(
                    "{id}: attempt {} of generation {} committed at {} us, run again on {} at {} us",
                    e.attempt,
                    e.generation,
                    c.outcomes[&(e.generation, e.attempt)],
                    e.instance,
                    e.started_us.unwrap_or(0)
                )
            });
        }

        // Two at once.
        let mut timed: Vec<&Exec> = execs.iter().filter(|e| e.started_us.is_some()).collect();
        timed.sort_by_key(|e| e.start());
        let mut concurrent: Option<(&Exec, &Exec)> = None;
        let mut zombie = false;
        for (i, a) in timed.iter().enumerate() {
            let a_start = a.start().0;
            for b in &timed[i + 1..] {
                let b_start = b.start().0;
                if b_start >= a.finished_us {
                    continue;
                }
                let frozen = a.pid().is_some_and(|pid| {
                    h.frozen
                        .iter()
                        .any(|f| f.pid == pid && f.from_us < b_start && f.to_us > a_start)
                });
                if frozen {
                    zombie = true;
                } else if concurrent.is_none() {
                    concurrent = Some((a, b));
                }
            }
        }
        if let Some((a, b)) = concurrent {
            v.concurrent_runs += 1;
            ex.add("concurrent_runs", || {
                format!(
                    "{id}: generation {} attempt {} on {} ran {}..{} us; generation {} attempt {} on {} started at {} us",
                    a.generation,
                    a.attempt,
                    a.instance,
                    a.start().0,
                    a.finished_us,
                    b.generation,
                    b.attempt,
                    b.instance,
                    b.start().0
                )
            });
        } else if zombie {
            v.zombie_overlaps += 1;
        }
    }
}
