//! The test harness every integration test uses.
//!
//! All tests share one real local stack (deploy/local/stack.sh: Kafka, MariaDB, Redis on
//! loopback) and isolate themselves: [`TestEnv::new`] creates a fresh database (migrated), a unique
//! topic prefix (topics created) and a unique Redis key prefix, so tests run in parallel.
//! Endpoints come from `DISPATCH_TEST_KAFKA`, `DISPATCH_TEST_MYSQL` and `DISPATCH_TEST_REDIS`
//! (deploy/local/env.sh), defaulting to the local stack's ports.
//!
//! [`auth`] holds the keys every test uses and requests that carry them; [`cli`] runs a service
//! binary and checks its command line; [`task_write`] is a processor's state write, for tests that
//! store a task directly, [`dead_letter`] a DLQ index row; [`LogCapture`] keeps log lines for a
//! test to read; [`tls`] is a TLS listener for clients' TLS tests; [`stack`] (feature `stack`) runs
//! the services in-process.

pub mod auth;
pub mod catalogue;
pub mod cli;
mod logs;
#[cfg(feature = "stack")]
pub mod stack;
pub mod tls;
mod write;

pub use logs::LogCapture;
pub use write::{dead_letter, new_task, new_workflow, node_task, task_write};

use std::time::Duration;

use dispatch_runtime::settings::{DbSettings, KafkaSettings, RedisSettings};
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
        let server_url = env_or(
            "DISPATCH_TEST_MYSQL",
            "mysql://dispatch:dispatch@127.0.0.1:3306",
        );
        let kafka = KafkaSettings {
            brokers: env_or("DISPATCH_TEST_KAFKA", "127.0.0.1:9092"),
            partitions,
            ..KafkaSettings::default()
        };
        let redis = RedisSettings {
            url: env_or("DISPATCH_TEST_REDIS", "redis://127.0.0.1:6379/0"),
            ..RedisSettings::default()
        };
        Self::create(server_url, DbSettings::default(), kafka, redis, "up").await
    }

    /// As [`TestEnv::new`] on the TLS stack (`deploy/local/stack.sh tls-up`): every connection
    /// over TLS, verified against the stack's CA (MySQL `verify_identity`, Kafka SASL_SSL with
    /// SCRAM-SHA-512, `rediss://`).
    ///
    /// # Errors
    /// The TLS stack is not reachable.
    pub async fn on_tls_stack(tls: &TlsStack) -> anyhow::Result<Self> {
        Self::create(
            tls.mysql.clone(),
            tls.db(),
            KafkaSettings {
                partitions: 3,
                ..tls.kafka()
            },
            tls.redis(),
            "tls-up",
        )
        .await
    }

    async fn create(
        server_url: String,
        db_base: DbSettings,
        kafka: KafkaSettings,
        redis: RedisSettings,
        stack_command: &str,
    ) -> anyhow::Result<Self> {
        let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_string();
        let database = format!("dispatch_test_{id}");
        let admin = MySqlPool::connect(&format!("{server_url}/mysql"))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach MariaDB at {server_url} ({e}); run deploy/local/stack.sh {stack_command}"
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
            ..db_base
        };
        let pool = dispatch_store::connect(&db).await?;
        dispatch_store::migrate::up(&pool).await?;

        let kafka = KafkaSettings {
            topic_prefix: format!("t{id}."),
            linger_ms: 1,
            ..kafka
        };
        dispatch_runtime::kafka::ensure_topics(
            &kafka,
            &dispatch_runtime::kafka::dispatch_topics(&kafka),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create topics on {} ({e}); run deploy/local/stack.sh {stack_command}",
                kafka.brokers
            )
        })?;
        let redis = RedisSettings {
            key_prefix: format!("t{id}:"),
            ..redis
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
        let c: StreamConsumer = dispatch_runtime::kafka::client_config(&self.kafka)
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
        let admin: Result<AdminClient<DefaultClientContext>, _> =
            dispatch_runtime::kafka::client_config(&self.kafka).create();
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

/// The TLS stack's endpoints and files (`deploy/local/stack.sh tls-up`), from the
/// `DISPATCH_TEST_TLS_*` variables deploy/local/env.sh exports.
#[derive(Debug, Clone)]
pub struct TlsStack {
    /// Directory of `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`,
    /// `other-ca.pem`.
    pub dir: std::path::PathBuf,
    /// Kafka's SASL_SSL listener (SCRAM).
    pub kafka_sasl_ssl: String,
    /// Kafka's SSL listener (client certificates verified when presented).
    pub kafka_ssl: String,
    /// SCRAM user.
    pub sasl_username: String,
    /// SCRAM password.
    pub sasl_password: String,
    /// `mysql://user:password@host:port` of the MariaDB that requires TLS.
    pub mysql: String,
    /// `rediss://host:port` of the TLS Redis.
    pub redis: String,
}

impl TlsStack {
    /// `None` when `DISPATCH_TEST_TLS_DIR` is unset (deploy/local/env.sh sets it).
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var("DISPATCH_TEST_TLS_DIR")
            .ok()
            .filter(|v| !v.is_empty())?;
        Some(Self {
            dir: dir.into(),
            kafka_sasl_ssl: env_or("DISPATCH_TEST_TLS_KAFKA", "127.0.0.1:19094"),
            kafka_ssl: env_or("DISPATCH_TEST_TLS_KAFKA_SSL", "127.0.0.1:19093"),
            sasl_username: env_or("DISPATCH_TEST_TLS_SASL_USERNAME", "dispatch"),
            sasl_password: env_or("DISPATCH_TEST_TLS_SASL_PASSWORD", "dispatch-scram-secret"),
            mysql: env_or(
                "DISPATCH_TEST_TLS_MYSQL",
                "mysql://dispatch:dispatch@127.0.0.1:13306",
            ),
            redis: env_or("DISPATCH_TEST_TLS_REDIS", "rediss://127.0.0.1:16379"),
        })
    }

    /// A file of the stack's PKI (`ca.pem`, `server.pem`, ...).
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// Kafka over SASL_SSL with SCRAM-SHA-512, verified against the stack's CA.
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.kafka_sasl_ssl.clone(),
            security_protocol: "sasl_ssl".into(),
            ssl_ca_file: Some(self.file("ca.pem")),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: Some(self.sasl_username.clone()),
            sasl_password: Some(SecretString::from(self.sasl_password.clone())),
            ..KafkaSettings::default()
        }
    }

    /// MySQL with `verify_identity` against the stack's CA (the URL is set per database).
    pub fn db(&self) -> DbSettings {
        DbSettings {
            ssl_mode: Some("verify_identity".into()),
            ssl_ca: Some(self.file("ca.pem")),
            ..DbSettings::default()
        }
    }

    /// `rediss://` with the stack's CA.
    pub fn redis(&self) -> RedisSettings {
        RedisSettings {
            url: format!("{}/0", self.redis),
            tls_ca_file: Some(self.file("ca.pem")),
            ..RedisSettings::default()
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
