//! The harness: start a reader on port 0, write tasks like the processor, produce events.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use dispatch_core::{TaskId, TaskState, Version};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_reader::{App, ReaderHandle, Settings};
use dispatch_runtime::Shutdown;
use dispatch_runtime::admin::ComponentStatus;
use dispatch_runtime::server::auth::{ApiKeyEntry, AuthSettings, hash_key};
use dispatch_store::tasks::TaskWrite;
use dispatch_testkit::TestEnv;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::transport::Channel;

/// API key of tenant `acme`.
pub const ACME: &str = "acme-key";
/// API key of tenant `globex`.
pub const GLOBEX: &str = "globex-key";

/// Settings for `env` (ports 0, two tenants).
pub fn settings(env: &TestEnv) -> Settings {
    let mut s = Settings::default();
    s.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.database = env.db.clone();
    s.redis = env.redis.clone();
    s.kafka = env.kafka.clone();
    s.kafka.create_topics = false;
    s.auth = AuthSettings {
        api_keys: vec![
            ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key(ACME),
            },
            ApiKeyEntry {
                tenant: "globex".into(),
                key_sha256: hash_key(GLOBEX),
            },
        ],
        ..AuthSettings::default()
    };
    s.shutdown.drain_timeout_ms = 5_000;
    s
}

/// A running reader.
pub struct Reader {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub handle: ReaderHandle,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Reader {
    /// Starts a reader on `env` with default test settings.
    pub async fn start(env: &TestEnv) -> Self {
        Self::start_with(env, |_| {}).await
    }

    /// Starts a reader with `tweak` applied to its settings; waits until its events consumer is
    /// assigned (events produced from then on are seen).
    pub async fn start_with(env: &TestEnv, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut s = settings(env);
        tweak(&mut s);
        let app = App::build(s).await.expect("build reader");
        let addr = app.local_addr().expect("addr");
        let admin = app.admin_addr().expect("admin addr");
        let handle = app.handle();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let h = handle.clone();
        dispatch_testkit::eventually("events consumer assigned", Duration::from_secs(15), || {
            let up = h.health().readiness().components.get("events") == Some(&ComponentStatus::Up);
            async move { up.then_some(()) }
        })
        .await
        .expect("events consumer");
        Self {
            addr,
            admin,
            handle,
            shutdown,
            task,
        }
    }

    /// A client.
    pub async fn client(&self) -> TaskQueryServiceClient<Channel> {
        TaskQueryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// Stops the app and waits for it.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("stops in time")
            .expect("task");
        r.expect("clean shutdown");
    }

    /// Single-id MySQL lookups so far.
    pub fn store_gets(&self) -> u64 {
        dispatch_reader::metrics::Stats::get(&self.handle.stats().store_gets)
    }
}

/// A request carrying `key`.
pub fn req<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii"),
    );
    r
}

/// GetTask.
pub async fn get(
    c: &mut TaskQueryServiceClient<Channel>,
    id: TaskId,
    min_version: Version,
    key: &str,
) -> Result<pb::GetTaskResponse, tonic::Status> {
    c.get_task(req(
        pb::GetTaskRequest {
            task_id: id.to_string(),
            min_version,
        },
        key,
    ))
    .await
    .map(tonic::Response::into_inner)
}

/// A task as the processor writes it.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: TaskId,
    pub tenant: String,
    pub business_key: String,
    pub task_type: String,
    pub state: TaskState,
    pub attempt: u32,
}

impl TaskRow {
    /// A new task of `tenant`.
    pub fn new(tenant: &str, state: TaskState, attempt: u32) -> Self {
        Self {
            id: TaskId::new(),
            tenant: tenant.into(),
            business_key: "order-1".into(),
            task_type: "noop".into(),
            state,
            attempt,
        }
    }

    /// The same task in another state.
    pub fn at(&self, state: TaskState, attempt: u32) -> Self {
        Self {
            state,
            attempt,
            ..self.clone()
        }
    }

    /// Its version.
    pub fn version(&self) -> Version {
        self.state.version(0, self.attempt)
    }

    /// The processor's write of this state.
    pub fn write(&self) -> TaskWrite {
        TaskWrite {
            business_key: self.business_key.clone(),
            task_type: self.task_type.clone(),
            payload: b"{}".to_vec(),
            ..dispatch_testkit::task_write(self.id, &self.tenant, self.state, self.attempt)
        }
    }

    /// The snapshot an event carries.
    pub fn snapshot(&self) -> pb::Task {
        let now = dispatch_core::time::to_proto(Utc::now());
        pb::Task {
            task_id: self.id.to_string(),
            tenant: self.tenant.clone(),
            business_key: self.business_key.clone(),
            task_type: self.task_type.clone(),
            payload: b"{}".to_vec(),
            priority: pb::Priority::Default as i32,
            state: self.state.to_proto() as i32,
            attempts: self.attempt,
            max_attempts: 4,
            version: self.version(),
            created_at: Some(now),
            updated_at: Some(now),
            ..Default::default()
        }
    }
}

/// Upserts `rows` like the processor's batch writer (version-fenced, one transaction).
pub async fn store(env: &TestEnv, rows: &[TaskRow]) {
    let writes: Vec<TaskWrite> = rows.iter().map(TaskRow::write).collect();
    let mut tx = env.pool.begin().await.expect("begin");
    dispatch_store::tasks::upsert_batch(&mut tx, &writes)
        .await
        .expect("upsert");
    tx.commit().await.expect("commit");
}

/// Produces TaskEvents to the events topic like the processor.
pub struct Events {
    producer: FutureProducer,
    topic: String,
}

impl Events {
    /// A producer on `env`'s events topic.
    pub fn new(env: &TestEnv) -> Self {
        let producer: FutureProducer = dispatch_runtime::kafka::producer_config(&env.kafka)
            .create()
            .expect("producer");
        Self {
            producer,
            topic: env.topics().events(),
        }
    }

    /// Publishes the state change to `row` and waits for the broker's ack.
    pub async fn publish(&self, row: &TaskRow) {
        let task = row.snapshot();
        let ev = pb::TaskEvent {
            task_id: task.task_id.clone(),
            state: task.state,
            version: task.version,
            occurred_at: Some(dispatch_core::time::to_proto(Utc::now())),
            task: Some(task),
        };
        let key = row.id.to_string();
        let value = ev.encode_to_vec();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce event");
    }
}
