//! The relay: a row never loses its place (a key stays blocked behind a row that cannot be
//! published, dead or not, here and at the gateway's routing), a key's rows are published one
//! after another, and only the fenced leader publishes.

use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::{Headers, Priority, TaskId};
use dispatch_gateway::durable::Durable;
use dispatch_gateway::producer::Producer;
use dispatch_gateway::relay::{self, Fence};
use dispatch_gateway::settings::OutboxSettings;
use dispatch_proto::v1 as pb;
use dispatch_store::outbox::{self, OutboxRecord};
use dispatch_testkit::{Record, TestEnv, consume_until, eventually};

use crate::harness::*;

/// Inserts a pending row on the default task topic whose value is `value`.
async fn row(env: &TestEnv, key: &str, value: &[u8]) -> anyhow::Result<u64> {
    let r = OutboxRecord {
        id: 0,
        task_id: TaskId::new(),
        topic: env.topics().tasks(Priority::Default),
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        headers: Headers::default(),
        attempts: 0,
        created_at: Utc::now(),
    };
    Ok(outbox::insert(&env.pool, &r).await?)
}

async fn state(env: &TestEnv, id: u64) -> anyhow::Result<(String, u32)> {
    Ok(
        sqlx::query_as("SELECT state, attempts FROM outbox WHERE id = ?")
            .bind(id)
            .fetch_one(&env.pool)
            .await?,
    )
}

/// What a record is: a raw row's value (short), or a gateway record's task id.
fn label(r: &Record) -> String {
    task_id_of(r)
        .unwrap_or_else(|| String::from_utf8_lossy(&r.value[..r.value.len().min(2)]).into())
}

fn fast_relay() -> OutboxSettings {
    OutboxSettings {
        relay_interval_ms: 20,
        lock_retry_ms: 50,
        relay_lease_ms: 100,
        relay_fence_ms: 20,
        relay_backoff_initial_ms: 20,
        relay_backoff_max_ms: 50,
        ..OutboxSettings::default()
    }
}

#[tokio::test]
async fn a_row_that_cannot_be_published_keeps_blocking_its_key_until_an_operator_acts()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // r1 is larger than the producer accepts: every publish of it fails (until an operator
    // fixes it); r2 and r3 are behind it on key k; r4 is on another key.
    let r1 = row(&env, "k", &[b'1'; 20_000]).await?;
    let r2 = row(&env, "k", b"r2").await?;
    let r3 = row(&env, "k", b"r3").await?;
    let r4 = row(&env, "j", b"r4").await?;
    let mut s = settings(&env);
    s.kafka
        .librdkafka
        .insert("message.max.bytes".into(), "10000".into());
    s.outbox = OutboxSettings {
        max_attempts: 3,
        ..fast_relay()
    };
    let gw = Gateway::spawn(s).await?;

    eventually("r1 dead, r4 published", Duration::from_secs(20), || async {
        let (a, _) = state(&env, r1).await.ok()?;
        let (b, _) = state(&env, r4).await.ok()?;
        (a == "dead" && b == "published").then_some(())
    })
    .await?;
    // A full relay round after r1 died: a later row of key j gets published...
    let sentinel = row(&env, "j", b"s1").await?;
    eventually("sentinel published", Duration::from_secs(20), || async {
        (state(&env, sentinel).await.ok()?.0 == "published").then_some(())
    })
    .await?;
    // ...while r2 and r3 were never even tried: the dead row keeps their place.
    assert_eq!(state(&env, r2).await?, ("pending".into(), 0));
    assert_eq!(state(&env, r3).await?, ("pending".into(), 0));
    // The gauge is process-wide and every relay round sets it: the relays of the other tests'
    // gateways in this process overwrite it with their counts, so it is awaited, not read once.
    eventually("blocked keys exported", Duration::from_secs(10), || async {
        let m = gw.metrics().await.ok()?;
        m.contains("dispatch_outbox_blocked_keys{reason=\"dead\"} 1")
            .then_some(())
    })
    .await?;

    // The gateway routes k behind the dead row, and the other keys straight to Kafka.
    let mut client = gw.client().await?;
    eventually("key j back on kafka", Duration::from_secs(10), || {
        let mut c = client.clone();
        async move {
            let r = c
                .submit_task(submit(spec("j", b"x"), KEY_ACME))
                .await
                .ok()?;
            (r.get_ref().accepted_via == pb::AcceptedVia::Kafka as i32).then_some(())
        }
    })
    .await?;
    let later = client
        .submit_task(submit(spec("k", b"x"), KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(later.accepted_via, pb::AcceptedVia::Outbox as i32);

    // An operator fixes the record and requeues it: the key drains in its order.
    sqlx::query("UPDATE outbox SET record_value = ? WHERE id = ?")
        .bind(b"r1".as_slice())
        .bind(r1)
        .execute(&env.pool)
        .await?;
    assert_eq!(
        dispatch_store::outbox_admin::requeue_dead(&env.pool, Some(&[r1]), false).await?,
        1
    );
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(30), |r| {
        r.iter()
            .any(|x| task_id_of(x).as_deref() == Some(later.task_id.as_str()))
    })
    .await?;
    let k: Vec<String> = records
        .iter()
        .filter(|r| r.key == b"k")
        .map(label)
        .collect();
    assert_eq!(k, ["r1", "r2", "r3", later.task_id.as_str()]);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_head_row_held_by_someone_else_is_not_overtaken() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let r1 = row(&env, "k", b"r1").await?;
    row(&env, "k", b"r2").await?;
    row(&env, "k", b"r3").await?;
    // Another relay (or an operator) holds r1's row lock, as an overlapping leader's claim did.
    let mut other = env.pool.begin().await?;
    sqlx::query("SELECT id FROM outbox WHERE id = ? FOR UPDATE")
        .bind(r1)
        .fetch_one(&mut *other)
        .await?;
    let mut s = settings(&env);
    s.outbox = fast_relay();
    let gw = Gateway::spawn(s).await?;
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| r.len() >= 2).await?;
    let got: Vec<String> = records.iter().map(label).collect();
    assert_eq!(got[..2], ["r1", "r2"], "the key's head first: {got:?}");
    other.rollback().await?;
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// The MySQL connection holding the relay lock, if any.
async fn lock_holder(env: &TestEnv) -> anyhow::Result<Option<i64>> {
    let (id,): (Option<i64>,) =
        sqlx::query_as("SELECT IS_USED_LOCK(CONCAT('dispatch_outbox_relay.', DATABASE()))")
            .fetch_one(&env.pool)
            .await?;
    Ok(id)
}

#[tokio::test]
async fn a_relay_that_lost_its_lock_publishes_nothing_more_and_its_successor_waits_its_lease()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.outbox = OutboxSettings {
        relay_lease_ms: 300,
        relay_fence_ms: 0, // ask MySQL before every record
        ..fast_relay()
    };
    let producer = Producer::new(&s.kafka, &s.outbox)?;
    let durable = Durable::new(producer, env.pool.clone());

    let a = Fence::acquire(&env.pool, &s.outbox)
        .await
        .map_err(anyhow::Error::msg)?
        .expect("lock free");
    let stop = tokio_util::sync::CancellationToken::new();
    a.wait_lease(&stop).await;
    let ids = [row(&env, "k", b"r1").await?, row(&env, "k", b"r2").await?];
    // A loses its lock (its connection is killed, as a network partition or a MySQL failover
    // would), and finds out before it publishes anything.
    let holder = lock_holder(&env).await?.expect("held");
    sqlx::query(&format!("KILL {holder}"))
        .execute(&env.pool)
        .await?;
    let a = tokio::sync::Mutex::new(a);
    let round = relay::relay_once(&durable, &env.pool, &s.outbox, &a).await?;
    assert!(round.lost_lock);
    assert_eq!(round.published, 0);
    for id in ids {
        assert_eq!(state(&env, id).await?.0, "pending");
    }

    // B takes the free lock and publishes nothing until its lease has passed.
    let acquired = Instant::now();
    let b = Fence::acquire(&env.pool, &s.outbox)
        .await
        .map_err(anyhow::Error::msg)?
        .expect("free after A's connection died");
    let b = tokio::sync::Mutex::new(b);
    let early = relay::relay_once(&durable, &env.pool, &s.outbox, &b).await?;
    assert_eq!((early.published, early.lost_lock), (0, false));
    b.lock().await.wait_lease(&stop).await;
    assert!(acquired.elapsed() >= Duration::from_millis(300));
    let round = relay::relay_once(&durable, &env.pool, &s.outbox, &b).await?;
    assert_eq!(round.published, 2);
    let consumer = env.consumer(&[env.topics().tasks(Priority::Default)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |r| r.len() >= 2).await?;
    let got: Vec<String> = records.iter().map(label).collect();
    assert_eq!(got, ["r1", "r2"]);
    b.into_inner().release().await;
    env.cleanup().await;
    Ok(())
}
