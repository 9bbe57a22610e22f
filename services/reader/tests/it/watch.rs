//! WatchTask.

use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{ACME, Events, Reader, TaskRow, req, store};

async fn next(s: &mut tonic::Streaming<pb::TaskEvent>) -> Option<pb::TaskEvent> {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("an event within 5 s")
        .expect("stream ok")
}

#[tokio::test]
async fn watch_sees_every_transition_in_order_until_terminal() {
    let env = TestEnv::new().await.expect("env");
    let pending = TaskRow::new("acme", TaskState::Pending, 0);
    store(&env, std::slice::from_ref(&pending)).await;
    let r = Reader::start(&env).await;
    let mut c = r.client().await;
    let mut stream = c
        .watch_task(req(
            pb::WatchTaskRequest {
                task_id: pending.id.to_string(),
                min_version: 0,
            },
            ACME,
        ))
        .await
        .expect("watch")
        .into_inner();
    let first = next(&mut stream).await.expect("current state");
    assert_eq!(first.state(), pb::TaskState::Pending);
    assert_eq!(first.version, pending.version());
    assert!(first.task.is_some(), "events carry the snapshot");

    let events = Events::new(&env);
    let steps = [
        pending.at(TaskState::Running, 1),
        pending.at(TaskState::Retrying, 1),
        pending.at(TaskState::Running, 2),
        pending.at(TaskState::Succeeded, 2),
    ];
    for (i, step) in steps.iter().enumerate() {
        events.publish(step).await;
        if i == 1 {
            // A replay of an older state in between is never shown.
            events.publish(&steps[0]).await;
        }
    }
    let mut seen = Vec::new();
    while let Some(ev) = next(&mut stream).await {
        seen.push((ev.state(), ev.version));
    }
    let want: Vec<_> = steps
        .iter()
        .map(|s| (s.state.to_proto(), s.version()))
        .collect();
    assert_eq!(
        seen, want,
        "every transition, in order, then the stream ends"
    );
    r.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn watching_a_terminal_task_yields_its_state_and_ends() {
    let env = TestEnv::new().await.expect("env");
    let done = TaskRow::new("acme", TaskState::Dead, 4);
    store(&env, std::slice::from_ref(&done)).await;
    let r = Reader::start(&env).await;
    let mut c = r.client().await;
    let mut stream = c
        .watch_task(req(
            pb::WatchTaskRequest {
                task_id: done.id.to_string(),
                min_version: 0,
            },
            ACME,
        ))
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("ok").expect("one event");
    assert_eq!(first.state(), pb::TaskState::Dead);
    assert!(stream.message().await.expect("ok").is_none(), "ended");

    let err = c
        .watch_task(req(
            pb::WatchTaskRequest {
                task_id: TaskId::new().to_string(),
                min_version: 0,
            },
            ACME,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    r.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn watch_with_a_submit_token_waits_for_the_task_to_appear() {
    let env = TestEnv::new().await.expect("env");
    let r = Reader::start(&env).await;
    let mut c = r.client().await;
    let row = TaskRow::new("acme", TaskState::Succeeded, 1);
    let id = row.id.to_string();

    // Without a token an unknown task is NOT_FOUND...
    let err = c
        .watch_task(req(
            pb::WatchTaskRequest {
                task_id: id.clone(),
                min_version: 0,
            },
            ACME,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // ...with the submit's token the reader waits for the row (stored while the call waits).
    let watch = tokio::spawn(async move {
        c.watch_task(req(
            pb::WatchTaskRequest {
                task_id: id,
                min_version: 1,
            },
            ACME,
        ))
        .await
    });
    store(&env, std::slice::from_ref(&row)).await;
    let mut stream = watch
        .await
        .expect("join")
        .expect("watch waits for the task")
        .into_inner();
    let first = next(&mut stream).await.expect("current state");
    assert_eq!(first.state(), pb::TaskState::Succeeded);
    assert!(
        next(&mut stream).await.is_none(),
        "a terminal task ends the stream"
    );
}
