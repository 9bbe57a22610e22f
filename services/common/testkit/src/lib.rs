//! The test harness every integration test uses.
//!
//! All tests share one real local stack (deploy/local/stack.sh: Kafka, MariaDB, Redis on
//! loopback) and isolate themselves: [`TestEnv::new`] creates a fresh database (migrated), a unique
//! topic prefix (topics created) and a unique Redis key prefix, so tests run in parallel.
//! Endpoints come from `DISPATCH_TEST_KAFKA`, `DISPATCH_TEST_MYSQL` and `DISPATCH_TEST_REDIS`
//! (deploy/local/env.sh), defaulting to the local stack's ports.
//!
//! [`cli`] runs a service binary and checks its command line.

pub mod cli;

use std::time::Duration;

use dispatch_runtime::settings::{DbSettings, KafkaSettings, RedisSettings};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, Message};
use secrecy::SecretString;
use sqlx::MySqlPool;

/// One isolated environment on the shared stack.
pub struct TestEnv {
    /// Unique id of this environment (in names).
    pub id: String,
    /// Kafka settings with a unique topic prefix.
    pub kafka: KafkaSettings,
    /// Settings of this environment's own database.
    pub db: DbSettings,
    /// Redis settings with a unique key prefix.
    pub redis: RedisSettings,
    /// A pool on this environment's database (migrated).
    pub pool: MySqlPool,
    database: String,
    server_url: String,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl TestEnv {
    /// Creates the database (migrated up), the topics and the prefixes.
    ///
    /// # Errors
    /// The local stack is not reachable (start it with `deploy/local/stack.sh up`).
    pub async fn new() -> anyhow::Result<Self> {
        Self::with_partitions(3).await
    }

    /// As [`TestEnv::new`], with `partitions` per task topic.
    ///
    /// # Errors
    /// As [`TestEnv::new`].
    pub async fn with_partitions(partitions: i32) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
        let server_url = env_or(
            "DISPATCH_TEST_MYSQL",
            "mysql://dispatch:dispatch@127.0.0.1:3306",
        );
        let database = format!("dispatch_test_{id}");
        let admin = MySqlPool::connect(&format!("{server_url}/mysql"))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach MariaDB at {server_url} ({e}); run deploy/local/stack.sh up"
                )
            })?;
        sqlx::query(&format!("CREATE DATABASE `{database}`"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let db = DbSettings {
            url: SecretString::from(format!("{server_url}/{database}")),
            max_connections: 20,
            connect_timeout_ms: 5_000,
            ..DbSettings::default()
        };
        let pool = dispatch_store::connect(&db).await?;
        dispatch_store::migrate::up(&pool).await?;

        let kafka = KafkaSettings {
            brokers: env_or("DISPATCH_TEST_KAFKA", "127.0.0.1:9092"),
            topic_prefix: format!("t{id}."),
            partitions,
            linger_ms: 1,
            ..KafkaSettings::default()
        };
        dispatch_runtime::kafka::ensure_topics(
            &kafka,
            &dispatch_runtime::kafka::dispatch_topics(&kafka),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create topics on {} ({e}); run deploy/local/stack.sh up",
                kafka.brokers
            )
        })?;
        let redis = RedisSettings {
            url: env_or("DISPATCH_TEST_REDIS", "redis://127.0.0.1:6379/0"),
            key_prefix: format!("t{id}:"),
            ..RedisSettings::default()
        };
        Ok(Self {
            id,
            kafka,
            db,
            redis,
            pool,
            database,
            server_url,
        })
    }

    /// Topic names of this environment.
    pub fn topics(&self) -> dispatch_core::Topics {
        self.kafka.topics()
    }

    /// Inserts a pending outbox row for a new task, keyed `key`, on the default-priority topic,
    /// and returns its id (tests move it to other states with SQL).
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert_outbox_row(&self, key: &str) -> anyhow::Result<u64> {
        let row = dispatch_store::outbox::OutboxRecord {
            id: 0,
            task_id: dispatch_core::TaskId::new(),
            topic: self.topics().tasks(dispatch_core::Priority::Default),
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            headers: dispatch_core::Headers::default(),
            attempts: 0,
            created_at: chrono::Utc::now(),
        };
        Ok(dispatch_store::outbox::insert(&self.pool, &row).await?)
    }

    /// A consumer reading `topics` from the beginning (its own group).
    ///
    /// # Errors
    /// Kafka client errors.
    pub fn consumer(&self, topics: &[String]) -> anyhow::Result<StreamConsumer> {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set(
                "group.id",
                format!("test-{}-{}", self.id, uuid::Uuid::now_v7().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        c.subscribe(&refs)?;
        Ok(c)
    }

    /// Drops the database and deletes the topics (Redis keys are left: uniquely named, small).
    /// A test that fails before calling this leaves both behind; `scripts/test.sh` sweeps them
    /// before each run, so a long-lived local broker does not accumulate thousands of partitions.
    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Ok(admin) = MySqlPool::connect(&format!("{}/mysql", self.server_url)).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", self.database))
                .execute(&admin)
                .await;
        }
        let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .create();
        if let Ok(admin) = admin {
            let names: Vec<String> = dispatch_runtime::kafka::dispatch_topics(&self.kafka)
                .into_iter()
                .map(|t| t.name)
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let _ = admin.delete_topics(&refs, &opts).await;
        }
    }
}

/// A consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers.
    pub headers: dispatch_core::Headers,
}

/// Reads records from `consumer` until `done(records)` is true or `timeout` passes.
///
/// # Errors
/// Timeout (with how many records arrived) or a consumer error.
pub async fn consume_until(
    consumer: &StreamConsumer,
    timeout: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&out) {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("timed out after {timeout:?} with {} records", out.len())
            })??;
        let mut headers = dispatch_core::Headers::default();
        if let Some(h) = msg.headers() {
            for hd in h.iter() {
                headers.set(hd.key, hd.value.unwrap_or_default());
            }
        }
        out.push(Record {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().unwrap_or_default().to_vec(),
            value: msg.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    Ok(out)
}

/// Polls `cond` every 20 ms until it returns `Some` or `timeout` passes.
///
/// # Errors
/// Timeout, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
