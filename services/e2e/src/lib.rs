//! The shared harness of dispatch's cross-service tests: gateway, processor and reader run
//! in-process, each on port 0, over one isolated [`TestEnv`] (own database, topic prefix, Redis
//! prefix and consumer group) on the shared local stack, and tests talk to them as clients do.
//!
//! # Map
//! - [`StackSettings`]: the three services' settings for one env (two tenants, an admin key).
//! - [`Service`]: one running app (address, stop); [`start_gateway`], [`start_processor`],
//!   [`start_reader`] start one each and wait until it is ready.
//! - [`Stack`]: all three over one env, with clients; [`Stack::stop`] stops them and drops the
//!   database.
//! - [`authed`], [`channel`]: requests with a bearer key, plaintext channels.
//!
//! The tests themselves live in `tests/it/` (one binary) and `tests/logs.rs` (its own binary,
//! because it owns the process-wide log subscriber).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_runtime::Shutdown;
use dispatch_runtime::admin::ComponentStatus;
use dispatch_runtime::server::auth::{AdminKeyEntry, ApiKeyEntry, AuthSettings, hash_key};
use dispatch_testkit::{TestEnv, eventually};
use tonic::transport::Channel;

/// API key of tenant `acme`.
pub const KEY_ACME: &str = "e2e-acme-key-7f3a91c4d2";
/// API key of tenant `globex`.
pub const KEY_GLOBEX: &str = "e2e-globex-key-b85e02aa61";
/// The admin key (AdminService only; not a tenant key), id [`KEY_ADMIN_ID`].
pub const KEY_ADMIN: &str = "e2e-admin-key-4c19d7e03b";
/// The id of [`KEY_ADMIN`] (what admin actions are logged with).
pub const KEY_ADMIN_ID: &str = "e2e-ops-current";
/// A second admin key, id [`KEY_ADMIN_NEXT_ID`]: both work at once, as during a rotation.
pub const KEY_ADMIN_NEXT: &str = "e2e-admin-next-key-91d3b6f2a7";
/// The id of [`KEY_ADMIN_NEXT`].
pub const KEY_ADMIN_NEXT_ID: &str = "e2e-ops-next";

/// How long a service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The auth section every service gets: `acme` and `globex` tenant keys plus two admin keys
/// with ids (a rotation in progress).
pub fn auth() -> AuthSettings {
    AuthSettings {
        api_keys: vec![
            ApiKeyEntry {
                tenant: "acme".into(),
                key_sha256: hash_key(KEY_ACME),
            },
            ApiKeyEntry {
                tenant: "globex".into(),
                key_sha256: hash_key(KEY_GLOBEX),
            },
        ],
        admin_keys: vec![
            AdminKeyEntry {
                id: KEY_ADMIN_ID.into(),
                key_sha256: hash_key(KEY_ADMIN),
            },
            AdminKeyEntry {
                id: KEY_ADMIN_NEXT_ID.into(),
                key_sha256: hash_key(KEY_ADMIN_NEXT),
            },
        ],
        ..AuthSettings::default()
    }
}

/// Settings of the three services over one env. Tests tweak the fields before starting.
#[derive(Debug, Clone)]
pub struct StackSettings {
    /// The gateway's.
    pub gateway: dispatch_gateway::Settings,
    /// The processor's.
    pub processor: dispatch_processor::Settings,
    /// The reader's.
    pub reader: dispatch_reader::Settings,
}

impl StackSettings {
    /// Ports 0, the env's database, topics and Redis prefix, [`auth`], short test intervals.
    pub fn for_env(env: &TestEnv) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let kafka = dispatch_runtime::settings::KafkaSettings {
            // TestEnv created the topics already.
            create_topics: false,
            ..env.kafka.clone()
        };

        let mut gateway = dispatch_gateway::Settings {
            kafka: kafka.clone(),
            database: env.db.clone(),
            redis: env.redis.clone(),
            auth: auth(),
            ..dispatch_gateway::Settings::default()
        };
        gateway.grpc.listen = loopback;
        gateway.admin.listen = loopback;
        gateway.outbox.relay_interval_ms = 50;
        gateway.outbox.lock_retry_ms = 100;
        gateway.health.probe_interval_ms = 200;
        gateway.shutdown.drain_timeout_ms = 5_000;

        let mut processor = dispatch_processor::Settings {
            kafka: kafka.clone(),
            database: env.db.clone(),
            redis: env.redis.clone(),
            auth: auth(),
            ..dispatch_processor::Settings::default()
        };
        processor.grpc.listen = loopback;
        processor.admin.listen = loopback;
        processor.consumer.group = format!("processor-{}", env.id);
        processor.consumer.lag_interval_ms = 500;
        processor.consumer.rebalance_drain_ms = 2_000;
        processor.scheduler.interval_ms = 100;
        processor.shutdown.drain_timeout_ms = 5_000;

        let mut reader = dispatch_reader::Settings {
            kafka,
            database: env.db.clone(),
            redis: env.redis.clone(),
            auth: auth(),
            ..dispatch_reader::Settings::default()
        };
        reader.grpc.listen = loopback;
        reader.admin.listen = loopback;
        reader.shutdown.drain_timeout_ms = 5_000;

        Self {
            gateway,
            processor,
            reader,
        }
    }
}

/// One running service.
pub struct Service {
    /// Which service (for messages).
    pub name: &'static str,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Whether the app's task is still running (a crash or a start-up error ends it).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Graceful shutdown; returns the app's result.
    ///
    /// # Errors
    /// The app failed or did not stop within 30 s.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .with_context(|| format!("{} did not stop in time", self.name))?
            .with_context(|| format!("{} task panicked", self.name))?
            .with_context(|| format!("{} failed", self.name))
    }
}

/// Builds and starts a gateway; returns once its dependency probes report ready.
///
/// # Errors
/// Build failure (bad settings, unbindable address) or not ready in time.
pub async fn start_gateway(settings: dispatch_gateway::Settings) -> anyhow::Result<Service> {
    let app = dispatch_gateway::App::build(settings).await?;
    let (addr, admin, health) = (app.local_addr(), app.admin_addr(), app.health());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    eventually("gateway ready", READY_TIMEOUT, || {
        let ready = health.is_ready();
        async move { ready.then_some(()) }
    })
    .await?;
    Ok(Service {
        name: "gateway",
        addr,
        admin,
        shutdown,
        task,
    })
}

/// Builds and starts a processor; returns once it owns partitions.
///
/// # Errors
/// Build failure or no partition assignment in time.
pub async fn start_processor(settings: dispatch_processor::Settings) -> anyhow::Result<Service> {
    let app = dispatch_processor::App::build(settings).await?;
    let (addr, admin, control) = (app.local_addr()?, app.admin_addr()?, app.control());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    eventually("processor partition assignment", READY_TIMEOUT, || {
        let assigned = control.assigned_partitions() > 0;
        async move { assigned.then_some(()) }
    })
    .await?;
    Ok(Service {
        name: "processor",
        addr,
        admin,
        shutdown,
        task,
    })
}

/// Builds and starts a reader; returns once its events consumer is assigned (events produced
/// from then on are seen).
///
/// # Errors
/// Build failure or no assignment in time.
pub async fn start_reader(settings: dispatch_reader::Settings) -> anyhow::Result<Service> {
    let app = dispatch_reader::App::build(settings).await?;
    let (addr, admin, handle) = (app.local_addr()?, app.admin_addr()?, app.handle());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    eventually("reader events consumer assigned", READY_TIMEOUT, || {
        let up = handle.health().readiness().components.get("events") == Some(&ComponentStatus::Up);
        async move { up.then_some(()) }
    })
    .await?;
    Ok(Service {
        name: "reader",
        addr,
        admin,
        shutdown,
        task,
    })
}

/// The whole stack over one env.
pub struct Stack {
    /// The env (its pool, topics, settings).
    pub env: TestEnv,
    /// The gateway (TaskService).
    pub gateway: Service,
    /// The processor (AdminService, when it is served).
    pub processor: Service,
    /// The reader (TaskQueryService).
    pub reader: Service,
}

impl Stack {
    /// A new env with the default [`StackSettings`].
    ///
    /// # Errors
    /// The local stack is unreachable or a service does not start.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// A new env with `tweak` applied to the settings.
    ///
    /// # Errors
    /// As [`Stack::start`].
    pub async fn start_with(tweak: impl FnOnce(&mut StackSettings)) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let mut s = StackSettings::for_env(&env);
        tweak(&mut s);
        Self::start_on(env, s).await
    }

    /// The services with `s` over an env the caller prepared.
    ///
    /// # Errors
    /// A service does not start.
    pub async fn start_on(env: TestEnv, s: StackSettings) -> anyhow::Result<Self> {
        // Consumers first, so nothing the gateway accepts waits on an assignment.
        let processor = start_processor(s.processor).await?;
        let reader = start_reader(s.reader).await?;
        let gateway = start_gateway(s.gateway).await?;
        Ok(Self {
            env,
            gateway,
            processor,
            reader,
        })
    }

    /// A TaskService client on the gateway.
    ///
    /// # Errors
    /// The gateway is unreachable.
    pub async fn tasks(&self) -> anyhow::Result<TaskServiceClient<Channel>> {
        Ok(TaskServiceClient::new(channel(self.gateway.addr).await?))
    }

    /// A TaskQueryService client on the reader.
    ///
    /// # Errors
    /// The reader is unreachable.
    pub async fn queries(&self) -> anyhow::Result<TaskQueryServiceClient<Channel>> {
        Ok(TaskQueryServiceClient::new(
            channel(self.reader.addr).await?,
        ))
    }

    /// Stops the services (gateway first, so nothing new arrives) and drops the database.
    ///
    /// # Errors
    /// A service failed or did not stop in time.
    pub async fn stop(self) -> anyhow::Result<()> {
        let g = self.gateway.stop().await;
        let p = self.processor.stop().await;
        let r = self.reader.stop().await;
        self.env.cleanup().await;
        g.and(p).and(r)
    }
}

/// A plaintext channel to `addr`.
///
/// # Errors
/// Nothing listens there.
pub async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// `msg` with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {key}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}
