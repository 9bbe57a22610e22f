//! Shared helpers: settings for a TestEnv, a running App, producing envelopes, reading state.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_core::{Envelope, NewTask, RetryPolicy, TaskId, TaskState, Topics};
use dispatch_processor::{App, Settings};
use dispatch_store::tasks::StateVersion;
pub use dispatch_testkit::stack::metrics;
use dispatch_testkit::{TestEnv, eventually};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{MySqlPool, Row};

/// Settings pointing at `env` ([`dispatch_testkit::stack::processor_settings`]: port 0, a group
/// of its own).
pub fn settings(env: &TestEnv) -> Settings {
    dispatch_testkit::stack::processor_settings(env)
}

/// A running processor.
pub type Running = dispatch_testkit::stack::Processor;

/// Starts an App with plain settings once it owns partitions.
pub async fn start(s: Settings) -> anyhow::Result<Running> {
    Running::start(App::builder(s)).await
}

/// The processor binary on `env` (its topics, database and a consumer group of its own; admin
/// and gRPC on port 0; warnings only), the environment of the test process's `DISPATCH_*`
/// settings removed. A caller adds its own `.env(..)` (a later one wins) and spawns it; it is
/// killed when dropped.
pub fn binary(env: &TestEnv) -> tokio::process::Command {
    use secrecy::ExposeSecret;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatch-processor"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DISPATCH_") && k.contains("__")) {
        cmd.env_remove(k);
    }
    cmd.env_remove("DISPATCH_CONFIG")
        .env("DISPATCH_KAFKA__BROKERS", &env.kafka.brokers)
        .env("DISPATCH_KAFKA__TOPIC_PREFIX", &env.kafka.topic_prefix)
        .env("DISPATCH_KAFKA__CREATE_TOPICS", "false")
        .env("DISPATCH_DATABASE__URL", env.db.url.expose_secret())
        .env("DISPATCH_CONSUMER__GROUP", format!("processor-{}", env.id))
        .env("DISPATCH_ADMIN__LISTEN", "127.0.0.1:0")
        .env("DISPATCH_GRPC__LISTEN", "127.0.0.1:0")
        .env("DISPATCH_TELEMETRY__LOG_LEVEL", "warn")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, ...) to a spawned binary.
pub async fn signal(child: &tokio::process::Child, sig: &str) -> anyhow::Result<()> {
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let status = tokio::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill {sig} {pid}");
    Ok(())
}

/// A first-attempt envelope.
pub fn task(task_type: &str, key: &str, payload: &str) -> Envelope {
    Envelope::submit(NewTask {
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        },
        ..dispatch_testkit::new_task(task_type, key, payload.as_bytes())
    })
}

/// A producer like the gateway's.
pub fn producer(env: &TestEnv) -> anyhow::Result<FutureProducer> {
    Ok(dispatch_runtime::kafka::producer_config(&env.kafka).create()?)
}

/// Produces raw bytes; returns (partition, offset).
pub async fn produce_raw(
    p: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: &dispatch_core::Headers,
) -> anyhow::Result<(i32, i64)> {
    let mut h = rdkafka::message::OwnedHeaders::new();
    for (k, v) in headers.iter() {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    let d = p
        .send(
            FutureRecord::to(topic).key(key).payload(value).headers(h),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
    Ok((d.partition, d.offset))
}

/// Produces an envelope to its priority topic.
pub async fn produce(p: &FutureProducer, t: &Topics, e: &Envelope) -> anyhow::Result<(i32, i64)> {
    produce_raw(p, &t.tasks(e.priority), e.key(), &e.encode(), &e.headers()).await
}

/// Stored (state, version) of `ids`.
pub async fn states(
    pool: &MySqlPool,
    ids: &[TaskId],
) -> anyhow::Result<HashMap<TaskId, StateVersion>> {
    let mut out = HashMap::new();
    for chunk in ids.chunks(500) {
        out.extend(dispatch_store::tasks::states(pool, chunk).await?);
    }
    Ok(out)
}

/// Waits until every id is stored in `want`.
pub async fn wait_all(
    pool: &MySqlPool,
    ids: &[TaskId],
    want: TaskState,
    timeout: Duration,
) -> anyhow::Result<HashMap<TaskId, StateVersion>> {
    eventually(&format!("{} tasks {want}", ids.len()), timeout, || async {
        let s = states(pool, ids).await.ok()?;
        (s.len() == ids.len() && s.values().all(|v| v.state == want)).then_some(s)
    })
    .await
}

/// Waits until every id is stored succeeded in `env` ([`wait_all`] for the state most tests wait
/// for).
pub async fn wait_succeeded(
    env: &TestEnv,
    ids: &[TaskId],
    timeout: Duration,
) -> anyhow::Result<HashMap<TaskId, StateVersion>> {
    wait_all(&env.pool, ids, TaskState::Succeeded, timeout).await
}

/// Produces a marker task (empty payload) of `task_type` on `key` and waits until it succeeded:
/// every record produced before it on that key has then been processed.
pub async fn run_marker(
    env: &TestEnv,
    p: &FutureProducer,
    task_type: &str,
    key: &str,
) -> anyhow::Result<()> {
    let marker = task(task_type, key, "");
    produce(p, &env.topics(), &marker).await?;
    wait_succeeded(env, &[marker.task_id], Duration::from_secs(30)).await?;
    Ok(())
}

/// One ledger row.
#[derive(Debug, Clone)]
pub struct Execution {
    pub task_id: TaskId,
    pub attempt: u32,
    pub executed_at: DateTime<Utc>,
}

/// The `simulate` ledger in execution order.
pub async fn executions(pool: &MySqlPool) -> anyhow::Result<Vec<Execution>> {
    let rows =
        sqlx::query("SELECT task_id, attempt, executed_at FROM handler_executions ORDER BY id")
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Execution {
                task_id: TaskId::from_slice(&r.try_get::<Vec<u8>, _>(0)?)?,
                attempt: r.try_get(1)?,
                executed_at: r.try_get(2)?,
            })
        })
        .collect()
}
