//! One idempotency key, one task, one execution, with the same parameters: a key reused with
//! other parameters is refused on every instance, with Redis up or down, and within a batch.
//!
//! Over 400 lines because it holds the five conflict scenarios of one idempotency key (every
//! instance, racing instances, within a batch, a key nobody can check, a slow MySQL), all built on
//! the `variants()` table and `assert_conflict` at the top; the two dependency-failure cases (no
//! store to check the key, a slow MySQL) would move to a file of their own first.

use std::time::Duration;

use chrono::Utc;
use dispatch_core::Priority;
use dispatch_core::time::to_proto;
use dispatch_gateway::error::{CONFLICT_REASON, ERROR_DOMAIN};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_testkit::{TestEnv, consume_until};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::*;

fn keyed(idem: &str) -> pb::TaskSpec {
    let mut s = spec("order-1", b"{\"amount\":1}");
    s.idempotency_key = idem.into();
    s
}

/// Every way a resubmit can differ from `keyed`, with the field the refusal must name.
fn variants() -> Vec<(&'static str, pb::TaskSpec)> {
    let at = Utc::now() + chrono::Duration::hours(1);
    type Edit = Box<dyn Fn(&mut pb::TaskSpec)>;
    let edits: Vec<(&'static str, Edit)> = vec![
        (
            "business_key",
            Box::new(|s| s.business_key = "order-2".into()),
        ),
        (
            "priority",
            Box::new(|s| s.priority = pb::Priority::Critical as i32),
        ),
        ("task_type", Box::new(|s| s.task_type = "sms.send".into())),
        (
            "payload",
            Box::new(|s| s.payload = b"{\"amount\":2}".to_vec()),
        ),
        ("run_at", Box::new(move |s| s.run_at = Some(to_proto(at)))),
        (
            "deadline",
            Box::new(move |s| s.deadline = Some(to_proto(at + chrono::Duration::hours(1)))),
        ),
        (
            "retry_policy",
            Box::new(|s| {
                s.retry_policy = Some(pb::RetryPolicy {
                    max_attempts: 7,
                    ..Default::default()
                })
            }),
        ),
        ("timeout_ms", Box::new(|s| s.timeout_ms = 30_000)),
    ];
    edits
        .into_iter()
        .map(|(field, edit)| {
            let mut s = keyed("");
            edit(&mut s);
            (field, s)
        })
        .collect()
}

/// Asserts ALREADY_EXISTS with an ErrorInfo naming `field` and the original task.
fn assert_conflict(err: &tonic::Status, field: &str, task_id: &str, ctx: &str) {
    assert_eq!(err.code(), Code::AlreadyExists, "{ctx}: {err:?}");
    let info = err
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{ctx}: no ErrorInfo in {err:?}"));
    assert_eq!(info.reason, CONFLICT_REASON, "{ctx}");
    assert_eq!(info.domain, ERROR_DOMAIN, "{ctx}");
    assert_eq!(
        info.metadata.get("field").map(String::as_str),
        Some(field),
        "{ctx}"
    );
    assert_eq!(
        info.metadata.get("task_id").map(String::as_str),
        Some(task_id),
        "{ctx}"
    );
    assert!(err.message().contains(field), "{ctx}: {}", err.message());
}

/// Records of `task_id` on all three task topics, read up to a sentinel per topic submitted
/// afterwards (a record produced before the sentinel is before it on its partition... and the
/// sentinels share one key, so every earlier record of that key is read first).
async fn records_of(
    env: &TestEnv,
    client: &mut TaskServiceClient<Channel>,
    task_id: &str,
) -> anyhow::Result<usize> {
    let mut sentinels = Vec::new();
    for p in [
        pb::Priority::Critical,
        pb::Priority::Default,
        pb::Priority::Low,
    ] {
        for key in ["order-1", "order-2"] {
            let mut s = spec(key, b"sentinel");
            s.priority = p as i32;
            sentinels.push(
                client
                    .submit_task(submit(s, KEY_ACME))
                    .await?
                    .into_inner()
                    .task_id,
            );
        }
    }
    let topics: Vec<String> = Priority::ALL
        .iter()
        .map(|p| env.topics().tasks(*p))
        .collect();
    let consumer = env.consumer(&topics)?;
    let records = consume_until(&consumer, Duration::from_secs(30), |r| {
        sentinels.iter().all(|s| {
            r.iter()
                .any(|x| task_id_of(x).as_deref() == Some(s.as_str()))
        })
    })
    .await?;
    Ok(records
        .iter()
        .filter(|r| task_id_of(r).as_deref() == Some(task_id))
        .count())
}

fn without_redis(env: &TestEnv) -> dispatch_gateway::Settings {
    let mut s = settings(env);
    s.redis.url = "redis://127.0.0.1:1/0".into();
    s.redis.connect_timeout_ms = 200;
    s
}

#[tokio::test]
async fn a_reused_key_with_other_parameters_is_refused_everywhere_naming_the_field()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let a = Gateway::spawn(settings(&env)).await?;
    let b = Gateway::spawn(settings(&env)).await?;
    let no_redis = Gateway::spawn(without_redis(&env)).await?;
    let mut ca = a.client().await?;
    let first = ca
        .submit_task(submit(keyed("pay-1"), KEY_ACME))
        .await?
        .into_inner();
    assert!(!first.duplicate);

    let mut clients = [
        ("instance A", ca.clone()),
        ("instance B", b.client().await?),
        ("instance without redis", no_redis.client().await?),
    ];
    for (name, c) in &mut clients {
        for (field, mut other) in variants() {
            other.idempotency_key = "pay-1".into();
            let err = c
                .submit_task(submit(other, KEY_ACME))
                .await
                .expect_err("a different parameter is refused");
            assert_conflict(&err, field, &first.task_id, &format!("{name}, {field}"));
        }
        // The same parameters are the same task.
        // (Without Redis, a task neither stored nor in the outbox yet is produced again: a second
        // record of the same task id, which the processor dedupes.)
        let again = c
            .submit_task(submit(keyed("pay-1"), KEY_ACME))
            .await?
            .into_inner();
        assert_eq!(again.task_id, first.task_id, "{name}");
    }

    // A key first used where Redis is down is bound in MySQL: an instance with Redis, which has
    // never seen it, refuses other parameters too (and does not keep the key in Redis).
    let mut cn = no_redis.client().await?;
    let second = cn
        .submit_task(submit(keyed("pay-2"), KEY_ACME))
        .await?
        .into_inner();
    let mut other = keyed("pay-2");
    other.payload = b"{\"amount\":3}".to_vec();
    for c in [&mut ca, &mut cn] {
        let err = c
            .submit_task(submit(other.clone(), KEY_ACME))
            .await
            .expect_err("refused");
        assert_conflict(&err, "payload", &second.task_id, "key bound without redis");
    }
    let again = ca
        .submit_task(submit(keyed("pay-2"), KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(again.task_id, second.task_id);

    // Another tenant's identical key is its own task, with its own parameters.
    let mut theirs = keyed("pay-1");
    theirs.payload = b"other".to_vec();
    let g = ca
        .submit_task(submit(theirs, KEY_GLOBEX))
        .await?
        .into_inner();
    assert!(!g.duplicate);
    assert_ne!(g.task_id, first.task_id);

    // Nothing refused was produced: one record of the first task (the Redis-less instance's
    // duplicate of the same parameters may add a second record of the SAME task id, which the
    // processor dedupes; it must not carry other parameters).
    let n = records_of(&env, &mut ca, &first.task_id).await?;
    assert!((1..=2).contains(&n), "{n} records of the first task");
    for gw in [a, b, no_redis] {
        gw.stop().await?;
    }
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn racing_instances_without_redis_accept_one_parameter_set() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let a = Gateway::spawn(without_redis(&env)).await?;
    let b = Gateway::spawn(without_redis(&env)).await?;
    for round in 0..5 {
        let key = format!("race-{round}");
        let mut x = keyed(&key);
        x.payload = b"from-a".to_vec();
        let mut y = keyed(&key);
        y.payload = b"from-b".to_vec();
        let (mut ca, mut cb) = (a.client().await?, b.client().await?);
        let (ra, rb) = tokio::join!(
            ca.submit_task(submit(x, KEY_ACME)),
            cb.submit_task(submit(y, KEY_ACME))
        );
        let oks = [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(oks, 1, "round {round}: {ra:?} / {rb:?}");
        let err = ra.err().or(rb.err()).expect("one refused");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }
    a.stop().await?;
    b.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn repeats_of_a_key_within_a_batch_get_the_first_items_answer() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    for (name, s) in [("redis", settings(&env)), ("no-redis", without_redis(&env))] {
        let gw = Gateway::spawn(s).await?;
        let mut client = gw.client().await?;
        let k1 = format!("batch-{name}-1");
        let mut changed = keyed(&k1);
        changed.payload = b"changed".to_vec();
        let mut invalid = keyed(&k1);
        invalid.task_type = String::new();
        let tasks = vec![
            invalid,                           // 0: invalid, claims nothing
            keyed(&k1),                        // 1: leads k1
            keyed(&k1),                        // 2: same parameters: item 1's answer
            keyed(&format!("batch-{name}-2")), // 3: another key
            changed,                           // 4: k1 with another payload
            keyed(&k1),                        // 5: same parameters again
        ];
        let r = client
            .submit_tasks(authed(pb::SubmitTasksRequest { tasks }, KEY_ACME))
            .await?
            .into_inner()
            .results;
        assert_eq!(r.len(), 6);
        match &r[0].outcome {
            Some(pb::submit_result::Outcome::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32)
            }
            o => panic!("{name}: item 0 {o:?}"),
        }
        let lead = accepted(&r[1]).unwrap_or_else(|| panic!("{name}: item 1 {:?}", r[1]));
        assert!(!lead.duplicate, "{name}");
        for i in [2, 5] {
            let a = accepted(&r[i]).unwrap_or_else(|| panic!("{name}: item {i} {:?}", r[i]));
            assert!(a.duplicate, "{name}: item {i}");
            assert_eq!(
                (&a.task_id, &a.topic, a.partition, a.offset, a.accepted_via),
                (
                    &lead.task_id,
                    &lead.topic,
                    lead.partition,
                    lead.offset,
                    lead.accepted_via
                ),
                "{name}: item {i} has item 1's answer"
            );
        }
        assert!(accepted(&r[3]).is_some(), "{name}");
        match &r[4].outcome {
            Some(pb::submit_result::Outcome::Error(e)) => {
                assert_eq!(e.code, Code::AlreadyExists as i32, "{name}");
                let fields: Vec<&str> = e.violations.iter().map(|v| v.field.as_str()).collect();
                assert_eq!(fields, ["tasks[4].payload"], "{name}");
            }
            o => panic!("{name}: item 4 {o:?}"),
        }
        assert_eq!(
            records_of(&env, &mut client, &lead.task_id).await?,
            1,
            "{name}: one record for the key"
        );
        gw.stop().await?;
    }
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_key_nobody_can_check_is_refused_not_accepted() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Redis and MySQL both unreachable, Kafka up.
    let s = mysql_down(without_redis(&env));
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    // Without an idempotency key there is nothing to check: Kafka takes it.
    let plain = client
        .submit_task(submit(spec("order-1", b"x"), KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(plain.accepted_via, pb::AcceptedVia::Kafka as i32);
    // With one, accepting could accept a reuse with other parameters: UNAVAILABLE, retry later.
    let err = client
        .submit_task(submit(keyed("unchecked-1"), KEY_ACME))
        .await
        .expect_err("nothing can compare its parameters");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("idempotency"), "{}", err.message());
    gw.stop().await?;

    // With Redis up (MySQL still down), Redis compares: accepted, and a reuse refused.
    let s = mysql_down(settings(&env));
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    let first = client
        .submit_task(submit(keyed("unchecked-2"), KEY_ACME))
        .await?
        .into_inner();
    let mut other = keyed("unchecked-2");
    other.priority = pb::Priority::Low as i32;
    let err = client
        .submit_task(submit(other, KEY_ACME))
        .await
        .expect_err("redis compares");
    assert_conflict(&err, "priority", &first.task_id, "mysql down");
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_slow_mysql_does_not_hold_a_keyed_submit_past_its_bound() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = without_redis(&env);
    s.idempotency.store_timeout_ms = 300;
    let gw = Gateway::spawn(s).await?;
    let mut client = gw.client().await?;
    let first = client
        .submit_task(submit(keyed("slow-1"), KEY_ACME))
        .await?
        .into_inner();
    // The key's row is locked (a long transaction elsewhere): binding it waits.
    let mut tx = env.pool.begin().await?;
    sqlx::query("SELECT task_id FROM idempotency_keys WHERE task_id = ? FOR UPDATE")
        .bind(id(&first.task_id).as_bytes().as_slice())
        .fetch_one(&mut *tx)
        .await?;
    let start = std::time::Instant::now();
    let err = client
        .submit_task(submit(keyed("slow-1"), KEY_ACME))
        .await
        .expect_err("cannot be checked in time");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        start.elapsed()
    );
    tx.rollback().await?;
    // Once MySQL answers again, the same parameters are the same task.
    let again = client
        .submit_task(submit(keyed("slow-1"), KEY_ACME))
        .await?
        .into_inner();
    assert_eq!(again.task_id, first.task_id);
    gw.stop().await?;
    env.cleanup().await;
    Ok(())
}
