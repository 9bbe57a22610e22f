//! Hostile schedules for the processor's guarantees (issue: the guarantees hold under hostile
//! schedules): a handler that panics, a partition that moves while handlers run longer than the
//! drain bound, cancels from another tenant, a cancel of a redriven task.
//!
//! Over 400 lines because it holds one test per hostile schedule, sharing `cancel_by`,
//! `committed_to_end` and `read_events`; the three scheduling tests (a hot key beside a limited
//! type, mixed backoffs, retries due from MySQL) would move to a file of their own first.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::{Envelope, TaskState, Tenant};
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use prost::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::harness::{produce, producer, settings, start, states, task, wait_all, wait_succeeded};

fn cancel_by(e: &Envelope, tenant: &str) -> Envelope {
    Envelope::cancel(
        e.task_id,
        Tenant::parse(tenant).expect("tenant"),
        e.business_key.clone(),
        e.priority,
        "hostile".into(),
    )
}

/// Whether the group's committed offset of every partition of `topic` is its end.
async fn committed_to_end(env: &TestEnv, group: &str, topic: &str) -> anyhow::Result<bool> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..env.kafka.partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5))?;
    for e in committed.elements() {
        let (_, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(5))?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        if at < high {
            return Ok(false);
        }
    }
    Ok(true)
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt_and_the_partition_moves_on() -> anyhow::Result<()>
{
    let env = TestEnv::with_partitions(1).await?;
    let s = settings(&env);
    let group = s.consumer.group.clone();
    let app = start(s).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let mut normal = Vec::new();
    let panicking = task("simulate", "same-key", r#"{"panic":true}"#);
    for i in 0..20 {
        let e = task("simulate", "same-key", r#"{"latency_ms":1}"#);
        normal.push(e.task_id);
        produce(&p, &t, &e).await?;
        if i == 5 {
            produce(&p, &t, &panicking).await?;
        }
    }
    let dead = wait_all(
        &env.pool,
        &[panicking.task_id],
        TaskState::Dead,
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(
        dead[&panicking.task_id].version >> 3 & 0x0FFF_FFFF,
        4,
        "all 4 attempts ran"
    );
    wait_succeeded(&env, &normal, Duration::from_secs(60)).await?;
    let error: Vec<u8> = sqlx::query_scalar("SELECT last_error FROM tasks WHERE task_id = ?")
        .bind(panicking.task_id.as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?;
    let error = String::from_utf8_lossy(&error);
    assert!(error.contains("handler panicked"), "{error}");
    let topic = t.tasks(dispatch_core::Priority::Default);
    eventually(
        "offsets committed to the end",
        Duration::from_secs(30),
        || async {
            committed_to_end(&env, &group, &topic)
                .await
                .ok()
                .filter(|d| *d)
        },
    )
    .await?;
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// Two owners of one partition across a rebalance, handlers far longer than the drain bound,
/// outcomes random (success or permanent failure): the old owner's handlers are stopped when the
/// drain bound is over and nothing of theirs is committed, so no task's terminal state ever
/// changes (read from the events topic: every terminal event of a task is the same state).
#[tokio::test]
async fn a_moved_partition_never_changes_a_committed_outcome() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(4).await?;
    let mut s = settings(&env);
    s.consumer.rebalance_drain_ms = 300;
    let first = start(s.clone()).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let mut ids = Vec::new();
    for i in 0..24 {
        let e = task(
            "simulate",
            &format!("k-{i}"),
            r#"{"latency_ms":2500,"fail_rate":0.5,"permanent":true}"#,
        );
        ids.push(e.task_id);
        produce(&p, &t, &e).await?;
    }
    // Every task is running on the first owner; then a second instance joins and takes half.
    eventually("tasks running", Duration::from_secs(30), || async {
        let s = states(&env.pool, &ids).await.ok()?;
        (s.len() == ids.len() && s.values().all(|v| v.state == TaskState::Running)).then_some(())
    })
    .await?;
    let second = start(s).await?;
    eventually("every task finished", Duration::from_secs(90), || async {
        let s = states(&env.pool, &ids).await.ok()?;
        (s.len() == ids.len() && s.values().all(|v| v.state.is_terminal())).then_some(())
    })
    .await?;
    // Outcomes the old owner could still report would land within a handler's latency.
    first.stop().await?;
    second.stop().await?;
    let final_states = states(&env.pool, &ids).await?;
    let events = read_events(&env).await?;
    let mut terminal: HashMap<String, Vec<i32>> = HashMap::new();
    for ev in &events {
        if TaskState::from_proto(ev.state()).is_some_and(TaskState::is_terminal) {
            terminal
                .entry(ev.task_id.clone())
                .or_default()
                .push(ev.state);
        }
    }
    for id in &ids {
        let seen = terminal.get(&id.to_string()).cloned().unwrap_or_default();
        assert!(!seen.is_empty(), "{id}: no terminal event");
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "{id}: terminal state changed: {seen:?}"
        );
        assert_eq!(
            seen[0],
            final_states[id].state.to_proto() as i32,
            "{id}: last terminal event differs from MySQL"
        );
    }
    env.cleanup().await;
    Ok(())
}

/// Every event on the events topic, read to its end.
async fn read_events(env: &TestEnv) -> anyhow::Result<Vec<pb::TaskEvent>> {
    let topic = env.topics().events();
    let c = env.consumer(std::slice::from_ref(&topic))?;
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka.brokers)
        .create()?;
    let md = probe.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
    let mut total = 0i64;
    for part in md.topics()[0].partitions() {
        let (low, high) = probe.fetch_watermarks(&topic, part.id(), Duration::from_secs(5))?;
        total += high - low;
    }
    let total = usize::try_from(total)?;
    let records = consume_until(&c, Duration::from_secs(30), |r| r.len() >= total).await?;
    records
        .iter()
        .map(|r| Ok(pb::TaskEvent::decode(r.value.as_slice())?))
        .collect()
}

#[tokio::test]
async fn a_cancel_never_touches_another_tenants_task() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();
    // globex cancels the id acme's task will have before acme's submit is processed...
    let ahead = task("simulate", "x-1", "");
    produce(&p, &t, &cancel_by(&ahead, "globex")).await?;
    produce(&p, &t, &ahead).await?;
    // ...and cancels acme's running task.
    let running = task("simulate", "x-2", r#"{"latency_ms":1500}"#);
    produce(&p, &t, &running).await?;
    eventually("running", Duration::from_secs(30), || async {
        let s = states(&env.pool, &[running.task_id]).await.ok()?;
        (s.get(&running.task_id)?.state == TaskState::Running).then_some(())
    })
    .await?;
    produce(&p, &t, &cancel_by(&running, "globex")).await?;
    let done = wait_succeeded(
        &env,
        &[ahead.task_id, running.task_id],
        Duration::from_secs(30),
    )
    .await?;
    assert!(done.values().all(|s| s.tenant == "acme"));
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_redriven_task_can_be_cancelled() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let first = task("simulate", "r-1", r#"{"permanent":true,"fail_rate":1.0}"#);
    produce(&p, &t, &first).await?;
    wait_all(
        &env.pool,
        &[first.task_id],
        TaskState::Dead,
        Duration::from_secs(30),
    )
    .await?;
    // What a redrive publishes: generation 1, attempt 1 (this time a long success).
    let mut again = first.clone();
    again.generation = 1;
    again.payload = br#"{"latency_ms":3000}"#.to_vec();
    produce(&p, &t, &again).await?;
    eventually("redrive running", Duration::from_secs(30), || async {
        let s = states(&env.pool, &[first.task_id]).await.ok()?;
        let s = s.get(&first.task_id)?;
        (s.state == TaskState::Running && s.generation == 1).then_some(())
    })
    .await?;
    // The cancel command knows no generation (the gateway does not read MySQL to send it).
    produce(&p, &t, &cancel_by(&first, "acme")).await?;
    let s = wait_all(
        &env.pool,
        &[first.task_id],
        TaskState::Cancelled,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(s[&first.task_id].generation, 1);
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// Four execution slots; a hot key with 60 queued records of 100 ms, and a type limited to one
/// execution at a time with 30 queued records of 100 ms, on other keys. Waiting for a lane or a
/// type permit holds no slot, so ordinary work on other keys finishes long before either backlog.
#[tokio::test]
async fn a_hot_key_and_a_limited_type_never_take_every_slot() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(2).await?;
    let mut s = settings(&env);
    s.consumer.max_concurrency = 4;
    s.handlers.types.insert(
        "slow.limited".into(),
        dispatch_processor::settings::TypeSettings {
            kind: "simulate".into(),
            timeout_ms: None,
            concurrency: Some(1),
        },
    );
    let app = start(s).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let slow = r#"{"latency_ms":100}"#;
    let mut backlog = Vec::new();
    for i in 0..60 {
        let e = task("simulate", "hot", slow);
        backlog.push(e.task_id);
        produce(&p, &t, &e).await?;
        if i < 30 {
            let e = task("slow.limited", &format!("limited-{i}"), slow);
            backlog.push(e.task_id);
            produce(&p, &t, &e).await?;
        }
    }
    let mut others = Vec::new();
    for i in 0..20 {
        let e = task("simulate", &format!("other-{i}"), r#"{"latency_ms":5}"#);
        others.push(e.task_id);
        produce(&p, &t, &e).await?;
    }
    wait_succeeded(&env, &others, Duration::from_secs(30)).await?;
    let done = states(&env.pool, &backlog)
        .await?
        .values()
        .filter(|s| s.state == TaskState::Succeeded)
        .count();
    assert!(
        done < backlog.len() / 2,
        "the other keys finished while most of the backlog waited ({done} of {} done)",
        backlog.len()
    );
    wait_succeeded(&env, &backlog, Duration::from_secs(60)).await?;
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// 200 tasks back off for half an hour to an hour (their retries wait in MySQL), then 20 tasks
/// back off for 100 ms on the same retry level: the short retries run at once. On the retry
/// topics alone, a partition's head (a long retry) would hold every short one behind it.
#[tokio::test]
async fn a_one_hour_backoff_never_delays_a_100_ms_retry() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(2).await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let fail_once = r#"{"fail_attempts":1}"#;
    let mut long = Vec::new();
    for i in 0..200 {
        let mut e = task("simulate", &format!("long-{i}"), fail_once);
        e.retry.initial_backoff_ms = 3_600_000;
        e.retry.max_backoff_ms = 3_600_000;
        long.push(e.task_id);
        produce(&p, &t, &e).await?;
    }
    wait_all(
        &env.pool,
        &long,
        TaskState::Retrying,
        Duration::from_secs(60),
    )
    .await?;
    let mut short = Vec::new();
    for i in 0..20 {
        let mut e = task("simulate", &format!("short-{i}"), fail_once);
        e.retry.initial_backoff_ms = 100;
        e.retry.max_backoff_ms = 100;
        short.push(e.task_id);
        produce(&p, &t, &e).await?;
    }
    wait_succeeded(&env, &short, Duration::from_secs(20)).await?;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tasks t JOIN retry_waits w ON w.task_id = t.task_id AND w.version = t.version \
         WHERE t.state = 'retrying' AND w.due_at > NOW(6) + INTERVAL 25 MINUTE",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(waiting, 200, "the long retries wait in MySQL");
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// Every retry waits in MySQL (no retry topic): the scheduler publishes each when due.
#[tokio::test]
async fn retries_waiting_in_mysql_run_when_due() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.consumer.retry_topic_max_delay_ms = 0;
    let app = start(s).await?;
    let p = producer(&env)?;
    let mut e = task("simulate", "db-retry", r#"{"fail_attempts":2}"#);
    e.retry.initial_backoff_ms = 300;
    e.retry.max_backoff_ms = 300;
    produce(&p, &env.topics(), &e).await?;
    wait_succeeded(&env, &[e.task_id], Duration::from_secs(30)).await?;
    let attempts: Vec<u32> =
        sqlx::query_scalar("SELECT attempt FROM task_attempts WHERE task_id = ? ORDER BY attempt")
            .bind(e.task_id.as_bytes().as_slice())
            .fetch_all(&env.pool)
            .await?;
    assert_eq!(attempts, vec![1, 2, 3]);
    // A wait ends once its retry is published: none is left behind.
    let waits: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM retry_waits WHERE task_id = ?")
        .bind(e.task_id.as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(waits, 0, "a finished task has no retry waiting");
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
