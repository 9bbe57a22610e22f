//! WatchTask.

use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_testkit::TestEnv;
use tonic::Code;

use crate::common::{
    Events, KEY_ACME, KEY_GLOBEX, TaskRow, env_reader_and_client, next_event, reader_and_client,
    reader_with, stop, store, watch,
};

#[tokio::test]
async fn watch_sees_every_transition_in_order_until_terminal() {
    let env = TestEnv::new().await.expect("env");
    let pending = TaskRow::new("acme", TaskState::Pending, 0);
    store(&env, std::slice::from_ref(&pending)).await;
    let (r, mut c) = reader_and_client(&env).await;
    let mut stream = watch(&mut c, pending.id, 0, KEY_ACME).await.expect("watch");
    let first = next_event(&mut stream).await.expect("current state");
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
    while let Some(ev) = next_event(&mut stream).await {
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
    stop(r, env).await;
}

#[tokio::test]
async fn watching_a_terminal_task_yields_its_state_and_ends() {
    let env = TestEnv::new().await.expect("env");
    let done = TaskRow::new("acme", TaskState::Dead, 4);
    store(&env, std::slice::from_ref(&done)).await;
    let (r, mut c) = reader_and_client(&env).await;
    let mut stream = watch(&mut c, done.id, 0, KEY_ACME).await.expect("watch");
    let first = stream.message().await.expect("ok").expect("one event");
    assert_eq!(first.state(), pb::TaskState::Dead);
    assert!(stream.message().await.expect("ok").is_none(), "ended");

    let err = watch(&mut c, TaskId::new(), 0, KEY_ACME)
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    stop(r, env).await;
}

#[tokio::test]
async fn watch_with_a_submit_token_waits_for_the_task_to_appear() {
    let (env, _r, mut c) = env_reader_and_client().await;
    let row = TaskRow::new("acme", TaskState::Succeeded, 1);
    let id = row.id.to_string();

    // Without a token an unknown task is NOT_FOUND...
    let err = watch(&mut c, &id, 0, KEY_ACME).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // ...with the submit's token the reader waits for the row (stored while the call waits).
    let waiting = tokio::spawn(async move { watch(&mut c, id, 1, KEY_ACME).await });
    store(&env, std::slice::from_ref(&row)).await;
    let mut stream = waiting
        .await
        .expect("join")
        .expect("watch waits for the task");
    let first = next_event(&mut stream).await.expect("current state");
    assert_eq!(first.state(), pb::TaskState::Succeeded);
    assert!(
        next_event(&mut stream).await.is_none(),
        "a terminal task ends the stream"
    );
}

async fn open_watch(
    c: &mut pb::task_query_service_client::TaskQueryServiceClient<tonic::transport::Channel>,
    id: TaskId,
    key: &str,
) -> Result<tonic::Streaming<pb::TaskEvent>, tonic::Status> {
    let mut s = watch(c, id, 0, key).await?;
    // The current state comes first: the stream is admitted and running.
    next_event(&mut s).await.expect("current state");
    Ok(s)
}

/// Streams are bounded per tenant and per instance, refused with RESOURCE_EXHAUSTED naming the
/// setting, counted, and a closed stream frees its place.
#[tokio::test]
async fn watch_streams_are_bounded_per_tenant_and_per_instance() {
    let env = TestEnv::new().await.expect("env");
    let a = TaskRow::new("acme", TaskState::Pending, 0);
    let g = TaskRow::new("globex", TaskState::Pending, 0);
    store(&env, &[a.clone(), g.clone()]).await;
    let r = reader_with(&env, |s| {
        s.cache.watch_max_streams = 3;
        s.cache.watch_max_streams_per_tenant = 2;
    })
    .await;
    let mut c = r.client().await.expect("connect");
    let first = open_watch(&mut c, a.id, KEY_ACME).await.expect("first");
    let _second = open_watch(&mut c, a.id, KEY_ACME).await.expect("second");
    let refused = open_watch(&mut c, a.id, KEY_ACME)
        .await
        .expect_err("third of acme");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("cache.watch_max_streams_per_tenant"),
        "{}",
        refused.message()
    );
    let _other = open_watch(&mut c, g.id, KEY_GLOBEX)
        .await
        .expect("globex's first");
    let refused = open_watch(&mut c, g.id, KEY_GLOBEX)
        .await
        .expect_err("fourth on the instance");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("cache.watch_max_streams"),
        "{}",
        refused.message()
    );
    // Process-wide counters (other tests share them): each refusal was counted at least once.
    let m = crate::invalid::http_get(r.admin, "/metrics").await;
    for limit in ["tenant", "instance"] {
        let line = format!(r#"dispatch_watch_streams_refused_total{{limit="{limit}"}} "#);
        let n: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{limit} refusal not counted: {m}");
    }

    drop(first);
    dispatch_testkit::eventually(
        "a closed stream frees its place",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move { open_watch(&mut c, a.id, KEY_ACME).await.ok() }
        },
    )
    .await
    .expect("admitted again");
    stop(r, env).await;
}

/// A stream on a task that never finishes ends after the maximum duration with UNAVAILABLE
/// (watch again), so it cannot hold the reader's resources forever.
#[tokio::test]
async fn a_watch_stream_ends_after_its_maximum_duration() {
    let env = TestEnv::new().await.expect("env");
    let a = TaskRow::new("acme", TaskState::Pending, 0);
    store(&env, std::slice::from_ref(&a)).await;
    let r = reader_with(&env, |s| s.cache.watch_max_duration_ms = 1_000).await;
    let mut c = r.client().await.expect("connect");
    let mut s = open_watch(&mut c, a.id, KEY_ACME).await.expect("watch");
    let end = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("the stream ends within 10 s")
        .expect_err("with a status");
    assert_eq!(end.code(), Code::Unavailable);
    assert!(
        end.message().contains("cache.watch_max_duration_ms"),
        "{}",
        end.message()
    );
    stop(r, env).await;
}
