//! The workflow checks, each shown to bite: a sound history of three workflows (a diamond that
//! succeeds, a failure cascading down `cancel` edges beside a `run` edge, a workflow its client
//! cancelled) PASSES, and each test breaks it the way a defect would (a node released before
//! every dependency finished, a cancel without a cause, ...) and sees FAIL with its reason.
//!
//! Over 400 lines because each of the workflow audit's checks has its breaking case here, next
//! to the one passing run they all start from.

use super::files::read_workflows;
use super::*;
use dispatch_core::TaskState;
use dispatch_core::TaskState::{Cancelled, Dead, Running, Succeeded, Waiting};

fn ms(x: i64) -> i64 {
    x * 1000
}

/// The nodes of the sound history.
struct Nodes {
    /// Workflow 1, a diamond: a; b (a, cancel); c (a, run); d (b, cancel; c, cancel), which
    /// reads its dependencies.
    w1: TaskId,
    a: TaskId,
    b: TaskId,
    c: TaskId,
    d: TaskId,
    /// Workflow 2: x fails; y (x, cancel) is cancelled; z (x, run) runs; q (y, cancel) is
    /// cancelled.
    w2: TaskId,
    x: TaskId,
    y: TaskId,
    z: TaskId,
    q: TaskId,
    /// Workflow 3, cancelled by its client at 50 ms: r ran, s (r, cancel) was cancelled.
    w3: TaskId,
    r: TaskId,
    s: TaskId,
}

fn node(task_id: TaskId, name: &str, deps: &[(TaskId, bool)]) -> NodeRec {
    NodeRec {
        task_id,
        name: name.into(),
        with_deps: false,
        fails: false,
        deps: deps.to_vec(),
    }
}

/// Stores a node's row (finished at `end_ms` if terminal), its terminal event and, when it ran,
/// one execution `start_ms .. end_ms`.
fn put(h: &mut History, id: TaskId, state: TaskState, ran: Option<(i64, i64)>, end_ms: i64) {
    let attempt = u32::from(ran.is_some());
    let version = if state == Cancelled {
        state.version(0, 0)
    } else {
        state.version(0, attempt)
    };
    h.rows.insert(
        id,
        StoredRow {
            state,
            version,
            generation: 0,
            finished_us: state.is_terminal().then_some(ms(end_ms)),
            tenant: "acme".into(),
            business_key: format!("k-{id}"),
        },
    );
    let mut evs = Vec::new();
    if let Some((start, _)) = ran {
        evs.push(EventRec {
            state: Running,
            version: Running.version(0, 1),
            ts_us: Some(ms(start)),
            result: Vec::new(),
        });
    }
    evs.push(EventRec {
        state,
        version,
        ts_us: Some(ms(end_ms)),
        result: Vec::new(),
    });
    h.events_checked += evs.len() as u64;
    h.events.insert(id, evs);
    if let Some((start, end)) = ran {
        h.execs.insert(
            id,
            vec![Exec {
                id: h.execs.len() as u64 + 1,
                generation: 0,
                attempt: 1,
                instance: "host:100".into(),
                started_us: Some(ms(start)),
                finished_us: ms(end),
                outcome: if state == Dead { "failed" } else { "ok" }.into(),
                claimed: false,
            }],
        );
    }
}

fn result_reading(deps: &[(TaskId, &str)]) -> Vec<u8> {
    let deps: Vec<serde_json::Value> = deps
        .iter()
        .map(|(id, st)| serde_json::json!({"name": "n", "task_id": id.to_string(), "state": st, "result": null}))
        .collect();
    serde_json::json!({"instance": "host:100", "started_at": "x", "dependencies": deps})
        .to_string()
        .into_bytes()
}

fn sound() -> (History, Nodes) {
    let n = Nodes {
        w1: TaskId::new(),
        a: TaskId::new(),
        b: TaskId::new(),
        c: TaskId::new(),
        d: TaskId::new(),
        w2: TaskId::new(),
        x: TaskId::new(),
        y: TaskId::new(),
        z: TaskId::new(),
        q: TaskId::new(),
        w3: TaskId::new(),
        r: TaskId::new(),
        s: TaskId::new(),
    };
    let mut h = History {
        floor: 0.9,
        loads: vec![LoadSummary {
            items_offered: 3,
            items_accepted: 3,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut d = node(n.d, "d", &[(n.b, false), (n.c, false)]);
    d.with_deps = true;
    let mut x = node(n.x, "x", &[]);
    x.fails = true;
    h.workflows.accepted = vec![
        WorkflowRec {
            id: n.w1,
            shape: "diamond".into(),
            nodes: vec![
                node(n.a, "a", &[]),
                node(n.b, "b", &[(n.a, false)]),
                node(n.c, "c", &[(n.a, true)]),
                d,
            ],
            cancels: Vec::new(),
        },
        WorkflowRec {
            id: n.w2,
            shape: "chain".into(),
            nodes: vec![
                x,
                node(n.y, "y", &[(n.x, false)]),
                node(n.z, "z", &[(n.x, true)]),
                node(n.q, "q", &[(n.y, false)]),
            ],
            cancels: Vec::new(),
        },
        WorkflowRec {
            id: n.w3,
            shape: "chain".into(),
            nodes: vec![node(n.r, "r", &[]), node(n.s, "s", &[(n.r, false)])],
            cancels: vec![("accepted".into(), ms(49))],
        },
    ];
    for w in &h.workflows.accepted {
        for nd in &w.nodes {
            h.accepted.push(Accepted {
                task_id: nd.task_id,
                key: format!("k-{}", nd.task_id),
                via: "workflow".into(),
                partition: -1,
                offset: -1,
                sent_us: ms(1),
                acked_us: ms(2),
                tenant: Some("acme".into()),
                ..Default::default()
            });
        }
    }
    put(&mut h, n.a, Succeeded, Some((10, 100)), 100);
    put(&mut h, n.b, Succeeded, Some((110, 250)), 250);
    put(&mut h, n.c, Succeeded, Some((120, 260)), 260);
    put(&mut h, n.d, Succeeded, Some((270, 400)), 400);
    h.workflows.results.insert(
        n.d,
        result_reading(&[(n.b, "succeeded"), (n.c, "succeeded")]),
    );
    put(&mut h, n.x, Dead, Some((10, 100)), 100);
    put(&mut h, n.y, Cancelled, None, 150);
    put(&mut h, n.z, Succeeded, Some((160, 200)), 200);
    put(&mut h, n.q, Cancelled, None, 170);
    put(&mut h, n.r, Succeeded, Some((10, 100)), 100);
    put(&mut h, n.s, Cancelled, None, 120);
    h.workflows.cancel_requested.insert(n.w3, ms(50));
    (h, n)
}

fn counts(h: &History) -> (Verdict, WorkflowCounts) {
    let v = judge(h);
    let c = v.workflows.clone().expect("workflow counts");
    (v, c)
}

/// Judges `h` and expects a FAIL naming `reason`.
fn fails_with(h: &History, reason: &str) -> WorkflowCounts {
    let (v, c) = counts(h);
    assert!(
        v.reasons.iter().any(|r| r.contains(reason)),
        "expected {reason:?} in {:?}",
        v.reasons
    );
    assert!(v.line().starts_with("audit FAIL"));
    c
}

#[test]
fn a_sound_workflow_history_passes() {
    let (h, _) = sound();
    let (v, c) = counts(&h);
    assert!(v.passed(), "{:?} {:?}", v.reasons, v.examples);
    assert_eq!((c.offered, c.accepted, c.nodes), (3, 3, 10));
    assert_eq!(c.edges, 8);
    assert_eq!(c.run_edges, 2);
    assert_eq!(c.states.get("succeeded"), Some(&6));
    assert_eq!(c.states.get("cancelled"), Some(&3));
    assert_eq!(c.states.get("dead"), Some(&1));
    assert_eq!((c.cancel_calls, c.cancelled_workflows), (1, 1));
    assert_eq!((c.ran, c.results_checked), (7, 1));
    assert_eq!(c.ran_after_workflow_cancel, 0);
    assert!(v.line().contains("; workflows: offered=3 accepted=3"));
}

#[test]
fn a_run_without_workflows_prints_no_workflow_counts() {
    let (mut h, _) = sound();
    h.workflows = Workflows::default();
    let v = judge(&h);
    assert!(v.workflows.is_none());
    assert!(!v.line().contains("workflows:"));
}

#[test]
fn a_node_left_waiting_fails() {
    let (mut h, n) = sound();
    h.rows.get_mut(&n.d).expect("d").state = Waiting;
    h.execs.remove(&n.d);
    let c = fails_with(&h, "1 workflow nodes not terminal");
    assert_eq!(c.not_terminal, 1);
    // A node without a row is not terminal either.
    h.rows.remove(&n.q);
    assert_eq!(
        fails_with(&h, "2 workflow nodes not terminal").not_terminal,
        2
    );
}

#[test]
fn a_node_released_when_any_dependency_finished_fails() {
    // fault-release-early: d started once b finished (250 ms), before c (260 ms).
    let (mut h, n) = sound();
    h.execs.get_mut(&n.d).expect("d")[0].started_us = Some(ms(255));
    let c = fails_with(&h, "1 workflow nodes started before a dependency finished");
    assert_eq!(c.started_before_dependency, 1);
    // ... or while the dependency had not finished at all.
    let (mut h, n) = sound();
    h.rows.get_mut(&n.c).expect("c").finished_us = None;
    assert_eq!(
        fails_with(&h, "started before a dependency finished").started_before_dependency,
        1
    );
}

#[test]
fn a_node_that_succeeded_behind_a_failed_cancel_edge_fails() {
    // fault-release-early with c failing: d ran and SUCCEEDED although c, a cancel edge, died.
    let (mut h, n) = sound();
    h.rows.get_mut(&n.c).expect("c").state = Dead;
    h.workflows
        .results
        .insert(n.d, result_reading(&[(n.b, "succeeded"), (n.c, "dead")]));
    let c = fails_with(&h, "1 workflow nodes SUCCEEDED behind a failed cancel edge");
    assert_eq!(c.succeeded_after_failed_dependency, 1);
    // Behind a run edge it may: z ran after x died.
    assert_eq!(h.rows[&n.x].state, Dead);
}

#[test]
fn a_node_cancelled_although_its_dependencies_succeeded_fails() {
    let (mut h, n) = sound();
    h.rows.get_mut(&n.b).expect("b").state = Cancelled;
    let c = fails_with(
        &h,
        "1 workflow nodes CANCELLED although every dependency SUCCEEDED",
    );
    assert_eq!(c.cancelled_although_dependencies_succeeded, 1);
    // A root cancelled without a CancelWorkflow: none of its (no) dependencies failed.
    let (mut h, n) = sound();
    h.rows.get_mut(&n.a).expect("a").state = Cancelled;
    assert!(
        fails_with(&h, "CANCELLED although every dependency SUCCEEDED")
            .cancelled_although_dependencies_succeeded
            >= 1
    );
    // In a cancelled workflow it may be.
    let (mut h, n) = sound();
    put(&mut h, n.r, Cancelled, None, 60);
    h.execs.remove(&n.r);
    let v = judge(&h);
    assert!(v.passed(), "{:?}", v.reasons);
}

#[test]
fn a_node_cancelled_behind_a_failed_run_edge_only_fails() {
    // z waits for x through a run edge: x's death must not cancel it.
    let (mut h, n) = sound();
    h.rows.get_mut(&n.z).expect("z").state = Cancelled;
    h.execs.remove(&n.z);
    let c = fails_with(
        &h,
        "1 workflow nodes CANCELLED without a failed cancel edge or CancelWorkflow",
    );
    assert_eq!(c.cancelled_without_cause, 1);
}

#[test]
fn a_node_cancelled_by_its_dependency_that_ran_fails() {
    let (mut h, n) = sound();
    h.execs.insert(
        n.y,
        vec![Exec {
            id: 99,
            generation: 0,
            attempt: 1,
            instance: "host:200".into(),
            started_us: Some(ms(120)),
            finished_us: ms(140),
            outcome: "cancelled".into(),
            claimed: false,
        }],
    );
    let c = fails_with(&h, "1 workflow nodes cancelled by a dependency that ran");
    assert_eq!(c.ran_although_cancelled_by_dependency, 1);
}

#[test]
fn a_node_run_after_its_terminal_commit_fails() {
    let (mut h, n) = sound();
    h.execs.get_mut(&n.a).expect("a").push(Exec {
        id: 98,
        generation: 0,
        attempt: 1,
        instance: "host:200".into(),
        started_us: Some(ms(500)),
        finished_us: ms(510),
        outcome: "ok".into(),
        claimed: false,
    });
    let c = fails_with(&h, "1 workflow nodes executed after their terminal commit");
    assert_eq!(c.ran_after_terminal, 1);
    // Without events the row's finished_at is the commit.
    h.events.remove(&n.a);
    assert_eq!(
        fails_with(&h, "executed after their terminal commit").ran_after_terminal,
        1
    );
}

#[test]
fn a_node_that_read_an_unfinished_dependency_fails() {
    let (mut h, n) = sound();
    h.workflows
        .results
        .insert(n.d, result_reading(&[(n.b, "succeeded"), (n.c, "running")]));
    let c = fails_with(
        &h,
        "1 workflow nodes that read a dependency before it finished",
    );
    assert_eq!(c.read_unfinished_dependency, 1);
    // A dependency missing from what it read, or no readable result at all.
    h.workflows
        .results
        .insert(n.d, result_reading(&[(n.b, "succeeded")]));
    assert_eq!(
        fails_with(&h, "read a dependency before it finished").read_unfinished_dependency,
        1
    );
    h.workflows.results.insert(n.d, b"{\"instance\"".to_vec());
    assert_eq!(
        fails_with(&h, "read a dependency before it finished").read_unfinished_dependency,
        1
    );
}

#[test]
fn a_workflow_cancelled_without_a_cancel_call_fails() {
    let (mut h, n) = sound();
    h.workflows.cancel_requested.insert(n.w1, ms(265));
    let c = fails_with(&h, "1 workflows cancelled without a CancelWorkflow");
    assert_eq!(c.cancel_without_request, 1);
    // A node of it that ran after the request is reported, not failed.
    assert_eq!(c.ran_after_workflow_cancel, 1);
}

#[test]
fn too_few_accepted_workflows_fail_the_floor() {
    let (mut h, _) = sound();
    h.workflows.refused.insert("Unavailable".into(), 1);
    let c = fails_with(
        &h,
        "too few workflows: 3 of 4 offered accepted, below the floor of 90%",
    );
    assert_eq!(c.offered, 4);
    h.floor = 0.7;
    assert!(judge(&h).passed());
    // No accepted workflow at all.
    h.workflows.accepted.clear();
    fails_with(&h, "no accepted workflow");
}

#[test]
fn workflow_files_are_read_back() {
    let (wf, n1, n2) = (TaskId::new(), TaskId::new(), TaskId::new());
    let text = format!(
        "workflow\t{wf}\tchain\t1\t2\tnew\n\
         node\t{wf}\t{n1}\tchain-0\t0\t1\n\
         node\t{wf}\t{n2}\tchain-1\t1\t0\n\
         edge\t{wf}\t{n2}\t{n1}\trun\n\
         # refused\tUnavailable\t3\n\
         cancel\t{wf}\taccepted\t7\n"
    );
    let p = std::env::temp_dir().join(format!("wf-{}.workflows", TaskId::new()));
    std::fs::write(&p, text).expect("write");
    let w = read_workflows(std::slice::from_ref(&p)).expect("read");
    assert_eq!(w.accepted.len(), 1);
    let r = &w.accepted[0];
    assert_eq!((r.id, r.shape.as_str()), (wf, "chain"));
    assert_eq!(r.nodes.len(), 2);
    assert!(r.nodes[0].fails && !r.nodes[0].with_deps);
    assert_eq!(r.nodes[1].deps, vec![(n1, true)]);
    assert_eq!(r.cancels, vec![("accepted".to_owned(), 7)]);
    assert_eq!(w.refused.get("Unavailable"), Some(&1));
    // An edge of a node not recorded before is an error, not a silent gap.
    std::fs::write(
        &p,
        format!("workflow\t{wf}\tchain\t1\t2\tnew\nedge\t{wf}\t{n2}\t{n1}\trun\n"),
    )
    .expect("write");
    assert!(read_workflows(std::slice::from_ref(&p)).is_err());
    let _ = std::fs::remove_file(&p);
}
