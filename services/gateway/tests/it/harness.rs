//! Starts a gateway on port 0 over an isolated [`TestEnv`] and talks to it as a client would.

use std::net::SocketAddr;
use std::time::Duration;

use dispatch_core::{Envelope, TaskId};
use dispatch_gateway::settings::{HealthSettings, OutboxSettings};
use dispatch_gateway::{App, Settings};
use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_runtime::Shutdown;
use dispatch_runtime::server::auth::{ApiKeyEntry, AuthSettings, hash_key};
use dispatch_runtime::settings::{AdminSettings, GrpcSettings};
use dispatch_testkit::{Record, TestEnv};
use tonic::transport::Channel;

/// Tenant `acme`'s key.
pub const KEY_A: &str = "key-acme-0123456789";
/// Tenant `globex`'s key.
pub const KEY_B: &str = "key-globex-0123456789";

/// Settings for a gateway over `env`.
pub fn settings(env: &TestEnv) -> Settings {
    Settings {
        grpc: GrpcSettings::default(),
        admin: AdminSettings::on_port(0),
        kafka: dispatch_runtime::settings::KafkaSettings {
            // TestEnv created the topics already.
            create_topics: false,
            ..env.kafka.clone()
        },
        database: env.db.clone(),
        redis: env.redis.clone(),
        auth: AuthSettings {
            api_keys: vec![
                ApiKeyEntry {
                    tenant: "acme".into(),
                    key_sha256: hash_key(KEY_A),
                },
                ApiKeyEntry {
                    tenant: "globex".into(),
                    key_sha256: hash_key(KEY_B),
                },
            ],
            ..AuthSettings::default()
        },
        outbox: OutboxSettings {
            relay_interval_ms: 50,
            lock_retry_ms: 100,
            ..OutboxSettings::default()
        },
        health: HealthSettings {
            probe_interval_ms: 200,
            probe_timeout_ms: 1_000,
            ..HealthSettings::default()
        },
        ..Settings::default()
    }
}

/// Settings of a gateway whose Kafka is unreachable (a closed port), failing fast.
pub fn kafka_down(env: &TestEnv) -> Settings {
    let mut s = settings(env);
    s.kafka.brokers = "127.0.0.1:1".into();
    s.kafka.message_timeout_ms = 2_000;
    s.outbox.produce_timeout_ms = 300;
    s.outbox.breaker_failures = 2;
    s.outbox.breaker_open_ms = 60_000;
    s.outbox.breaker_max_open_ms = 60_000;
    s.outbox.relay_enabled = false;
    s
}

/// A running gateway.
pub struct Running {
    /// gRPC address.
    pub addr: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Builds and starts a gateway. Logs go to the test output when `RUST_LOG` is set.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let app = App::build(settings).await?;
        let (addr, admin) = (app.local_addr(), app.admin_addr());
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Ok(Self {
            addr,
            admin,
            shutdown,
            handle,
        })
    }

    /// A channel to the gRPC server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    /// A TaskService client.
    pub async fn client(&self) -> anyhow::Result<TaskServiceClient<Channel>> {
        Ok(TaskServiceClient::new(self.channel().await?))
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.handle).await???;
        Ok(())
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.admin))
            .await?
            .text()
            .await?)
    }

    /// `/readyz` JSON.
    pub async fn readyz(&self) -> anyhow::Result<serde_json::Value> {
        Ok(reqwest::get(format!("http://{}/readyz", self.admin))
            .await?
            .json()
            .await?)
    }
}

/// `msg` with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {key}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// A valid spec.
pub fn spec(business_key: &str, payload: &[u8]) -> pb::TaskSpec {
    pb::TaskSpec {
        business_key: business_key.into(),
        task_type: "email.send".into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

/// A SubmitTask request for `spec`.
pub fn submit(spec: pb::TaskSpec, key: &str) -> tonic::Request<pb::SubmitTaskRequest> {
    authed(pb::SubmitTaskRequest { task: Some(spec) }, key)
}

/// The task id a record carries (from the header).
pub fn task_id_of(r: &Record) -> Option<String> {
    r.headers
        .get_str(dispatch_core::envelope::header::TASK_ID)
        .map(str::to_owned)
}

/// The decoded envelope of a record.
pub fn envelope(r: &Record) -> Envelope {
    Envelope::decode(&r.value).expect("record value is an envelope")
}

/// Parses a response's task id.
pub fn id(s: &str) -> TaskId {
    TaskId::parse(s).expect("task id")
}

/// The field names of a status's BadRequest details.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The `accepted` outcome of a batch item.
pub fn accepted(r: &pb::SubmitResult) -> Option<&pb::SubmitTaskResponse> {
    match &r.outcome {
        Some(pb::submit_result::Outcome::Accepted(a)) => Some(a),
        _ => None,
    }
}
