//! The services in-process (feature `stack`): gateway, processor and reader, each on port 0,
//! over one isolated [`TestEnv`] (own database, topic prefix, Redis prefix and consumer group) on
//! the shared local stack; tests talk to them as clients do.
//!
//! # Map
//! - [`gateway_settings`], [`processor_settings`], [`reader_settings`]: one service's settings
//!   for an env (ports 0, the env's database, topics and Redis prefix, [`auth`], short test
//!   intervals); [`StackSettings`] holds all three.
//! - [`Gateway`], [`Processor`], [`Reader`]: one running app each. `start` returns once it is
//!   ready (gateway probes up, processor owns partitions, reader's events consumer assigned);
//!   `spawn` returns at once, for tests of start-up itself. Each has `stop`, `is_running`,
//!   `metrics` and a client of its API.
//! - [`Stack`]: all three over one env; [`Stack::stop`] stops them and drops the database.
//! - [`channel`]: a plaintext channel; [`init_logs`]: test logs when `RUST_LOG` is set.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_runtime::Shutdown;
use dispatch_runtime::admin::{ComponentStatus, Health};
use tonic::transport::Channel;

use crate::auth::auth;
use crate::{TestEnv, eventually};

/// How long a service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn kafka(env: &TestEnv) -> dispatch_runtime::settings::KafkaSettings {
    dispatch_runtime::settings::KafkaSettings {
        // TestEnv created the topics already.
        create_topics: false,
        ..env.kafka.clone()
    }
}

/// A gateway's settings for `env`: relay every 50 ms, probes every 200 ms.
pub fn gateway_settings(env: &TestEnv) -> dispatch_gateway::Settings {
    let mut s = dispatch_gateway::Settings {
        kafka: kafka(env),
        database: env.db.clone(),
        redis: env.redis.clone(),
        auth: auth(),
        ..dispatch_gateway::Settings::default()
    };
    s.grpc.listen = loopback();
    s.admin.listen = loopback();
    s.outbox.relay_interval_ms = 50;
    s.outbox.lock_retry_ms = 100;
    s.health.probe_interval_ms = 200;
    s.health.probe_timeout_ms = 1_000;
    s.shutdown.drain_timeout_ms = 5_000;
    s
}

/// A processor's settings for `env`: a consumer group of the env's own, lag every 500 ms, a 2 s
/// rebalance drain, the scheduler every 100 ms.
pub fn processor_settings(env: &TestEnv) -> dispatch_processor::Settings {
    let mut s = dispatch_processor::Settings {
        kafka: kafka(env),
        database: env.db.clone(),
        auth: auth(),
        ..dispatch_processor::Settings::default()
    };
    s.grpc.listen = loopback();
    s.admin.listen = loopback();
    s.consumer.group = format!("processor-{}", env.id);
    s.consumer.lag_interval_ms = 500;
    s.consumer.rebalance_drain_ms = 2_000;
    s.consumer.pause_sync_ms = 200;
    s.scheduler.interval_ms = 100;
    s.shutdown.drain_timeout_ms = 5_000;
    s
}

/// A reader's settings for `env`.
pub fn reader_settings(env: &TestEnv) -> dispatch_reader::Settings {
    let mut s = dispatch_reader::Settings {
        kafka: kafka(env),
        database: env.db.clone(),
        redis: env.redis.clone(),
        auth: auth(),
        ..dispatch_reader::Settings::default()
    };
    s.grpc.listen = loopback();
    s.admin.listen = loopback();
    s.shutdown.drain_timeout_ms = 5_000;
    s
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
    /// [`gateway_settings`], [`processor_settings`] and [`reader_settings`] of `env`.
    pub fn for_env(env: &TestEnv) -> Self {
        Self {
            gateway: gateway_settings(env),
            processor: processor_settings(env),
            reader: reader_settings(env),
        }
    }
}

/// Test logs, once per process, when `RUST_LOG` is set (a test binary that installs its own
/// subscriber first keeps it).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// What every running app has: its task and the trigger that stops it.
struct Running {
    name: &'static str,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn spawn<F>(name: &'static str, run: impl FnOnce(Shutdown) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self {
            name,
            shutdown,
            task,
        }
    }

    fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .with_context(|| format!("{} did not stop in time", self.name))?
            .with_context(|| format!("{} task panicked", self.name))?
            .with_context(|| format!("{} failed", self.name))
    }
}

/// The text of `/metrics` on an admin address.
///
/// # Errors
/// Nothing answers there.
pub async fn metrics(admin: SocketAddr) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .text()
        .await?)
}

/// The JSON of `/readyz` on an admin address.
///
/// # Errors
/// Nothing answers there, or the body is not JSON.
pub async fn readyz(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(format!("http://{admin}/readyz"))
        .await?
        .json()
        .await?)
}

/// Implements what the three running apps share.
macro_rules! running_app {
    ($t:ty) => {
        impl $t {
            /// Whether the app's task is still running (a crash or a start-up error ends it).
            pub fn is_running(&self) -> bool {
                self.run.is_running()
            }

            /// Graceful shutdown; returns the app's result.
            ///
            /// # Errors
            /// The app failed or did not stop within 30 s.
            pub async fn stop(self) -> anyhow::Result<()> {
                self.run.stop().await
            }

            /// Its `/metrics` text.
            ///
            /// # Errors
            /// The admin server does not answer.
            pub async fn metrics(&self) -> anyhow::Result<String> {
                metrics(self.admin).await
            }

            /// Its `/readyz` JSON.
            ///
            /// # Errors
            /// The admin server does not answer.
            pub async fn readyz(&self) -> anyhow::Result<serde_json::Value> {
                readyz(self.admin).await
            }

            /// A plaintext channel to its gRPC server.
            ///
            /// # Errors
            /// It does not accept connections.
            pub async fn channel(&self) -> anyhow::Result<Channel> {
                channel(self.addr).await
            }
        }
    };
}

/// A running gateway.
pub struct Gateway {
    /// Its gRPC address (TaskService, WorkflowService, ScheduleService).
    pub addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// Its readiness registry.
    pub health: Health,
    run: Running,
}

running_app!(Gateway);

impl Gateway {
    /// Builds and starts a gateway; returns once its dependency probes report ready.
    ///
    /// # Errors
    /// Build failure (bad settings, unbindable address) or not ready in time.
    pub async fn start(settings: dispatch_gateway::Settings) -> anyhow::Result<Self> {
        let g = Self::spawn(settings).await?;
        let health = g.health.clone();
        eventually("gateway ready", READY_TIMEOUT, || {
            let ready = health.is_ready();
            async move { ready.then_some(()) }
        })
        .await?;
        Ok(g)
    }

    /// Builds and starts a gateway without waiting for it to be ready.
    ///
    /// # Errors
    /// Build failure.
    pub async fn spawn(settings: dispatch_gateway::Settings) -> anyhow::Result<Self> {
        init_logs();
        let app = dispatch_gateway::App::build(settings).await?;
        let (addr, admin, health) = (app.local_addr(), app.admin_addr(), app.health());
        let run = Running::spawn("gateway", |s| app.run_until_stopped(s));
        Ok(Self {
            addr,
            admin,
            health,
            run,
        })
    }

    /// A TaskService client.
    ///
    /// # Errors
    /// The gateway does not accept connections.
    pub async fn client(&self) -> anyhow::Result<TaskServiceClient<Channel>> {
        Ok(TaskServiceClient::new(self.channel().await?))
    }
}

/// A running processor.
pub struct Processor {
    /// Its gRPC address (AdminService).
    pub addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// Its pauses and assignment.
    pub control: dispatch_processor::Control,
    run: Running,
}

running_app!(Processor);

impl Processor {
    /// Builds and starts `builder` (settings and extra handlers); returns once it owns
    /// partitions.
    ///
    /// # Errors
    /// Build failure or no partition assignment in time.
    pub async fn start(builder: dispatch_processor::AppBuilder) -> anyhow::Result<Self> {
        let p = Self::spawn(builder).await?;
        let control = p.control.clone();
        eventually("processor partition assignment", READY_TIMEOUT, || {
            let assigned = control.assigned_partitions() > 0;
            async move { assigned.then_some(()) }
        })
        .await?;
        Ok(p)
    }

    /// Builds and starts `builder` without waiting for an assignment.
    ///
    /// # Errors
    /// Build failure.
    pub async fn spawn(builder: dispatch_processor::AppBuilder) -> anyhow::Result<Self> {
        init_logs();
        let app = builder.build().await?;
        let (addr, admin, control) = (app.local_addr()?, app.admin_addr()?, app.control());
        let run = Running::spawn("processor", |s| app.run_until_stopped(s));
        Ok(Self {
            addr,
            admin,
            control,
            run,
        })
    }

    /// An AdminService client.
    ///
    /// # Errors
    /// The processor does not accept connections.
    pub async fn client(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(self.channel().await?))
    }
}

/// A running reader.
pub struct Reader {
    /// Its gRPC address (TaskQueryService).
    pub addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// Its statistics and health.
    pub handle: dispatch_reader::ReaderHandle,
    run: Running,
}

running_app!(Reader);

impl Reader {
    /// Builds and starts a reader; returns once its events consumer is assigned (events produced
    /// from then on are seen).
    ///
    /// # Errors
    /// Build failure or no assignment in time.
    pub async fn start(settings: dispatch_reader::Settings) -> anyhow::Result<Self> {
        init_logs();
        let app = dispatch_reader::App::build(settings).await?;
        let (addr, admin, handle) = (app.local_addr()?, app.admin_addr()?, app.handle());
        let run = Running::spawn("reader", |s| app.run_until_stopped(s));
        let h = handle.clone();
        eventually("reader events consumer assigned", READY_TIMEOUT, || {
            let up = h.health().readiness().components.get("events") == Some(&ComponentStatus::Up);
            async move { up.then_some(()) }
        })
        .await?;
        Ok(Self {
            addr,
            admin,
            handle,
            run,
        })
    }

    /// A TaskQueryService client.
    ///
    /// # Errors
    /// The reader does not accept connections.
    pub async fn client(&self) -> anyhow::Result<TaskQueryServiceClient<Channel>> {
        Ok(TaskQueryServiceClient::new(self.channel().await?))
    }
}

/// The whole stack over one env.
pub struct Stack {
    /// The env (its pool, topics, settings).
    pub env: TestEnv,
    /// The gateway (TaskService).
    pub gateway: Gateway,
    /// The processor (AdminService, when it is served).
    pub processor: Processor,
    /// The reader (TaskQueryService).
    pub reader: Reader,
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
        let processor = Processor::start(dispatch_processor::App::builder(s.processor)).await?;
        let reader = Reader::start(s.reader).await?;
        let gateway = Gateway::start(s.gateway).await?;
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
        self.gateway.client().await
    }

    /// A TaskQueryService client on the reader.
    ///
    /// # Errors
    /// The reader is unreachable.
    pub async fn queries(&self) -> anyhow::Result<TaskQueryServiceClient<Channel>> {
        self.reader.client().await
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
