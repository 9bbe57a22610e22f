//! The executions checks: `ran_after_terminal`, `reran_after_commit`, `concurrent_runs` (and
//! the reported `zombie_overlaps`, `claimed_before_cancel` and `duplicate_runs_before_commit`),
//! against the commit times the events give.
//!
//! An execution whose attempt was claimed (the ledger's `claimed`: its RUNNING was awaited and
//! not fenced out before the handler started) is judged against a cancel by its claim, not by
//! its handler's start: the fence refuses RUNNING over a terminal state, so the claim committed
//! before the cancel, and the task was RUNNING when it was cancelled. Its handler starting a few
//! milliseconds after the cancel's commit, on an instance that cannot know of it, is a running
//! task cancelled (its outcome is fenced out), reported as `claimed_before_cancel`. The excuse
//! needs the claim's RUNNING event of that generation and attempt on the topic, and holds only
//! for CANCELLED: a claimed attempt started after a SUCCEEDED or DEAD still fails.

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

/// Whether a late start of (generation, attempt) is a claimed attempt meeting a cancel of its
/// own generation whose RUNNING is on the topic (see the module doc).
fn claimed_before(
    running: &HashSet<(u32, u32)>,
    (generation, attempt): (u32, u32),
    (g, st, _): (u32, TaskState, i64),
) -> bool {
    st == TaskState::Cancelled && g == generation && running.contains(&(generation, attempt))
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

        // Ran after terminal (ledger rows, then task_attempts rows). A claimed attempt is judged
        // against a cancel by its claim; a task_attempts row has no claim of its own, so it
        // follows the ledger's claimed execution of the same attempt.
        let running: HashSet<(u32, u32)> = evs
            .iter()
            .filter(|e| e.state == TaskState::Running)
            .filter_map(|e| match decode(e.version) {
                (g, Some(a)) => Some((g, a)),
                (_, None) => None,
            })
            .collect();
        let claimed: HashSet<(u32, u32)> = execs
            .iter()
            .filter(|e| e.claimed)
            .map(|e| (e.generation, e.attempt))
            .collect();
        let mut excused = false;
        let mut late = |ga: (u32, u32), is_claimed: bool, start: i64| {
            let t = after_terminal(&c, ga.0, start)?;
            if is_claimed && claimed_before(&running, ga, t) {
                excused = true;
                return None;
            }
            Some(t)
        };
        let late_exec = execs.iter().find_map(|e| {
            let s = e.started_us?;
            late((e.generation, e.attempt), e.claimed, s).map(|t| (e, t))
        });
        let late_attempt = attempts.iter().find_map(|a| {
            let ga = (a.generation, a.attempt);
            late(ga, claimed.contains(&ga), a.started_us).map(|t| (a, t))
        });
        if excused && late_exec.is_none() && late_attempt.is_none() {
            v.claimed_before_cancel += 1;
        }
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
