//! Cancels while Kafka is down (through the outbox, in order with their task's records) and
//! cancels of another tenant's task that the gateway can see in MySQL.

use std::time::Duration;

use dispatch_core::{EnvelopeKind, Priority};
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use tonic::Code;

use crate::harness::*;

fn cancel(task_id: &str, business_key: &str, key: &str) -> tonic::Request<pb::CancelTaskRequest> {
    authed(
        pb::CancelTaskRequest {
            task_id: task_id.into(),
            business_key: business_key.into(),
            reason: "no longer needed".into(),
        },
        key,
    )
}

#[tokio::test]
async fn cancels_while_kafka_is_down_go_through_the_outbox_in_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let down = Gateway::spawn(kafka_down(&env)).await?;
    let mut client = down.client().await?;
    let a = client
        .submit_task(submit(spec("acct-1", b"a"), KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(a.accepted_via, pb::AcceptedVia::Outbox as i32);
    // Routed by this instance's memory of the submit; parked behind it.
    let c = client
        .cancel_task(cancel(&a.task_id, "", KEY_ACME))
        .await?
        .into_inner();
    assert!(c.accepted);
    // A client's retry of the cancel is accepted too (a second, harmless cancel record).
    assert!(
        client
            .cancel_task(cancel(&a.task_id, "", KEY_ACME))
            .await?
            .into_inner()
            .accepted
    );
    let b = client
        .submit_task(submit(spec("acct-1", b"b"), KEY_ACME))
        .await?
        .into_inner();
    // A cancel that only knows the business key (the task is nowhere yet) is parked too.
    let unknown = dispatch_core::TaskId::new().to_string();
    assert!(
        client
            .cancel_task(cancel(&unknown, "acct-1", KEY_ACME))
            .await?
            .into_inner()
            .accepted
    );
    // Another tenant still cannot cancel the outboxed task.
    let err = client
        .cancel_task(cancel(&b.task_id, "acct-1", KEY_GLOBEX))
        .await
        .expect_err("other tenant");
    assert_eq!(err.code(), Code::NotFound);
    let backlog = dispatch_store::outbox::backlog(&env.pool).await?;
    assert_eq!(backlog.pending, 5, "two submits and three cancels parked");
    down.stop().await?;

    // A healthy gateway drains the outbox; the key's records arrive in the order accepted.
    let up = Gateway::spawn(settings(&env)).await?;
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(30), |r| r.len() >= 5).await?;
    let got: Vec<(EnvelopeKind, String)> = records
        .iter()
        .filter(|r| r.key == b"acct-1")
        .map(|r| {
            let e = envelope(r);
            (e.kind, e.task_id.to_string())
        })
        .collect();
    assert_eq!(
        got,
        [
            (EnvelopeKind::Submit, a.task_id.clone()),
            (EnvelopeKind::Cancel, a.task_id.clone()),
            (EnvelopeKind::Cancel, a.task_id.clone()),
            (EnvelopeKind::Submit, b.task_id.clone()),
            (EnvelopeKind::Cancel, unknown.clone()),
        ]
    );
    assert!(
        records.windows(2).all(|w| w[0].partition == w[1].partition),
        "one key, one partition"
    );
    eventually("outbox drained", Duration::from_secs(10), || async {
        let b = dispatch_store::outbox::backlog(&env.pool).await.ok()?;
        (b.pending == 0).then_some(())
    })
    .await?;
    up.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_task_seen_in_mysql_cannot_be_cancelled_by_another_tenant() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let first = Gateway::spawn(settings(&env)).await?;
    let other = Gateway::spawn(settings(&env)).await?;
    // Accepted on Kafka through one instance; no processor stores it here.
    let mut s = spec("acct-9", b"x");
    s.idempotency_key = "cancel-me".into();
    s.priority = pb::Priority::Low as i32;
    let sub = first
        .client()
        .await?
        .submit_task(submit(s, KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(sub.accepted_via, pb::AcceptedVia::Kafka as i32);

    // Another instance (no memory of the submit) knows the owner from the idempotency key's row:
    // another tenant gets NOT_FOUND even with the right business key...
    let mut c2 = other.client().await?;
    let err = c2
        .cancel_task(cancel(&sub.task_id, "acct-9", KEY_GLOBEX))
        .await
        .expect_err("another tenant's task");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // ...and the owner's cancel needs no business key: it goes to the submit's topic and
    // partition, after it.
    let c = c2
        .cancel_task(cancel(&sub.task_id, "", KEY_ACME))
        .await?
        .into_inner();
    assert!(c.accepted);
    let consumer = env.consumer(&[env.topics().tasks(Priority::Low)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| r.len() >= 2).await?;
    assert_eq!(records[0].offset, sub.offset);
    assert_eq!(envelope(&records[1]).kind, EnvelopeKind::Cancel);
    assert_eq!(records[1].partition, sub.partition);
    assert!(records.iter().all(|r| r.key == b"acct-9"));
    first.stop().await?;
    other.stop().await?;
    env.cleanup().await;
    Ok(())
}
