//! Submit -> process -> visible: the whole path through the three services.

use dispatch_proto::v1 as pb;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::Stack;
use tokio_stream::StreamExt;

use crate::support::{SETTLE, await_succeeded, spec, submit};

/// A submitted task becomes visible in the reader as SUCCEEDED, read with the version token the
/// gateway returned, and carries what was submitted.
#[tokio::test]
async fn submitted_task_becomes_visible_as_succeeded() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let spec = spec("noop", b"{\"hello\":1}");
    let accepted = submit(&stack, spec.clone()).await?;
    assert_eq!(accepted.accepted_via, pb::AcceptedVia::Kafka as i32);
    assert!(!accepted.duplicate);

    let task = await_succeeded(&stack, &accepted).await?;
    assert_eq!(task.task_id, accepted.task_id);
    assert_eq!(task.tenant, "acme");
    assert_eq!(task.business_key, spec.business_key);
    assert_eq!(task.task_type, "noop");
    assert_eq!(task.payload, spec.payload);
    assert_eq!(task.attempts, 1);
    assert!(
        task.version > accepted.version,
        "the terminal version is newer than the token"
    );
    assert!(task.finished_at.is_some());
    stack.stop().await
}

/// WatchTask opened right after the submit (with the submit's version token, so a task not yet
/// stored is waited for) streams the transitions in version order, ending in SUCCEEDED.
#[tokio::test]
async fn watch_from_submit_sees_running_then_succeeded() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // Slow enough that the watch sees the task running before it finishes.
    let accepted = submit(&stack, spec("simulate", b"{\"latency_ms\": 1500}")).await?;
    let mut q = stack.queries().await?;
    let mut events = q
        .watch_task(authed(
            pb::WatchTaskRequest {
                task_id: accepted.task_id.clone(),
                min_version: accepted.version,
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while let Some(ev) = tokio::time::timeout_at(deadline, events.next()).await? {
        let ev = ev?;
        assert_eq!(ev.task_id, accepted.task_id);
        seen.push((pb::TaskState::try_from(ev.state)?, ev.version));
    }
    let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(states.last(), Some(&pb::TaskState::Succeeded), "{seen:?}");
    assert!(
        states.contains(&pb::TaskState::Running),
        "the watch saw the task running: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "versions strictly increase: {seen:?}"
    );
    assert!(seen.iter().all(|(_, v)| *v >= accepted.version));
    stack.stop().await
}
