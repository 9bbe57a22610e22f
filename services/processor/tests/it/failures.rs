//! Retries (never early), the DLQ with provenance, poison records and version fencing.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use dispatch_core::envelope::header;
use dispatch_core::{Envelope, Headers, RetryPolicy, TaskId, TaskState};
use dispatch_testkit::{TestEnv, consume_until};
use sqlx::Row;

use crate::harness::{
    executions, produce, produce_raw, producer, settings, start, states, task, wait_all,
    wait_succeeded,
};

#[tokio::test]
async fn retries_climb_the_ladder_and_never_run_early() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut e = task("simulate", &format!("r-{i}"), r#"{"fail_attempts":2}"#);
        e.retry = RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 200,
            max_backoff_ms: 2_000,
        };
        produce(&p, &env.topics(), &e).await?;
        ids.push(e.task_id);
    }
    let stored = wait_succeeded(&env, &ids, Duration::from_secs(60)).await?;
    for sv in stored.values() {
        assert_eq!(
            sv.version,
            TaskState::Succeeded.version(0, 3),
            "succeeded on attempt 3"
        );
    }
    // not-before of every retry record, from the retry topics.
    let t = env.topics();
    let consumer = env.consumer(&[t.retry(1), t.retry(2)])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |rs| rs.len() >= 16).await?;
    let mut not_before: HashMap<(TaskId, u32), i64> = HashMap::new();
    for r in &records {
        let e = Envelope::decode(&r.value)?;
        let level = t.retry_level_of(&r.topic).expect("retry topic");
        assert_eq!(
            level,
            e.attempt - 1,
            "attempt {} goes to retry.{}",
            e.attempt,
            e.attempt - 1
        );
        assert!(e.last_error.contains("simulated failure"));
        let nb = r
            .headers
            .get_i64(header::NOT_BEFORE)
            .expect("not-before header");
        not_before.insert((e.task_id, e.attempt), nb);
    }
    assert_eq!(not_before.len(), 16);
    let ex = executions(&env.pool).await?;
    assert_eq!(ex.len(), 24, "three executions per task");
    for e in ex.iter().filter(|e| e.attempt > 1) {
        let nb = not_before[&(e.task_id, e.attempt)];
        let ran_at = e.executed_at.timestamp_millis();
        assert!(
            ran_at >= nb,
            "attempt {} ran {} ms early",
            e.attempt,
            nb - ran_at
        );
    }
    let attempts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM task_attempts WHERE outcome = 'retryable'")
            .fetch_one(&env.pool)
            .await?;
    assert_eq!(attempts, 16);
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn dead_tasks_reach_the_dlq_with_provenance() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let permanent = task("simulate", "d-1", r#"{"fail_attempts":1,"permanent":true}"#);
    let mut exhausted = task("simulate", "d-2", r#"{"fail_attempts":9}"#);
    exhausted.retry.max_attempts = 2;
    let unknown = task("no.such.type", "d-3", "");
    let mut expired = task("noop", "d-4", "");
    expired.deadline = Some(Utc::now() - chrono::Duration::seconds(1));
    let mut origin = HashMap::new();
    for e in [&permanent, &exhausted, &unknown, &expired] {
        let (partition, offset) = produce(&p, &t, e).await?;
        origin.insert(e.task_id, (partition, offset));
    }
    let ids = [
        permanent.task_id,
        exhausted.task_id,
        unknown.task_id,
        expired.task_id,
    ];
    wait_all(&env.pool, &ids, TaskState::Dead, Duration::from_secs(30)).await?;

    let consumer = env.consumer(&[t.dlq()])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |rs| rs.len() >= 4).await?;
    let want = HashMap::from([
        (permanent.task_id, ("permanent", 1)),
        (exhausted.task_id, ("exhausted", 2)),
        (unknown.task_id, ("unknown_type", 1)),
        (expired.task_id, ("deadline", 1)),
    ]);
    for r in &records {
        let e = Envelope::decode(&r.value)?;
        let (class, attempt) = want[&e.task_id];
        let h = &r.headers;
        assert_eq!(h.get_str(header::ERROR_CLASS), Some(class));
        assert_eq!(
            h.get_i64(header::ATTEMPT),
            Some(i64::from(attempt)),
            "{class}"
        );
        let error = h.get_str(header::ERROR).expect("error header");
        assert!(!error.is_empty() && error.len() <= 1024);
        assert!(h.get_i64(header::DEAD_AT).is_some());
        let topic = h.get_str(header::ORIGINAL_TOPIC).expect("original topic");
        if attempt == 1 {
            let (partition, offset) = origin[&e.task_id];
            assert_eq!(topic, t.tasks(e.priority));
            assert_eq!(
                h.get_i64(header::ORIGINAL_PARTITION),
                Some(i64::from(partition))
            );
            assert_eq!(h.get_i64(header::ORIGINAL_OFFSET), Some(offset));
        } else {
            assert_eq!(topic, t.retry(1), "exhausted on its retry");
        }
        if class == "unknown_type" {
            assert!(error.contains("no.such.type"), "{error}");
        }
        // The index points at this very record.
        let row = sqlx::query(
            "SELECT error_class, dlq_partition, dlq_offset FROM dead_letters WHERE task_id = ?",
        )
        .bind(e.task_id.as_bytes().as_slice())
        .fetch_one(&env.pool)
        .await?;
        assert_eq!(row.try_get::<String, _>(0)?, class);
        assert_eq!(
            (row.try_get::<i32, _>(1)?, row.try_get::<i64, _>(2)?),
            (r.partition, r.offset)
        );
    }
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn poison_records_go_to_the_dlq_and_the_partition_moves_on() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let garbage = b"\xff\x00 definitely not a TaskEnvelope".to_vec();
    let topic = t.tasks(dispatch_core::Priority::Default);
    let (partition, offset) =
        produce_raw(&p, &topic, b"poison-key", &garbage, &Headers::default()).await?;
    // A later record on the same partition (same key) is still processed.
    let after = task("noop", "poison-key", "");
    let (p2, o2) = produce(&p, &t, &after).await?;
    assert_eq!(p2, partition);
    assert!(o2 > offset);
    wait_succeeded(&env, &[after.task_id], Duration::from_secs(30)).await?;

    let consumer = env.consumer(&[t.dlq()])?;
    let records = consume_until(&consumer, Duration::from_secs(20), |rs| !rs.is_empty()).await?;
    let r = &records[0];
    assert_eq!(r.value, garbage, "the raw bytes are kept");
    assert_eq!(r.headers.get_str(header::ERROR_CLASS), Some("poison"));
    assert_eq!(
        r.headers.get_str(header::ORIGINAL_TOPIC),
        Some(topic.as_str())
    );
    assert_eq!(r.headers.get_i64(header::ORIGINAL_OFFSET), Some(offset));
    assert!(
        r.headers
            .get_str(header::ERROR)
            .is_some_and(|e| e.contains("TaskEnvelope"))
    );
    let row = sqlx::query(
        "SELECT task_id, tenant, original_offset FROM dead_letters WHERE error_class = 'poison'",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(row.try_get::<Vec<u8>, _>(0)?, vec![0u8; 16], "nil task id");
    assert_eq!(row.try_get::<String, _>(1)?, "unknown");
    assert_eq!(row.try_get::<i64, _>(2)?, offset);
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn replayed_records_neither_regress_state_nor_run_again() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let t = env.topics();
    let e = task("simulate", "fence-1", r#"{"fail_attempts":1}"#);
    produce(&p, &t, &e).await?;
    let before = wait_succeeded(&env, &[e.task_id], Duration::from_secs(30)).await?;
    assert_eq!(executions(&env.pool).await?.len(), 2);

    // Replay the first attempt and its retry (as after a crash before the offset commit), then a
    // marker behind them on the same key: once the marker is done, the replays were processed.
    produce(&p, &t, &e).await?;
    let mut second = e.clone();
    second.attempt = 2;
    produce_raw(
        &p,
        &t.retry(1),
        second.key(),
        &second.encode(),
        &second.headers(),
    )
    .await?;
    let marker = task("simulate", "fence-1", "");
    produce(&p, &t, &marker).await?;
    let mut marker2 = task("simulate", "fence-1", "");
    marker2.attempt = 2;
    produce_raw(
        &p,
        &t.retry(1),
        marker2.key(),
        &marker2.encode(),
        &marker2.headers(),
    )
    .await?;
    wait_succeeded(
        &env,
        &[marker.task_id, marker2.task_id],
        Duration::from_secs(30),
    )
    .await?;

    let after = states(&env.pool, &[e.task_id]).await?;
    assert_eq!(after[&e.task_id], before[&e.task_id], "no regression");
    let runs = executions(&env.pool)
        .await?
        .iter()
        .filter(|x| x.task_id == e.task_id)
        .count();
    assert_eq!(runs, 2, "replays did not execute the task again");
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// A retry record that never reaches a consumer (acknowledged, then not on the topic: seen once
/// after a broker restart and a producer rebuild) must not leave its task RETRYING for good. The
/// schedule: attempt 1 fails, its retry (6 s out) goes to the retry topic, the processor stops
/// before it is due, the retry topic's records are deleted on the broker, a processor starts
/// again. Only the backstop wait in MySQL can bring the next attempt back: with
/// `--features fault-no-retry-backstop` the task stays RETRYING and this test fails.
#[tokio::test]
async fn a_retry_record_lost_on_kafka_is_published_again_from_mysql() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    let env = TestEnv::new().await?;
    let mut s = settings(&env);
    s.consumer.retry_topic_max_delay_ms = 20_000;
    s.scheduler.republish_after_ms = 2_000;
    s.scheduler.interval_ms = 200;
    let app = start(s.clone()).await?;
    let mut e = task("simulate", "lost-retry", r#"{"fail_attempts":1}"#);
    e.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 6_000,
        max_backoff_ms: 6_000,
    };
    produce(&producer(&env)?, &env.topics(), &e).await?;
    wait_all(
        &env.pool,
        &[e.task_id],
        TaskState::Retrying,
        Duration::from_secs(30),
    )
    .await?;
    app.stop().await?;
    let stored = states(&env.pool, &[e.task_id]).await?;
    assert_eq!(
        stored[&e.task_id].version,
        TaskState::Retrying.version(0, 1),
        "still waiting for attempt 2 when the processor stopped"
    );

    // The retry record goes: every record of the retry topic is deleted on the broker.
    let topic = env.topics().retry(1);
    let partitions = dispatch_runtime::kafka::dispatch_topics(&env.kafka)
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions)
        .ok_or_else(|| anyhow::anyhow!("no topic {topic}"))?;
    let mut all = TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition_offset(&topic, p, Offset::End)?;
    }
    let admin: AdminClient<DefaultClientContext> =
        dispatch_runtime::kafka::client_config(&env.kafka).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let after = admin.delete_records(&all, &opts).await?;
    let low: i64 = after
        .elements()
        .iter()
        .map(|el| match el.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert!(low >= 1, "the retry record was deleted: {after:?}");

    let app = start(s).await?;
    let done = wait_succeeded(&env, &[e.task_id], Duration::from_secs(40)).await?;
    assert_eq!(done[&e.task_id].version, TaskState::Succeeded.version(0, 2));
    let runs: Vec<u32> = executions(&env.pool)
        .await?
        .iter()
        .filter(|x| x.task_id == e.task_id)
        .map(|x| x.attempt)
        .collect();
    assert_eq!(runs, [1, 2], "each attempt ran once");
    let waits: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM retry_waits")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(waits, 0, "the backstop wait is gone once published");
    let text = app.metrics().await?;
    assert!(
        text.lines()
            .any(|l| l == "dispatch_retry_backstops_total 1"),
        "the backstop is counted: {:?}",
        text.lines()
            .filter(|l| l.contains("backstop"))
            .collect::<Vec<_>>()
    );
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
