//! The reader's test helpers on top of [`dispatch_testkit`]: start a reader on port 0, write tasks
//! like the processor, produce events. The keys are [`dispatch_testkit::auth`]'s.

use std::time::Duration;

use chrono::Utc;
use dispatch_core::{TaskId, TaskState, Version};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_reader::Settings;
use dispatch_store::tasks::TaskWrite;
use dispatch_testkit::TestEnv;
pub use dispatch_testkit::auth::{KEY_ACME, KEY_GLOBEX, authed};
pub use dispatch_testkit::stack::Reader;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Settings for `env` ([`dispatch_testkit::stack::reader_settings`]: ports 0, the test keys).
pub fn settings(env: &TestEnv) -> Settings {
    dispatch_testkit::stack::reader_settings(env)
}

/// Starts a reader on `env` with default test settings, once its events consumer is assigned.
pub async fn reader(env: &TestEnv) -> Reader {
    reader_with(env, |_| {}).await
}

/// [`reader`], and a client of its query service.
pub async fn reader_and_client(env: &TestEnv) -> (Reader, TaskQueryServiceClient<Channel>) {
    let r = reader(env).await;
    let c = r.client().await.expect("connect");
    (r, c)
}

/// The next event of a WatchTask stream (`None`: it ended), waited for at most 5 s.
pub async fn next_event(s: &mut tonic::Streaming<pb::TaskEvent>) -> Option<pb::TaskEvent> {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("an event within 5 s")
        .expect("stream ok")
}

/// A new env, and [`reader_and_client`] on it.
pub async fn env_reader_and_client() -> (TestEnv, Reader, TaskQueryServiceClient<Channel>) {
    let env = TestEnv::new().await.expect("env");
    let (r, c) = reader_and_client(&env).await;
    (env, r, c)
}

/// Starts a reader with `tweak` applied to its settings; waits until its events consumer is
/// assigned (events produced from then on are seen).
pub async fn reader_with(env: &TestEnv, tweak: impl FnOnce(&mut Settings)) -> Reader {
    let mut s = settings(env);
    tweak(&mut s);
    Reader::start(s).await.expect("reader starts")
}

/// WatchTask of `task_id` from `min_version` with `key`: the stream, or the call's error.
pub async fn watch(
    c: &mut TaskQueryServiceClient<Channel>,
    task_id: impl ToString,
    min_version: Version,
    key: &str,
) -> Result<tonic::Streaming<pb::TaskEvent>, tonic::Status> {
    let req = pb::WatchTaskRequest {
        task_id: task_id.to_string(),
        min_version,
    };
    Ok(c.watch_task(authed(req, key)).await?.into_inner())
}

/// ListTasks with `req` as tenant `acme` (panics on an error status).
pub async fn list(
    c: &mut TaskQueryServiceClient<Channel>,
    req: pb::ListTasksRequest,
) -> pb::ListTasksResponse {
    c.list_tasks(authed(req, KEY_ACME))
        .await
        .expect("list")
        .into_inner()
}

/// The ids of the tasks [`list`] answers `req` with, in its order.
pub async fn list_ids(
    c: &mut TaskQueryServiceClient<Channel>,
    req: pb::ListTasksRequest,
) -> Vec<String> {
    list(c, req)
        .await
        .tasks
        .into_iter()
        .map(|t| t.task_id)
        .collect()
}

/// The query service's gRPC health (a `ServingStatus` as the wire carries it) at `addr`; `None`
/// when nothing answers.
pub async fn query_health(addr: std::net::SocketAddr) -> Option<i32> {
    let channel = dispatch_testkit::stack::channel(addr).await.ok()?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "dispatch.v1.TaskQueryService".into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

/// Stops `r` (a test fails when it does not stop cleanly), then drops `env`'s database and
/// topics.
pub async fn stop(r: Reader, env: TestEnv) {
    r.stop().await.expect("clean shutdown");
    env.cleanup().await;
}

/// Single-id MySQL lookups a reader made so far.
pub fn store_gets(r: &Reader) -> u64 {
    dispatch_reader::metrics::Stats::get(&r.handle.stats().store_gets)
}

/// GetTask.
pub async fn get(
    c: &mut TaskQueryServiceClient<Channel>,
    id: TaskId,
    min_version: Version,
    key: &str,
) -> Result<pb::GetTaskResponse, tonic::Status> {
    c.get_task(authed(
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
