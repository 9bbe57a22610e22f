//! One running app each: [`Gateway`], [`Processor`], [`Reader`], and what they share.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_runtime::Shutdown;
use dispatch_runtime::admin::{ComponentStatus, Health};
use tonic::transport::Channel;

use super::{channel, init_logs, metrics, readyz};
use crate::eventually;

/// How long a service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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
