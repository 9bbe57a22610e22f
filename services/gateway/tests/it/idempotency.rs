//! Idempotent submit with and without Redis.

use std::time::Duration;

use dispatch_core::{Priority, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_store::tasks::{TaskWrite, upsert_batch};
use dispatch_testkit::{TestEnv, consume_until, task_write};

use crate::harness::*;

fn with_key(business_key: &str, idem: &str) -> pb::TaskSpec {
    let mut s = spec(business_key, b"x");
    s.idempotency_key = idem.into();
    s
}

/// Counts records of `task_id` up to a sentinel submitted afterwards on the same key (same
/// partition, so every earlier record of the key is before it).
async fn records_of(
    env: &TestEnv,
    client: &mut dispatch_proto::v1::task_service_client::TaskServiceClient<
        tonic::transport::Channel,
    >,
    business_key: &str,
    task_id: &str,
) -> anyhow::Result<usize> {
    let sentinel = client
        .submit_task(submit(spec(business_key, b"sentinel"), KEY_ACME))
        .await?
        .into_inner();
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| {
        r.iter()
            .any(|r| task_id_of(r).as_deref() == Some(sentinel.task_id.as_str()))
    })
    .await?;
    Ok(records
        .iter()
        .filter(|r| task_id_of(r).as_deref() == Some(task_id))
        .count())
}

#[tokio::test]
async fn the_same_idempotency_key_twice_is_one_record() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let gw = Gateway::spawn(settings(&env)).await?;
    let mut client = gw.client().await?;
    let first = client
        .submit_task(submit(with_key("order-7", "idem-1"), KEY_ACME))
        .await?
        .into_inner();
    assert!(!first.duplicate);
    assert_eq!(id(&first.task_id).uuid().get_version_num(), 8, "derived id");
    let second = client
        .submit_task(submit(with_key("order-7", "idem-1"), KEY_ACME))
        .await?
        .into_inner();
    assert!(second.duplicate);
    assert_eq!(second.task_id, first.task_id);
    assert_eq!(
        (second.topic.as_str(), second.partition, second.offset),
        (first.topic.as_str(), first.partition, first.offset),
        "the stored first response is returned"
    );
    // Another tenant's identical key is a different task.
    let other = client
        .submit_task(submit(with_key("order-7", "idem-1"), KEY_GLOBEX))
        .await?
        .into_inner();
    assert!(!other.duplicate);
    assert_ne!(other.task_id, first.task_id);

    assert_eq!(
        records_of(&env, &mut client, "order-7", &first.task_id).await?,
        1
    );
    let m = gw.metrics().await?;
    assert!(m.contains("dispatch_idempotency_hits_total{source=\"redis\"}"));
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn without_redis_the_id_is_stable_and_the_store_dedupes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.redis.url = "redis://127.0.0.1:1/0".into();
    s.redis.connect_timeout_ms = 200;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    let a = client
        .submit_task(submit(with_key("order-8", "idem-2"), KEY_ACME))
        .await?
        .into_inner();
    let b = client
        .submit_task(submit(with_key("order-8", "idem-2"), KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(a.task_id, b.task_id, "same id without redis");
    // Neither Redis nor the store knew the task yet (no processor here), so the second submit
    // was produced too: two records of ONE task id. The processor dedupes by task id (version
    // fence), so it still runs once.
    assert!(!b.duplicate);
    assert_eq!(
        records_of(&env, &mut client, "order-8", &a.task_id).await?,
        2
    );

    // Once the processor stored the task, the store answers "duplicate" without Redis.
    let w = TaskWrite {
        business_key: "order-8".into(),
        task_type: "email.send".into(),
        payload: b"x".to_vec(),
        idempotency_key: Some("idem-2".into()),
        ..task_write(id(&a.task_id), "acme", TaskState::Pending, 0)
    };
    let mut tx = env.pool.begin().await?;
    upsert_batch(&mut tx, &[w]).await?;
    tx.commit().await?;
    let c = client
        .submit_task(submit(with_key("order-8", "idem-2"), KEY_ACME))
        .await?
        .into_inner();
    assert!(c.duplicate);
    assert_eq!(c.task_id, a.task_id);
    assert_eq!(
        records_of(&env, &mut client, "order-8", &a.task_id).await?,
        2,
        "no third record"
    );
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
