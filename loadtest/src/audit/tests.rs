//! Every check of the audit, shown to bite: a sound history PASSES, and each test breaks it the
//! way the defect would (an equal-version overwrite, a lost event, a late zombie commit, ...) and
//! sees FAIL with its reason.
//!
//! Over 400 lines because it holds one test per audit check (about forty), each breaking the
//! `sound()` history built at the top; the order checks (Kafka and outbox key order) would move to
//! a file of their own first.

use std::collections::BTreeMap;

use super::files::parse_line;
use super::history::decode;
use super::timing::timing;
use super::*;
use dispatch_core::TaskState;
use dispatch_core::TaskState::{Cancelled, Dead, Retrying, Running, Succeeded};

const H1: &str = "host:100";
const H2: &str = "host:200";
const TOPIC: &str = "dispatch.tasks.default";

fn ms(x: i64) -> i64 {
    x * 1000
}

fn ev(state: TaskState, generation: u32, attempt: u32, at_ms: i64) -> EventRec {
    EventRec {
        state,
        version: state.version(generation, attempt),
        ts_us: Some(ms(at_ms)),
        result: Vec::new(),
    }
}

fn exec(
    id: u64,
    (generation, attempt): (u32, u32),
    instance: &str,
    start_us: i64,
    end_us: i64,
) -> Exec {
    Exec {
        id,
        generation,
        attempt,
        instance: instance.into(),
        started_us: Some(start_us),
        finished_us: end_us,
        outcome: "ok".into(),
        claimed: false,
    }
}

fn line(id: TaskId, key: &str, via: &str, offset: i64, sent_ms: i64, acked_ms: i64) -> Accepted {
    Accepted {
        task_id: id,
        key: key.into(),
        via: via.into(),
        topic: TOPIC.into(),
        partition: 0,
        offset,
        sent_us: ms(sent_ms),
        acked_us: ms(acked_ms),
        tenant: Some("acme".into()),
        fp: Some(format!("fp-{key}-{offset}")),
        ..Default::default()
    }
}

fn row(state: TaskState, generation: u32, attempt: u32, key: &str, at_ms: i64) -> StoredRow {
    StoredRow {
        state,
        version: state.version(generation, attempt),
        generation,
        finished_us: state.is_terminal().then_some(ms(at_ms)),
        tenant: "acme".into(),
        business_key: key.into(),
    }
}

/// The tasks of the sound history.
struct Ids {
    first: TaskId,
    second: TaskId,
    retried: TaskId,
    redriven: TaskId,
    cancelled: TaskId,
    ob1: TaskId,
    ob2: TaskId,
    idem: TaskId,
    noop: TaskId,
}

/// A sound run: two tasks of one key in order, a retried task, a task that died and was
/// redriven, a cancelled one, two outbox-accepted tasks of one key, an idempotent task submitted
/// twice, a noop task (no ledger rows); every event present and in order.
fn sound() -> (History, Ids) {
    let t = Ids {
        first: TaskId::new(),
        second: TaskId::new(),
        retried: TaskId::new(),
        redriven: TaskId::new(),
        cancelled: TaskId::new(),
        ob1: TaskId::new(),
        ob2: TaskId::new(),
        idem: TaskId::new(),
        noop: TaskId::new(),
    };
    let mut h = History {
        floor: 0.9,
        loads: vec![LoadSummary {
            items_offered: 10,
            items_accepted: 10,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut idem_lines = [
        line(t.idem, "k6", "kafka", 15, 1, 2),
        line(t.idem, "k6", "kafka", 0, 5, 6),
    ];
    for l in &mut idem_lines {
        l.idem = Some("L-1".into());
        l.fp = Some("aa".into());
    }
    idem_lines[1].topic = String::new();
    idem_lines[1].duplicate = true;
    h.accepted = vec![
        line(t.first, "k1", "kafka", 10, 1, 2),
        line(t.second, "k1", "kafka", 11, 1, 3),
        line(t.retried, "k2", "kafka", 12, 1, 2),
        line(t.redriven, "k3", "kafka", 13, 1, 2),
        line(t.cancelled, "k4", "kafka", 14, 1, 2),
        line(t.ob1, "k5", "outbox", 1, 1, 2),
        line(t.ob2, "k5", "outbox", 2, 1, 2),
        line(t.noop, "k7", "kafka", 16, 1, 2),
    ];
    h.accepted.extend(idem_lines);

    let mut add = |id: TaskId, r: StoredRow, evs: Vec<EventRec>, ex: Vec<Exec>| {
        h.rows.insert(id, r);
        h.events_checked += evs.len() as u64;
        h.events.insert(id, evs);
        if !ex.is_empty() {
            h.attempts.insert(
                id,
                ex.iter()
                    .map(|e| AttemptRec {
                        generation: e.generation,
                        attempt: e.attempt,
                        outcome: "succeeded".into(),
                        started_us: e.started_us.unwrap_or(0),
                    })
                    .collect(),
            );
            h.execs.insert(id, ex);
        }
    };
    add(
        t.first,
        row(Succeeded, 0, 1, "k1", 5),
        vec![ev(Running, 0, 1, 3), ev(Succeeded, 0, 1, 5)],
        vec![exec(1, (0, 1), H1, ms(3), ms(4))],
    );
    add(
        t.second,
        row(Succeeded, 0, 1, "k1", 8),
        // A terminal event published twice (a replay after a crash) is not a change.
        vec![
            ev(Running, 0, 1, 6),
            ev(Succeeded, 0, 1, 8),
            ev(Succeeded, 0, 1, 9),
        ],
        vec![exec(2, (0, 1), H1, ms(6), ms(7))],
    );
    add(
        t.retried,
        row(Succeeded, 0, 2, "k2", 12),
        vec![
            ev(Running, 0, 1, 3),
            ev(Retrying, 0, 1, 5),
            ev(Running, 0, 2, 10),
            ev(Succeeded, 0, 2, 12),
        ],
        vec![
            exec(3, (0, 1), H1, ms(3), ms(4)),
            exec(4, (0, 2), H2, ms(10), ms(11)),
        ],
    );
    add(
        t.redriven,
        row(Succeeded, 1, 1, "k3", 22),
        vec![
            ev(Running, 0, 1, 3),
            ev(Dead, 0, 1, 5),
            ev(Running, 1, 1, 20),
            ev(Succeeded, 1, 1, 22),
        ],
        vec![
            exec(5, (0, 1), H1, ms(3), ms(4)),
            exec(6, (1, 1), H2, ms(20), ms(21)),
        ],
    );
    add(
        t.cancelled,
        row(Cancelled, 0, 0, "k4", 3),
        vec![ev(Cancelled, 0, 0, 3)],
        vec![],
    );
    add(
        t.ob1,
        row(Succeeded, 0, 1, "k5", 32),
        vec![ev(Running, 0, 1, 30), ev(Succeeded, 0, 1, 32)],
        vec![exec(7, (0, 1), H1, ms(30), ms(31))],
    );
    add(
        t.ob2,
        row(Succeeded, 0, 1, "k5", 35),
        vec![ev(Running, 0, 1, 33), ev(Succeeded, 0, 1, 35)],
        vec![exec(8, (0, 1), H1, ms(33), ms(34))],
    );
    add(
        t.idem,
        row(Succeeded, 0, 1, "k6", 42),
        vec![ev(Running, 0, 1, 40), ev(Succeeded, 0, 1, 42)],
        vec![exec(9, (0, 1), H1, ms(40), ms(41))],
    );
    add(
        t.noop,
        row(Succeeded, 0, 1, "k7", 4),
        vec![ev(Running, 0, 1, 3), ev(Succeeded, 0, 1, 4)],
        vec![],
    );
    h.attempts.insert(
        t.noop,
        vec![AttemptRec {
            generation: 0,
            attempt: 1,
            outcome: "succeeded".into(),
            started_us: ms(3),
        }],
    );
    (h, t)
}

#[track_caller]
fn fails_with(h: &History, reason: &str) -> Verdict {
    let v = judge(h);
    assert!(!v.passed(), "expected FAIL ({reason}), got {}", v.line());
    assert!(
        v.reasons.iter().any(|r| r.contains(reason)),
        "expected a reason containing {reason:?}: {:?}",
        v.reasons
    );
    assert!(v.line().starts_with("audit FAIL ("), "{}", v.line());
    v
}

#[test]
fn a_sound_history_passes() {
    let (h, _) = sound();
    let v = judge(&h);
    assert!(v.passed(), "{}\n{:#?}", v.line(), v.examples);
    assert!(v.line().starts_with("audit PASS: "));
    assert_eq!(v.accepted, 9);
    assert_eq!(v.recorded, 10);
    assert_eq!(v.stored, 9);
    assert_eq!(v.terminal.get("succeeded"), Some(&8));
    assert_eq!(v.keys_checked, 2, "k1 (Kafka) and k5 (outbox)");
    assert_eq!(v.duplicate_runs_before_commit, 0);
}

// --- bad input ---------------------------------------------------------------------------

#[test]
fn an_empty_run_fails() {
    let h = History {
        floor: 0.9,
        loads: vec![LoadSummary::default()],
        ..Default::default()
    };
    fails_with(&h, "empty run");
    // Also with the floor off and no load report.
    fails_with(&History::default(), "empty run");
}

#[test]
fn a_run_without_a_load_report_cannot_pass_the_floor() {
    let (mut h, _) = sound();
    h.loads.clear();
    fails_with(&h, "no load report");
    h.floor = 0.0;
    assert!(judge(&h).passed());
}

// --- (5) too little work ------------------------------------------------------------------

#[test]
fn too_little_work_fails_and_names_the_rejections() {
    let (mut h, _) = sound();
    h.loads = vec![LoadSummary {
        items_offered: 100,
        items_accepted: 10,
        items_rejected_by_code: BTreeMap::from([("Unavailable".into(), 90)]),
        ..Default::default()
    }];
    let v = fails_with(&h, "too little work: 10 of 100 offered submits accepted");
    assert!(v.reasons.iter().any(|r| r.contains("Unavailable")));
    assert_eq!(v.rejected_by_code.get("Unavailable"), Some(&90));
    // At the floor it passes: 9 of 10 with a 90% floor.
    h.loads = vec![LoadSummary {
        items_offered: 11,
        items_accepted: 10,
        ..Default::default()
    }];
    assert!(judge(&h).passed(), "{}", judge(&h).line());
    // A per-scenario floor.
    h.floor = 0.95;
    fails_with(&h, "below the floor of 95%");
}

#[test]
fn older_load_reports_count_calls() {
    let l = LoadSummary {
        ok: 8,
        errors: 2,
        items_per_call: 10,
        errors_by_code: BTreeMap::from([("Unavailable".into(), 2)]),
        ..Default::default()
    };
    let (o, a, r) = l.items();
    assert_eq!((o, a), (100, 80));
    assert_eq!(r.get("Unavailable"), Some(&20));
}

#[test]
fn ids_files_that_lost_accepted_submits_fail() {
    let (mut h, _) = sound();
    h.loads[0].items_accepted = 20;
    h.loads[0].items_offered = 20;
    fails_with(
        &h,
        "the ids files hold 10 accepted submits, the load reports 20",
    );
}

// --- missing / not terminal ---------------------------------------------------------------

#[test]
fn lost_and_unfinished_tasks_fail() {
    let (mut h, t) = sound();
    h.rows.remove(&t.first);
    let v = fails_with(&h, "1 tasks missing");
    assert_eq!(v.missing, 1);
    let (mut h, t) = sound();
    h.rows.get_mut(&t.first).expect("row").state = Running;
    fails_with(&h, "1 tasks not terminal");
}

// --- (1) any change of a committed terminal state ---------------------------------------

#[test]
fn an_equal_version_overwrite_of_a_terminal_state_fails() {
    // An attempt run twice commits DEAD over SUCCEEDED at the same version (as when both shared
    // rank 5 in the version scheme).
    let (mut h, t) = sound();
    let same = Succeeded.version(0, 1);
    h.events.get_mut(&t.first).expect("events").push(EventRec {
        version: same,
        ..ev(Dead, 0, 1, 9)
    });
    *h.rows.get_mut(&t.first).expect("row") = StoredRow {
        version: same,
        ..row(Dead, 0, 1, "k1", 9)
    };
    let v = fails_with(&h, "1 tasks changed a committed terminal state");
    assert_eq!(v.terminal_changed, 1);
    assert_eq!(v.last_event_mismatch, 0, "the events agree with MySQL");
    assert!(
        v.examples.iter().any(|e| e.starts_with("terminal_changed")
            && e.contains("succeeded")
            && e.contains("dead")),
        "{:?}",
        v.examples
    );
}

#[test]
fn a_later_attempt_committed_over_a_terminal_state_fails() {
    // A zombie's DEAD of a later attempt lands over SUCCEEDED with a higher version.
    let (mut h, t) = sound();
    h.events
        .get_mut(&t.first)
        .expect("events")
        .push(ev(Dead, 0, 2, 9));
    *h.rows.get_mut(&t.first).expect("row") = row(Dead, 0, 2, "k1", 9);
    let v = fails_with(&h, "changed a committed terminal state");
    assert_eq!(v.terminal_changed, 1);
}

#[test]
fn a_terminal_state_changed_without_an_event_fails() {
    // MySQL was overwritten and no event tells: the row disagrees with the first terminal event.
    let (mut h, t) = sound();
    *h.rows.get_mut(&t.first).expect("row") = row(Dead, 0, 1, "k1", 9);
    let v = fails_with(&h, "changed a committed terminal state");
    assert_eq!(v.terminal_changed, 1);
    assert_eq!(v.last_event_mismatch, 1);
}

#[test]
fn a_result_wiped_at_the_same_state_and_version_fails() {
    let (mut h, t) = sound();
    let evs = h.events.get_mut(&t.first).expect("events");
    evs[1].result = b"answer".to_vec();
    let mut again = ev(Succeeded, 0, 1, 9);
    again.result = Vec::new();
    evs.push(again);
    fails_with(&h, "changed a committed terminal state");
}

#[test]
fn a_cancel_or_a_new_generation_after_success_fails() {
    let (mut h, t) = sound();
    h.events
        .get_mut(&t.first)
        .expect("events")
        .push(ev(Cancelled, 0, 0, 9));
    *h.rows.get_mut(&t.first).expect("row") = row(Cancelled, 0, 0, "k1", 9);
    fails_with(&h, "changed a committed terminal state");

    // Only DEAD may be redriven.
    let (mut h, t) = sound();
    h.events
        .get_mut(&t.first)
        .expect("events")
        .extend([ev(Running, 1, 1, 9), ev(Succeeded, 1, 1, 10)]);
    *h.rows.get_mut(&t.first).expect("row") = row(Succeeded, 1, 1, "k1", 10);
    fails_with(&h, "changed a committed terminal state");
}

// --- (3) the last event is the MySQL state -------------------------------------------------

#[test]
fn a_lost_last_event_fails() {
    let (mut h, t) = sound();
    let evs = h.events.get_mut(&t.retried).expect("events");
    evs.pop();
    let v = fails_with(&h, "1 tasks whose last event differs from MySQL");
    assert_eq!(v.last_event_mismatch, 1);
    // No event at all.
    let (mut h, t) = sound();
    h.events.remove(&t.cancelled);
    fails_with(&h, "last event differs from MySQL");
}

#[test]
fn a_reordered_event_that_ends_the_topic_fails() {
    // An older RETRYING lands after the newer SUCCEEDED, and nothing re-published the row.
    let (mut h, t) = sound();
    let evs = h.events.get_mut(&t.retried).expect("events");
    let retrying = evs.remove(1);
    evs.push(retrying);
    let v = fails_with(&h, "1 tasks whose last event differs from MySQL");
    assert_eq!(v.events_reordered, 1);
    assert_eq!(v.last_event_mismatch, 1);
    assert_eq!(
        v.terminal_changed, 0,
        "an older event does not change the state"
    );
}

#[test]
fn a_reordered_event_followed_by_the_current_row_passes() {
    // Another producer's older RETRYING lands after SUCCEEDED, then its publisher re-publishes
    // the row: reported, not a failure.
    let (mut h, t) = sound();
    let evs = h.events.get_mut(&t.retried).expect("events");
    let retrying = evs.remove(1);
    let last = evs.last().cloned().expect("last");
    evs.push(retrying);
    evs.push(last);
    let v = judge(&h);
    assert!(v.passed(), "{}", v.line());
    assert_eq!(v.events_reordered, 1);
}

// --- (4) a truncated events read ------------------------------------------------------------

#[test]
fn a_truncated_events_read_fails_with_its_reason() {
    let (mut h, _) = sound();
    h.events_incomplete =
        Some("dispatch.task-events after 120 s: partition 3 read to offset 10 of 99".into());
    let v = fails_with(&h, "events topic not read to its end");
    assert!(
        v.reasons
            .iter()
            .any(|r| r.contains("partition 3 read to offset 10 of 99"))
    );
    assert!(!v.events_complete);
    assert!(v.line().contains("INCOMPLETE"));
}

// --- (6) re-runs after a commit, executions after a terminal state --------------------------

#[test]
fn an_attempt_re_run_after_its_outcome_was_committed_fails() {
    // Attempt 1 committed RETRYING at 5 ms; another processor runs attempt 1 again at 7 ms.
    let (mut h, t) = sound();
    h.execs
        .get_mut(&t.retried)
        .expect("execs")
        .push(exec(20, (0, 1), H2, ms(7), ms(8)));
    let v = fails_with(
        &h,
        "1 tasks with an attempt re-run after its outcome was committed",
    );
    assert_eq!(v.reran_after_commit, 1);
    assert_eq!(v.duplicate_runs_before_commit, 1);
}

#[test]
fn a_re_run_before_the_commit_is_allowed() {
    // The same attempt run again before its outcome was committed (a crash replay): reported.
    let (mut h, t) = sound();
    h.execs
        .get_mut(&t.retried)
        .expect("execs")
        .push(exec(20, (0, 1), H2, 4_500, 4_900));
    let v = judge(&h);
    assert!(v.passed(), "{}", v.line());
    assert_eq!(v.duplicate_runs_before_commit, 1);
}

#[test]
fn an_execution_after_a_terminal_commit_fails() {
    // SUCCEEDED committed at 5 ms; an attempt starts at 9 ms.
    let (mut h, t) = sound();
    h.execs
        .get_mut(&t.first)
        .expect("execs")
        .push(exec(20, (0, 2), H2, ms(9), ms(10)));
    let v = fails_with(&h, "1 tasks executed after their terminal commit");
    assert_eq!(v.ran_after_terminal, 1);
}

#[test]
fn a_handler_started_after_a_committed_cancel_fails() {
    let (mut h, t) = sound();
    h.execs
        .insert(t.cancelled, vec![exec(20, (0, 1), H2, ms(5), ms(6))]);
    fails_with(&h, "executed after their terminal commit");
}

/// The cancel-storm schedule: a retry (attempt 2) claimed on instance B, a cancel committed by
/// instance A over that claim at 3 ms, B's handler starting at 5 ms. The claim's RUNNING is on
/// the topic (after the cancel's event: B published it late).
fn cancelled_over_a_claim(h: &mut History, t: &Ids, claimed: bool) {
    h.events.insert(
        t.cancelled,
        vec![
            ev(Running, 0, 1, 1),
            ev(Retrying, 0, 1, 2),
            ev(Cancelled, 0, 0, 3),
            ev(Running, 0, 2, 4),
            ev(Cancelled, 0, 0, 6),
        ],
    );
    let mut retry = exec(21, (0, 2), H2, ms(5), ms(6));
    retry.claimed = claimed;
    h.execs
        .insert(t.cancelled, vec![exec(20, (0, 1), H1, 1_500, 1_800), retry]);
    h.attempts.insert(
        t.cancelled,
        vec![AttemptRec {
            generation: 0,
            attempt: 2,
            outcome: "ok".into(),
            started_us: ms(5),
        }],
    );
}

#[test]
fn a_claimed_attempt_started_after_a_cancel_over_its_claim_is_reported() {
    let (mut h, t) = sound();
    cancelled_over_a_claim(&mut h, &t, true);
    let v = judge(&h);
    assert!(v.passed(), "{}", v.line());
    assert_eq!((v.ran_after_terminal, v.claimed_before_cancel), (0, 1));
    assert!(v.line().contains("claimed_before_cancel=1"), "{}", v.line());
}

#[test]
fn an_unclaimed_attempt_started_after_a_cancel_fails() {
    let (mut h, t) = sound();
    cancelled_over_a_claim(&mut h, &t, false);
    let v = fails_with(&h, "1 tasks executed after their terminal commit");
    assert_eq!(v.claimed_before_cancel, 0);
}

#[test]
fn a_claim_without_its_running_event_is_not_believed() {
    // The ledger says claimed, but no RUNNING of attempt 2 reached the topic.
    let (mut h, t) = sound();
    cancelled_over_a_claim(&mut h, &t, true);
    h.events
        .get_mut(&t.cancelled)
        .expect("events")
        .retain(|e| !(e.state == Running && decode(e.version) == (0, Some(2))));
    fails_with(&h, "1 tasks executed after their terminal commit");
}

#[test]
fn a_claimed_attempt_started_after_a_success_fails() {
    // SUCCEEDED (5 ms) is never excused: attempt 2 claimed, started at 9 ms.
    let (mut h, t) = sound();
    let mut e = exec(20, (0, 2), H2, ms(9), ms(10));
    e.claimed = true;
    h.execs.get_mut(&t.first).expect("execs").push(e);
    h.events
        .get_mut(&t.first)
        .expect("events")
        .push(ev(Running, 0, 2, 8));
    fails_with(&h, "1 tasks executed after their terminal commit");
}

#[test]
fn a_task_attempt_after_a_cancel_follows_the_ledgers_claim() {
    // The same schedule with the ledger's rows of another attempt only: the task_attempts row
    // of attempt 2 has no claimed execution to follow.
    let (mut h, t) = sound();
    cancelled_over_a_claim(&mut h, &t, true);
    h.execs.get_mut(&t.cancelled).expect("execs").truncate(1);
    let v = fails_with(&h, "1 tasks executed after their terminal commit");
    assert!(
        v.examples.iter().any(|e| e.contains("task_attempts")),
        "{:?}",
        v.examples
    );
}

#[test]
fn a_task_attempt_after_the_terminal_commit_fails_without_a_ledger() {
    // A noop task (no ledger) whose attempt row says it started after SUCCEEDED.
    let (mut h, t) = sound();
    h.attempts.get_mut(&t.noop).expect("attempts")[0].started_us = ms(9);
    let v = fails_with(&h, "executed after their terminal commit");
    assert!(
        v.examples.iter().any(|e| e.contains("task_attempts")),
        "{:?}",
        v.examples
    );
}

#[test]
fn a_redrive_after_dead_may_run_but_an_old_generation_may_not() {
    let (mut h, t) = sound();
    // Generation 0 again after its DEAD (5 ms) and the redrive: not allowed.
    h.execs
        .get_mut(&t.redriven)
        .expect("execs")
        .push(exec(20, (0, 2), H1, ms(8), ms(9)));
    fails_with(&h, "executed after their terminal commit");
}

#[test]
fn without_a_terminal_event_the_rows_finished_at_is_the_commit() {
    let (mut h, t) = sound();
    h.events.remove(&t.noop);
    h.attempts.get_mut(&t.noop).expect("attempts")[0].started_us = ms(9);
    let v = judge(&h);
    assert_eq!(v.ran_after_terminal, 1, "{}", v.line());
}

// --- (7) two instances at once ---------------------------------------------------------------

#[test]
fn a_task_run_by_two_instances_at_once_fails() {
    // The partition moved while the handler ran (6..7 ms on host:100); the new owner started at
    // 6.5 ms.
    let (mut h, t) = sound();
    h.execs
        .get_mut(&t.second)
        .expect("execs")
        .push(exec(20, (0, 1), H2, 6_500, 7_500));
    let v = fails_with(&h, "1 tasks run by two executions at once");
    assert_eq!(v.concurrent_runs, 1);
    assert!(
        v.examples
            .iter()
            .any(|e| e.contains("host:100") && e.contains("host:200")),
        "{:?}",
        v.examples
    );
}

#[test]
fn an_overlap_from_a_frozen_processor_is_a_zombie_not_a_failure() {
    let (mut h, t) = sound();
    h.execs
        .get_mut(&t.second)
        .expect("execs")
        .push(exec(20, (0, 1), H2, 6_500, 7_500));
    // host:100 (pid 100) was stopped from 6.1 to 6.9 ms: it lost the partition while frozen.
    h.frozen = vec![Frozen {
        pid: 100,
        from_us: 6_100,
        to_us: 6_900,
    }];
    let v = judge(&h);
    assert!(v.passed(), "{}", v.line());
    assert_eq!((v.concurrent_runs, v.zombie_overlaps), (0, 1));
    // A freeze of another process does not excuse it.
    h.frozen[0].pid = 300;
    fails_with(&h, "run by two executions at once");
}

// --- (2) order, on both paths and across them ------------------------------------------------

#[test]
fn kafka_records_out_of_order_fail() {
    let (mut h, t) = sound();
    h.execs.get_mut(&t.second).expect("execs")[0] = exec(2, (0, 1), H1, 2_500, 2_900);
    let v = fails_with(&h, "1 keys out of submission order");
    assert_eq!(v.order_violations, 1);
    assert!(v.examples.iter().any(|e| e.contains("kafka offset")));
}

#[test]
fn another_tenants_task_on_the_same_key_has_its_own_order() {
    let (mut h, t) = sound();
    h.execs.get_mut(&t.second).expect("execs")[0] = exec(2, (0, 1), H1, 2_500, 2_900);
    fails_with(&h, "1 keys out of submission order");
    let other = h
        .accepted
        .iter_mut()
        .find(|a| a.task_id == t.second)
        .expect("line");
    other.tenant = Some("globex".into());
    h.rows.get_mut(&t.second).expect("row").tenant = "globex".into();
    assert!(judge(&h).passed(), "{}", judge(&h).line());
}

#[test]
fn outbox_records_out_of_order_fail() {
    let (mut h, t) = sound();
    h.execs.get_mut(&t.ob2).expect("execs")[0] = exec(8, (0, 1), H1, ms(29), 29_500);
    let v = fails_with(&h, "1 keys out of submission order");
    assert!(
        v.examples.iter().any(|e| e.contains("outbox id")),
        "{:?}",
        v.examples
    );
}

#[test]
fn a_kafka_submit_overtaking_an_earlier_outbox_submit_fails() {
    // ob1 went to the outbox and was answered at 2 ms; x was sent at 3 ms (Kafka back, or the
    // other gateway) and ran first.
    let (mut h, _) = sound();
    let x = TaskId::new();
    h.accepted.push(line(x, "k5", "kafka", 20, 3, 4));
    h.rows.insert(x, row(Succeeded, 0, 1, "k5", 27));
    h.events
        .insert(x, vec![ev(Running, 0, 1, 25), ev(Succeeded, 0, 1, 27)]);
    h.execs
        .insert(x, vec![exec(30, (0, 1), H1, ms(25), ms(26))]);
    let v = fails_with(&h, "1 keys out of submission order");
    assert!(
        v.examples.iter().any(|e| e.contains("was accepted at")),
        "{:?}",
        v.examples
    );
    // A scheduled task runs when due, not in submission order.
    h.accepted.last_mut().expect("line").scheduled = true;
    assert!(judge(&h).passed(), "{}", judge(&h).line());
}

#[test]
fn a_keyed_task_with_an_unanswered_submit_has_no_known_place_in_its_key_order() {
    // x's accepted submit is at a later offset than it ran at: an earlier submit of the same
    // idempotency key went unanswered (past the client's deadline) but reached Kafka first.
    let (mut h, t) = sound();
    h.execs.get_mut(&t.ob2).expect("execs")[0] = exec(8, (0, 1), H1, ms(29), 29_500);
    fails_with(&h, "1 keys out of submission order");
    h.unanswered.insert(t.ob2);
    assert!(judge(&h).passed(), "{}", judge(&h).line());
}

#[test]
fn unanswered_lines_are_read_apart_from_accepted_ones() {
    let dir = std::env::temp_dir().join(format!("audit-unanswered-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("ids");
    let (a, b) = (TaskId::new(), TaskId::new());
    std::fs::write(
        &f,
        format!(
            "{a}\tk1\tkafka\tdispatch.tasks.default\t0\t5\n{UNANSWERED}\t{b}\tDeadlineExceeded\t7\n"
        ),
    )
    .expect("write");
    let accepted = read_ids(std::slice::from_ref(&f)).expect("ids");
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].task_id, a);
    let unanswered = read_unanswered(std::slice::from_ref(&f)).expect("unanswered");
    assert_eq!(unanswered, HashSet::from([b]));
    let _ = std::fs::remove_dir_all(&dir);
}

// --- idempotency, keys, tenants ----------------------------------------------------------

#[test]
fn an_idempotency_key_accepted_for_a_different_request_fails() {
    let (mut h, t) = sound();
    let mut other = line(t.idem, "k6", "kafka", 0, 7, 8);
    other.idem = Some("L-1".into());
    other.fp = Some("bb".into());
    h.accepted.push(other);
    let v = fails_with(&h, "1 idempotency keys accepted for different requests");
    assert_eq!(v.idempotency_conflicts_accepted, 1);
}

#[test]
fn an_idempotency_key_with_two_task_ids_fails() {
    let (mut h, _) = sound();
    let y = TaskId::new();
    let mut other = line(y, "k6", "kafka", 30, 7, 8);
    other.idem = Some("L-1".into());
    other.fp = Some("aa".into());
    h.accepted.push(other);
    h.rows.insert(y, row(Succeeded, 0, 1, "k6", 50));
    h.events
        .insert(y, vec![ev(Running, 0, 1, 49), ev(Succeeded, 0, 1, 50)]);
    fails_with(&h, "1 idempotency keys with several task ids");
}

#[test]
fn a_row_with_another_key_or_tenant_fails() {
    let (mut h, t) = sound();
    h.rows.get_mut(&t.first).expect("row").business_key = "other".into();
    fails_with(
        &h,
        "1 tasks stored with another business key than submitted",
    );
    let (mut h, t) = sound();
    h.rows.get_mut(&t.first).expect("row").tenant = "globex".into();
    fails_with(&h, "1 tasks stored with another tenant than submitted");
}

#[test]
fn a_cross_tenant_cancel_that_applied_fails() {
    let (mut h, t) = sound();
    h.cancels = vec![CancelRecord {
        task_id: t.cancelled,
        foreign: true,
        outcome: "accepted".into(),
    }];
    fails_with(&h, "1 tasks cancelled by another tenant");
    // Its owner cancelled it too: fine.
    h.cancels.push(CancelRecord {
        task_id: t.cancelled,
        foreign: false,
        outcome: "accepted".into(),
    });
    assert!(judge(&h).passed());
}

// --- files ---------------------------------------------------------------------------------

#[test]
fn ids_lines_parse_in_both_formats() {
    let id = TaskId::new();
    let old = parse_line(&format!(
        "{id}\tkey-1\tkafka\tdispatch.tasks.default\t3\t42"
    ))
    .expect("old");
    assert_eq!((old.partition, old.offset, old.sent_us), (3, 42, 0));
    let new = parse_line(&format!(
        "{id}\tkey-1\toutbox\tdispatch.tasks.default\t0\t7\t100\t200\tfp=00ff,tenant=acme,idem=L-3,run_at,dup,prio=1"
    ))
    .expect("new");
    assert_eq!((new.sent_us, new.acked_us), (100, 200));
    assert_eq!(new.tenant.as_deref(), Some("acme"));
    assert_eq!(new.idem.as_deref(), Some("L-3"));
    assert_eq!(new.fp.as_deref(), Some("00ff"));
    assert!(new.scheduled && new.duplicate);
    assert!(parse_line("nope\tx").is_err());
    assert!(parse_line(&format!("{id}\tk\tkafka\tt\tx\t1")).is_err());
}

#[test]
fn versions_decode_to_generation_and_attempt() {
    assert_eq!(decode(Succeeded.version(2, 7)), (2, Some(7)));
    assert_eq!(decode(Cancelled.version(3, 0)), (3, None));
}

#[test]
fn a_file_still_being_written_is_read_up_to_its_partial_line() {
    let dir = std::env::temp_dir().join(format!("audit-ids-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("run.ids");
    let id = TaskId::new();
    std::fs::write(
        &p,
        format!("{id}\tkey-1\tkafka\tt\t0\t1\t10\t20\tfp=aa\n{id}\tkey-1\tkaf"),
    )
    .expect("write");
    let paths = vec![p];
    assert!(
        read_ids(&paths).is_err(),
        "the audit refuses a malformed file"
    );
    assert_eq!(read_ids_while_written(&paths).expect("lenient").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timing_measures_time_to_start_and_retry_delays_per_load() {
    let (a, b) = (TaskId::new(), TaskId::new());
    let mut la = line(a, "k1", "kafka", 1, 100, 101);
    la.source = "fast".into();
    let mut lb = line(b, "k2", "kafka", 2, 100, 101);
    lb.source = "slow".into();
    let mut h = History {
        accepted: vec![la, lb],
        ..Default::default()
    };
    // a: started 5 ms after it was sent; b: 50 ms after, failed, retried 200 ms after its end.
    h.execs
        .insert(a, vec![exec(1, (0, 1), H1, ms(105), ms(110))]);
    h.execs.insert(
        b,
        vec![
            exec(2, (0, 1), H1, ms(150), ms(160)),
            exec(3, (0, 2), H1, ms(360), ms(370)),
        ],
    );
    let t = timing(&h);
    assert_eq!(t["fast"].started, 1);
    assert_eq!(t["fast"].start_p99_ms, 5.0);
    assert_eq!(t["fast"].retries, 0);
    assert_eq!(t["slow"].start_p50_ms, 50.0);
    assert_eq!(t["slow"].retries, 1);
    assert_eq!(t["slow"].retry_max_ms, 200.0);
}

#[test]
fn timing_measures_submit_latency_by_the_path_that_made_it_durable() {
    let ids: Vec<TaskId> = (0..4).map(|_| TaskId::new()).collect();
    let mut lines = vec![
        line(ids[0], "k1", "kafka", 1, 100, 102),
        line(ids[1], "k2", "kafka", 2, 100, 104),
        line(ids[2], "k3", "outbox", 3, 100, 900),
        line(ids[3], "k4", "outbox", 4, 100, 1_300),
    ];
    for l in &mut lines {
        l.source = "load".into();
    }
    // A duplicate answer is not a second submit of its task.
    let mut dup = line(ids[0], "k1", "kafka", 1, 100, 5_000);
    dup.source = "load".into();
    dup.duplicate = true;
    lines.push(dup);
    let h = History {
        accepted: lines,
        ..Default::default()
    };
    let t = &timing(&h)["load"];
    assert_eq!(t.submits_kafka, 2);
    assert_eq!(t.submit_kafka_p50_ms, 2.0);
    assert_eq!(t.submit_kafka_p99_ms, 4.0);
    assert_eq!(t.submits_outbox, 2);
    assert_eq!(t.submit_outbox_p50_ms, 800.0);
    assert_eq!(t.submit_outbox_p99_ms, 1_200.0);
    assert_eq!(t.submit_outbox_max_ms, 1_200.0);
}
