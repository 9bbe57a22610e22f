//! CancelTask: routing to the task's partition, tenant isolation, finished tasks.

use std::time::Duration;

use dispatch_core::{EnvelopeKind, Priority, TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_store::tasks::{TaskWrite, upsert_batch};
use dispatch_testkit::{TestEnv, consume_until, task_write};
use tonic::Code;

use crate::harness::*;

fn cancel(task_id: &str, business_key: &str, key: &str) -> tonic::Request<pb::CancelTaskRequest> {
    authed(
        pb::CancelTaskRequest {
            task_id: task_id.into(),
            business_key: business_key.into(),
            reason: "customer changed their mind".into(),
        },
        key,
    )
}

/// Stores a task as the processor would.
async fn store(
    env: &TestEnv,
    id: TaskId,
    tenant: &str,
    key: &str,
    state: TaskState,
) -> anyhow::Result<()> {
    let w = TaskWrite {
        business_key: key.into(),
        task_type: "email.send".into(),
        priority: Priority::Low,
        payload: b"x".to_vec(),
        ..task_write(id, tenant, state, 1)
    };
    let mut tx = env.pool.begin().await?;
    upsert_batch(&mut tx, &[w]).await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn cancel_follows_its_submit_on_the_same_partition() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let sub = client
        .submit_task(submit(spec("order-9", b"x"), KEY_ACME))
        .await?
        .into_inner();

    // Another tenant cannot cancel it, and cannot even learn it exists.
    let err = client
        .cancel_task(cancel(&sub.task_id, "", KEY_GLOBEX))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), Code::NotFound);

    // Not in the store yet: routed by this instance's memory of the submit.
    let c = client
        .cancel_task(cancel(&sub.task_id, "", KEY_ACME))
        .await?
        .into_inner();
    assert!(c.accepted);
    assert_eq!(c.task_id, sub.task_id);
    assert_eq!(c.state, pb::TaskState::Unspecified as i32);

    let consumer = env.consumer(std::slice::from_ref(&sub.topic))?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| r.len() >= 2).await?;
    assert_eq!(records[0].offset, sub.offset);
    let (s, c) = (&records[0], &records[1]);
    assert_eq!(c.partition, s.partition, "same partition as the submit");
    assert!(c.offset > s.offset, "ordered after it");
    let e = envelope(c);
    assert_eq!(e.kind, EnvelopeKind::Cancel);
    assert_eq!(e.task_id.to_string(), sub.task_id);
    assert_eq!(e.cancel_reason, "customer changed their mind");
    assert_eq!(c.headers.get_str("dispatch-kind"), Some("cancel"));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn cancel_uses_the_store_and_leaves_finished_tasks_alone() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;

    let done = TaskId::new();
    store(&env, done, "acme", "k-done", TaskState::Succeeded).await?;
    let c = client
        .cancel_task(cancel(&done.to_string(), "", KEY_ACME))
        .await?
        .into_inner();
    assert!(!c.accepted, "finished tasks are unchanged");
    assert_eq!(c.state, pb::TaskState::Succeeded as i32);

    let running = TaskId::new();
    store(&env, running, "acme", "k-run", TaskState::Running).await?;
    let err = client
        .cancel_task(cancel(&running.to_string(), "", KEY_GLOBEX))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .cancel_task(cancel(&running.to_string(), "other-key", KEY_ACME))
        .await
        .expect_err("key mismatch");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["business_key"]);
    let c = client
        .cancel_task(cancel(&running.to_string(), "", KEY_ACME))
        .await?
        .into_inner();
    assert!(c.accepted);
    assert_eq!(c.state, pb::TaskState::Running as i32);
    // The stored priority (low) and key pick the topic and partition.
    let consumer = env.consumer(&[env.topics().tasks(Priority::Low)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| !r.is_empty()).await?;
    assert_eq!(records[0].key, b"k-run");
    assert_eq!(envelope(&records[0]).kind, EnvelopeKind::Cancel);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn cancel_of_an_unknown_task_needs_its_business_key() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let err = client
        .cancel_task(cancel("not-a-uuid", "", KEY_ACME))
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&err), ["task_id"]);

    let unknown = TaskId::new().to_string();
    let err = client
        .cancel_task(cancel(&unknown, "", KEY_ACME))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("business_key"), "{}", err.message());

    let c = client
        .cancel_task(cancel(&unknown, "k-later", KEY_ACME))
        .await?
        .into_inner();
    assert!(c.accepted, "routed by the caller's key");
    let err = client
        .cancel_task(authed(
            pb::CancelTaskRequest {
                task_id: unknown.clone(),
                business_key: "k".into(),
                reason: "r".repeat(513),
            },
            KEY_ACME,
        ))
        .await
        .expect_err("long reason");
    assert_eq!(bad_fields(&err), ["reason"]);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
