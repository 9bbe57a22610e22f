//! The services in-process (feature `stack`): gateway, processor and reader, each on port 0,
//! over one isolated [`TestEnv`] (own database, topic prefix, Redis prefix and consumer group) on
//! the shared local stack; tests talk to them as clients do.
//!
//! # Map
//! - [`gateway_settings`], [`processor_settings`], [`reader_settings`]: one service's settings
//!   for an env (ports 0, the env's database, topics and Redis prefix, the test keys of
//!   [`crate::auth`], short test intervals); [`StackSettings`] holds all three (`settings.rs`).
//! - [`Gateway`], [`Processor`], [`Reader`]: one running app each. `start` returns once it is
//!   ready (gateway probes up, processor owns partitions, reader's events consumer assigned);
//!   `spawn` returns at once, for tests of start-up itself. Each has `stop`, `is_running`,
//!   `metrics` and a client of its API (`apps.rs`).
//! - [`Stack`]: all three over one env; [`Stack::stop`] stops them and drops the database.
//! - [`channel`]: a plaintext channel; [`init_logs`]: test logs when `RUST_LOG` is set;
//!   [`metrics`], [`readyz`], [`readyz_component`] and [`tls_errors_counted`]: what an admin
//!   address shows.

mod apps;
mod settings;

use std::net::SocketAddr;
use std::time::Duration;

use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use tonic::transport::Channel;

pub use apps::{Gateway, Processor, Reader};
pub use settings::{StackSettings, gateway_settings, processor_settings, reader_settings};

use crate::TestEnv;

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

/// `/readyz` on an admin address: its HTTP status and `component`'s status (`absent` when it
/// has none); `None` when nothing answers or the body is not JSON.
pub async fn readyz_component(admin: SocketAddr, component: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
    let code = r.status().as_u16();
    let body: serde_json::Value = r.json().await.ok()?;
    let status = body["components"][component]["status"]
        .as_str()
        .unwrap_or("absent")
        .to_owned();
    Some((code, status))
}

/// `dispatch_tls_errors_total{dependency, service}` as `/metrics` on an admin address shows it;
/// `None` when nothing answers or the series is not there.
pub async fn tls_errors_counted(
    admin: SocketAddr,
    service: &str,
    dep: dispatch_runtime::tls_failures::Dependency,
) -> Option<f64> {
    let prefix = format!(
        "dispatch_tls_errors_total{{dependency=\"{}\",service=\"{service}\"}} ",
        dep.as_str()
    );
    metrics(admin)
        .await
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
}

/// A run-time TLS failure to record, and what readiness must show while it is held.
pub struct TlsFailureCase<'a> {
    /// The dependency that failed.
    pub dep: dispatch_runtime::tls_failures::Dependency,
    /// The client's error text.
    pub reason: &'a str,
    /// `/readyz`'s HTTP status and the `<dependency>_tls` component's status meanwhile.
    pub failing: (u16, &'a str),
    /// Whether gRPC health says SERVING meanwhile.
    pub serving: bool,
}

/// Records `case`'s failure in `tls` of a running `service` (admin address `admin`, gRPC health
/// asked through `serving`) and awaits what readiness must show: `case.failing` and
/// `case.serving` within 10 s, the failure counted in `dispatch_tls_errors_total`, then the
/// component Up and SERVING again by itself within 15 s, not before `hold` has passed.
///
/// # Errors
/// Any of these did not hold.
pub async fn tls_failure_is_held_then_clears<F, Fut>(
    service: &str,
    tls: &dispatch_runtime::tls_failures::TlsFailures,
    admin: SocketAddr,
    hold: std::time::Duration,
    serving: F,
    case: TlsFailureCase<'_>,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<bool>>,
{
    use std::time::{Duration, Instant};
    let component = case.dep.component();
    let before = dispatch_runtime::tls_failures::counted(service, case.dep);
    let at = Instant::now();
    tls.record(case.dep, case.reason);
    let (code, status) = case.failing;
    crate::eventually(
        &format!("{component} {status}, {code}, SERVING {}", case.serving),
        Duration::from_secs(10),
        || async {
            (readyz_component(admin, component).await? == (code, status.to_owned())
                && serving().await? == case.serving)
                .then_some(())
        },
    )
    .await?;
    let n = tls_errors_counted(admin, service, case.dep).await;
    anyhow::ensure!(
        n.is_some_and(|n| n >= (before + 1) as f64),
        "{component}: not counted: {n:?}"
    );
    crate::eventually(
        &format!("{component} up, 200, SERVING"),
        Duration::from_secs(15),
        || async {
            (readyz_component(admin, component).await? == (200, "up".to_owned())
                && serving().await?)
                .then_some(())
        },
    )
    .await?;
    anyhow::ensure!(
        at.elapsed() >= hold,
        "{component} up after {:?}, before the hold",
        at.elapsed()
    );
    Ok(())
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
