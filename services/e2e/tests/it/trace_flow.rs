//! The trace scenario shared by `it::trace` and the `trace_quiet` binary: one trace id flows
//! submit -> task record -> processing -> retry/DLQ records -> events.
//!
//! The caller's W3C `traceparent` (sampled) goes into the gateway's gRPC metadata; the same
//! trace id must appear in the headers of every record the task causes.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::Priority;
use dispatch_core::envelope::header;
use dispatch_proto::v1 as pb;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::Stack;
use dispatch_testkit::{Record, consume_until};
use prost::Message;

use crate::support::{SETTLE, spec};

/// A fresh sampled trace: (trace id, traceparent).
fn new_trace() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, traceparent)
}

/// The trace id of a record's `traceparent` header.
fn trace_of(r: &Record) -> Option<String> {
    let tp = r.headers.get_str(header::TRACEPARENT)?;
    tp.split('-').nth(1).map(str::to_owned)
}

fn task_of(r: &Record) -> Option<&str> {
    r.headers.get_str(header::TASK_ID)
}

/// The state of an event record.
fn event_state(r: &Record) -> Option<pb::TaskState> {
    pb::TaskEvent::decode(r.value.as_slice())
        .ok()
        .and_then(|e| pb::TaskState::try_from(e.state).ok())
}

/// Submits three tasks, each with its own sampled `traceparent` (one succeeds, one is retried
/// once, one goes to the DLQ), and asserts that every record each task causes (task record,
/// retry record, DLQ record, every state-change event) carries its trace id.
pub async fn trace_id_flows_to_every_record() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topics = stack.env.topics();
    let fast_retry = pb::RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 50,
        max_backoff_ms: 100,
    };
    // ok: succeeds at once; retried: fails its first attempt, then succeeds (one retry record);
    // dead: fails permanently (one DLQ record).
    let cases = [
        ("ok", spec("noop", b"")),
        (
            "retried",
            pb::TaskSpec {
                retry_policy: Some(fast_retry),
                ..spec("simulate", b"{\"fail_attempts\": 1}")
            },
        ),
        (
            "dead",
            spec("simulate", b"{\"fail_attempts\": 1, \"permanent\": true}"),
        ),
    ];
    let mut c = stack.tasks().await?;
    // task id -> (case, trace id)
    let mut traces = HashMap::new();
    for (case, spec) in cases {
        let (trace_id, traceparent) = new_trace();
        let mut req = authed(pb::SubmitTaskRequest { task: Some(spec) }, KEY_ACME);
        req.metadata_mut()
            .insert("traceparent", traceparent.parse()?);
        let id = c.submit_task(req).await?.into_inner().task_id;
        traces.insert(id, (case, trace_id));
    }
    let id_of = |case: &str| {
        traces
            .iter()
            .find(|(_, (c, _))| *c == case)
            .map(|(id, _)| id.clone())
            .unwrap_or_default()
    };
    let (ok, retried, dead) = (id_of("ok"), id_of("retried"), id_of("dead"));

    let mut watched = vec![
        topics.tasks(Priority::Default),
        topics.dlq(),
        topics.events(),
    ];
    watched.extend((1..=dispatch_core::topics::RETRY_LEVELS).map(|l| topics.retry(l)));
    let consumer = stack.env.consumer(&watched)?;
    let is = |r: &Record, topic: &str, id: &str| r.topic == topic && task_of(r) == Some(id);
    let terminal = |r: &Record, id: &str, state: pb::TaskState| {
        is(r, &topics.events(), id) && event_state(r) == Some(state)
    };
    let records = consume_until(&consumer, SETTLE + Duration::from_secs(15), |rs| {
        let has = |f: &dyn Fn(&Record) -> bool| rs.iter().any(f);
        traces
            .keys()
            .all(|id| has(&|r| is(r, &topics.tasks(Priority::Default), id)))
            && has(&|r| terminal(r, &ok, pb::TaskState::Succeeded))
            && has(&|r| terminal(r, &retried, pb::TaskState::Succeeded))
            && has(&|r| terminal(r, &dead, pb::TaskState::Dead))
            && has(&|r| topics.retry_level_of(&r.topic).is_some() && task_of(r) == Some(&retried))
            && has(&|r| is(r, &topics.dlq(), &dead))
    })
    .await?;

    // Every record any of the three tasks caused carries its submit's trace id.
    let mut checked: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        let Some((case, want)) = task_of(r).and_then(|id| traces.get(id)) else {
            continue;
        };
        let kind = if r.topic == topics.events() {
            "event"
        } else if r.topic == topics.dlq() {
            "dlq"
        } else if topics.retry_level_of(&r.topic).is_some() {
            "retry"
        } else {
            "task"
        };
        assert_eq!(
            trace_of(r).as_deref(),
            Some(want.as_str()),
            "{case}: the {kind} record at {}/{}@{} ({:?}) lost the trace",
            r.topic,
            r.partition,
            r.offset,
            event_state(r).filter(|_| kind == "event"),
        );
        *checked.entry(kind).or_default() += 1;
    }
    for kind in ["task", "retry", "dlq", "event"] {
        assert!(
            checked.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} record checked"
        );
    }
    stack.stop().await
}

/// A task submitted with a future `run_at` (stored SCHEDULED, published later by the
/// processor's scheduler) keeps its submit's trace id in the record the scheduler publishes and
/// in the events of its run.
pub async fn scheduled_task_keeps_its_trace() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let topics = stack.env.topics();
    let (trace_id, traceparent) = new_trace();
    let run_at = dispatch_core::time::to_proto(chrono::Utc::now() + chrono::Duration::seconds(2));
    let mut req = authed(
        pb::SubmitTaskRequest {
            task: Some(pb::TaskSpec {
                run_at: Some(run_at),
                ..spec("noop", b"")
            }),
        },
        KEY_ACME,
    );
    req.metadata_mut()
        .insert("traceparent", traceparent.parse()?);
    let id = stack
        .tasks()
        .await?
        .submit_task(req)
        .await?
        .into_inner()
        .task_id;

    let consumer = stack
        .env
        .consumer(&[topics.tasks(Priority::Default), topics.events()])?;
    let records = consume_until(&consumer, SETTLE, |rs| {
        rs.iter().any(|r| {
            r.topic == topics.events()
                && task_of(r) == Some(&id)
                && event_state(r) == Some(pb::TaskState::Succeeded)
        })
    })
    .await?;
    let mine: Vec<&Record> = records.iter().filter(|r| task_of(r) == Some(&id)).collect();
    let task_records = mine.iter().filter(|r| r.topic != topics.events()).count();
    assert!(
        task_records >= 2,
        "the submit and the scheduler's record: {task_records}"
    );
    for r in mine {
        assert_eq!(
            trace_of(r).as_deref(),
            Some(trace_id.as_str()),
            "the record at {}/{}@{} ({:?}) lost the trace",
            r.topic,
            r.partition,
            r.offset,
            event_state(r).filter(|_| r.topic == topics.events()),
        );
    }
    stack.stop().await
}
