//! The happy path, per-key order and parallelism beyond partitions.

use std::collections::HashMap;
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
use dispatch_proto::v1 as pb;
use dispatch_testkit::{TestEnv, consume_until, eventually};
use prost::Message;

use crate::harness::{
    executions, metrics, produce, producer, settings, start, task, wait_succeeded,
};

#[tokio::test]
async fn tasks_succeed_with_one_row_each_and_events_for_every_change() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let e = task("noop", &format!("order-{}", i % 7), "");
        produce(&p, &env.topics(), &e).await?;
        ids.push(e.task_id);
    }
    let stored = wait_succeeded(&env, &ids, Duration::from_secs(30)).await?;
    for sv in stored.values() {
        assert_eq!(sv.version, TaskState::Succeeded.version(0, 1));
    }
    let attempts: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM task_attempts WHERE outcome = 'succeeded' AND attempt = 1",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(attempts, 20);

    // Every task's terminal change is on the events topic, keyed by task id, with a snapshot.
    let consumer = env.consumer(&[env.topics().events()])?;
    let records = consume_until(&consumer, Duration::from_secs(30), |rs| {
        rs.iter()
            .filter_map(|r| pb::TaskEvent::decode(r.value.as_slice()).ok())
            .filter(|e| e.state == pb::TaskState::Succeeded as i32)
            .count()
            >= 20
    })
    .await?;
    let mut succeeded: HashMap<String, pb::TaskEvent> = HashMap::new();
    for r in &records {
        let e = pb::TaskEvent::decode(r.value.as_slice())?;
        assert_eq!(r.key, e.task_id.as_bytes(), "events are keyed by task id");
        if e.state == pb::TaskState::Succeeded as i32 {
            succeeded.insert(e.task_id.clone(), e);
        }
    }
    for id in &ids {
        let e = succeeded.get(&id.to_string()).expect("succeeded event");
        assert_eq!(e.version, TaskState::Succeeded.version(0, 1));
        let t = e.task.as_ref().expect("snapshot");
        assert_eq!(t.task_type, "noop");
        assert_eq!(t.tenant, "acme");
        assert!(t.finished_at.is_some());
    }
    let m = metrics(app.admin).await?;
    assert!(
        m.contains("dispatch_tasks_finished_total{state=\"succeeded\"}"),
        "metrics: finished"
    );
    // Lag is refreshed on its own timer (every 500 ms here), so await its first round.
    let admin = app.admin;
    eventually(
        "the lag gauge is exported",
        Duration::from_secs(30),
        || async move {
            let m = metrics(admin).await.ok()?;
            m.contains("dispatch_consumer_lag_records").then_some(())
        },
    )
    .await?;
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn one_key_runs_in_submission_order_while_keys_run_in_parallel() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let app = start(settings(&env)).await?;
    let p = producer(&env)?;
    let mut by_key: HashMap<String, Vec<TaskId>> = HashMap::new();
    let mut ids = Vec::new();
    for round in 0..8 {
        for k in 0..25 {
            let key = format!("acct-{k}");
            let latency = if (round + k) % 3 == 0 { 8 } else { 1 };
            let e = task("simulate", &key, &format!(r#"{{"latency_ms":{latency}}}"#));
            produce(&p, &env.topics(), &e).await?;
            by_key.entry(key).or_default().push(e.task_id);
            ids.push(e.task_id);
        }
    }
    wait_succeeded(&env, &ids, Duration::from_secs(60)).await?;
    let key_of: HashMap<TaskId, &String> = by_key
        .iter()
        .flat_map(|(k, v)| v.iter().map(move |id| (*id, k)))
        .collect();
    let mut executed: HashMap<&String, Vec<TaskId>> = HashMap::new();
    for e in executions(&env.pool).await? {
        executed
            .entry(key_of[&e.task_id])
            .or_default()
            .push(e.task_id);
    }
    for (key, submitted) in &by_key {
        assert_eq!(&executed[key], submitted, "execution order of {key}");
    }
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// Counts how many executions overlap; sleeps so that overlapping is possible.
struct Overlap {
    now: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl dispatch_processor::Handler for Overlap {
    async fn handle(
        &self,
        _ctx: dispatch_processor::HandlerContext,
        _task: &dispatch_core::Envelope,
    ) -> Result<dispatch_processor::Outcome, dispatch_processor::HandlerError> {
        use std::sync::atomic::Ordering;
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(dispatch_processor::Outcome { result: None })
    }
}

/// One partition, 100 keys: records of different keys run concurrently (far beyond the partition
/// count), proven by the peak number of overlapping executions rather than by wall-clock time.
/// The records are produced before the processor starts: produced one by one while it ran, they
/// arrived about as fast as 20 ms executions finish, and the peak measured the producer (9 in
/// one fresh-clone run), not the processor.
#[tokio::test]
async fn one_partition_runs_many_keys_in_parallel() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(1).await?;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handler = Overlap {
        now: Default::default(),
        peak: peak.clone(),
    };
    let p = producer(&env)?;
    let (keys, per_key) = (100, 4);
    let mut ids = Vec::new();
    for _ in 0..per_key {
        for k in 0..keys {
            let e = task("overlap", &format!("k-{k}"), "");
            produce(&p, &env.topics(), &e).await?;
            ids.push(e.task_id);
        }
    }
    let app = crate::harness::Running::start(
        dispatch_processor::App::builder(settings(&env)).handler("overlap", handler),
    )
    .await?;
    wait_succeeded(&env, &ids, Duration::from_secs(60)).await?;
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    // Sequential processing of the one partition would never overlap (peak 1).
    assert!(
        peak >= 10,
        "peak concurrent executions on one partition: {peak}"
    );
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// The processor's consumer and its producer (retries, DLQ, events) both report librdkafka's
/// statistics as `dispatch_kafka_*` metrics; the client id is unique to this test.
#[tokio::test]
async fn the_consumer_and_the_producer_report_librdkafka_statistics() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let client_id = format!("processor-stats-{}", uuid::Uuid::now_v7().simple());
    let mut s = settings(&env);
    s.kafka
        .librdkafka
        .insert("statistics.interval.ms".into(), "200".into());
    s.kafka
        .librdkafka
        .insert("client.id".into(), client_id.clone());
    let app = start(s).await?;
    for role in ["consumer", "producer"] {
        let client = format!("client=\"{client_id}#{role}");
        eventually(
            &format!("the {role}'s statistics as metrics"),
            Duration::from_secs(15),
            || {
                let admin = app.admin;
                let client = client.clone();
                async move {
                    let text = metrics(admin).await.ok()?;
                    text.lines()
                        .any(|l| {
                            l.starts_with("dispatch_kafka_client_queue_messages{")
                                && l.contains("service=\"processor\"")
                                && l.contains(&client)
                        })
                        .then_some(())
                }
            },
        )
        .await?;
    }
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}

/// Runs until the test lets it go.
struct Held(std::sync::Arc<tokio::sync::Semaphore>);

#[async_trait::async_trait]
impl dispatch_processor::Handler for Held {
    async fn handle(
        &self,
        _ctx: dispatch_processor::HandlerContext,
        _task: &dispatch_core::Envelope,
    ) -> Result<dispatch_processor::Outcome, dispatch_processor::HandlerError> {
        let _ = self
            .0
            .acquire()
            .await
            .map_err(|e| dispatch_processor::HandlerError::Retryable(e.to_string()))?;
        Ok(dispatch_processor::Outcome { result: None })
    }
}

/// Per-key order is per tenant: another tenant's task on the same business key (same record key,
/// same partition) never waits behind this tenant's running one.
#[tokio::test]
async fn a_business_key_orders_one_tenants_tasks_not_another_tenants() -> anyhow::Result<()> {
    let env = TestEnv::with_partitions(1).await?;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let app = crate::harness::Running::start(
        dispatch_processor::App::builder(settings(&env)).handler("held", Held(gate.clone())),
    )
    .await?;
    let p = producer(&env)?;
    let held = task("held", "order-1", "");
    produce(&p, &env.topics(), &held).await?;
    eventually("the held task runs", Duration::from_secs(30), || async {
        let s = crate::harness::states(&env.pool, &[held.task_id])
            .await
            .ok()?;
        (s.get(&held.task_id)?.state == TaskState::Running).then_some(())
    })
    .await?;
    let mut other = task("noop", "order-1", "");
    other.tenant = dispatch_core::Tenant::parse("globex").map_err(anyhow::Error::msg)?;
    let mut same = task("noop", "order-1", "");
    same.tenant = held.tenant.clone();
    produce(&p, &env.topics(), &other).await?;
    produce(&p, &env.topics(), &same).await?;
    // Well within the held task's type timeout (30 s), after which it would free the lane anyway.
    wait_succeeded(&env, &[other.task_id], Duration::from_secs(10))
        .await
        .map_err(|e| e.context("another tenant's task waited behind this tenant's running one"))?;
    // The same tenant's next task on that key still waits for the held one.
    let s = crate::harness::states(&env.pool, &[held.task_id, same.task_id]).await?;
    assert_eq!(s[&held.task_id].state, TaskState::Running);
    assert!(
        s.get(&same.task_id)
            .is_none_or(|v| v.state == TaskState::Pending),
        "the same tenant's task on the key ran before the held one finished: {:?}",
        s.get(&same.task_id)
    );
    gate.add_permits(1);
    wait_succeeded(&env, &[held.task_id, same.task_id], Duration::from_secs(30)).await?;
    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
