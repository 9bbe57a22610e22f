//! Proves the local stack is real and the foundation's builders work against it: Kafka produce and
//! consume with the project's own configs, migrations up/down/up on MariaDB, a Redis round trip.

use std::time::Duration;

use dispatch_core::{Envelope, NewTask, Priority, TaskId, TaskState};
use dispatch_runtime::kafka::{consumer_config, dispatch_topics, ensure_topics, producer_config};
use dispatch_store::tasks::{self, TaskWrite};
use dispatch_testkit::{TestEnv, consume_until, task_write};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn sample_task(key: &str) -> NewTask {
    dispatch_testkit::new_task("noop", key, b"{}")
}

#[tokio::test]
async fn kafka_round_trip_with_project_configs() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Topic bootstrap is idempotent.
    ensure_topics(&env.kafka, &dispatch_topics(&env.kafka)).await?;

    let producer: FutureProducer = producer_config(&env.kafka).create()?;
    let topic = env.topics().tasks(Priority::Default);
    let envelope = Envelope::submit(sample_task("order-1"));
    let mut headers = OwnedHeaders::new();
    for (k, v) in envelope.headers().iter() {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let value = envelope.encode();
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key(envelope.key())
                .payload(&value)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    let (partition, offset) = (delivery.partition, delivery.offset);
    assert_eq!(
        partition,
        dispatch_core::partition::partition_for_key(b"order-1", env.kafka.partitions)
    );

    let consumer: StreamConsumer =
        consumer_config(&env.kafka, &format!("stack-{}", env.id)).create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let got = consume_until(&consumer, Duration::from_secs(30), |r| !r.is_empty()).await?;
    assert_eq!((got[0].partition, got[0].offset), (partition, offset));
    let back = Envelope::decode(&got[0].value)?;
    assert_eq!(back, envelope);
    assert_eq!(
        got[0].headers.get_str("dispatch-task-id"),
        Some(envelope.task_id.to_string().as_str())
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let status = dispatch_store::migrate::status(&env.pool).await?;
    assert!(
        status.len() >= 2 && status.iter().all(|m| m.applied),
        "{status:?}"
    );

    dispatch_store::migrate::down(&env.pool, 1).await?;
    let status = dispatch_store::migrate::status(&env.pool).await?;
    assert!(
        status[0].applied && !status[status.len() - 1].applied,
        "{status:?}"
    );

    dispatch_store::migrate::down(&env.pool, 99).await?;
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name IN ('tasks', 'outbox', 'dead_letters')")
            .fetch_all(&env.pool)
            .await?;
    assert!(tables.is_empty(), "down removed every table: {tables:?}");

    dispatch_store::migrate::up(&env.pool).await?;
    dispatch_store::migrate::up(&env.pool).await?; // idempotent
    assert!(
        dispatch_store::migrate::status(&env.pool)
            .await?
            .iter()
            .all(|m| m.applied)
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn upserts_are_fenced_by_version() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let id = TaskId::new();
    let apply = |w: TaskWrite| {
        let pool = env.pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            tasks::upsert_batch(&mut tx, &[w]).await?;
            tx.commit().await?;
            anyhow::Ok(())
        }
    };
    apply(task_write(id, "acme", TaskState::Running, 2)).await?;
    // An older attempt (zombie) does not overwrite.
    apply(task_write(id, "acme", TaskState::Retrying, 1)).await?;
    let s = tasks::states(&env.pool, &[id]).await?;
    assert_eq!(s[0].1.state, TaskState::Running);
    apply(task_write(id, "acme", TaskState::Succeeded, 2)).await?;
    // Nothing moves a terminal state, even a higher version.
    apply(task_write(id, "acme", TaskState::Running, 3)).await?;
    let t = tasks::get(&env.pool, id).await?.expect("row");
    assert_eq!(t.state, TaskState::Succeeded.to_proto() as i32);
    assert_eq!(t.version, TaskState::Succeeded.version(0, 2));
    assert!(t.finished_at.is_some());

    // A cancel that overtook its submit leaves a placeholder the submit's write fills in.
    let id2 = TaskId::new();
    let mut cancel = task_write(id2, "acme", TaskState::Cancelled, 0);
    cancel.task_type = String::new();
    cancel.payload = Vec::new();
    apply(cancel).await?;
    apply(task_write(id2, "acme", TaskState::Running, 1)).await?;
    let t = tasks::get(&env.pool, id2).await?.expect("row");
    assert_eq!(
        t.state,
        TaskState::Cancelled.to_proto() as i32,
        "cancel wins"
    );
    assert_eq!(t.task_type, "noop", "data filled in");
    assert_eq!(t.payload, b"p");
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn redis_round_trip_with_project_client() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut conn = dispatch_runtime::redis_client::connect(&env.redis).await?;
    let key = format!("{}smoke", env.redis.key_prefix);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(b"\x00bytes")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut conn)
        .await?;
    let got: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    assert_eq!(got, b"\x00bytes");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
    assert!(ttl > 0 && ttl <= 10_000, "{ttl}");
    env.cleanup().await;
    Ok(())
}
