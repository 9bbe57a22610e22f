//! Start-up and shutdown: builds every part from [`Settings`], assembles the gRPC server in one
//! place, runs the background tasks, and shuts down in a commented order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dispatch_proto::v1::task_service_server::TaskServiceServer;
use dispatch_runtime::Shutdown;
use dispatch_runtime::admin::{AdminServer, ComponentStatus, Health};
use dispatch_runtime::server::auth::Authenticator;
use dispatch_runtime::server::{GrpcServer, Rpcs, Spec};
use dispatch_runtime::tls::check_at_start;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::durable::Durable;
use crate::idempotency::{Idempotency, RedisSlot};
use crate::limits::Limits;
use crate::metrics;
use crate::probe::Probe;
use crate::producer::Producer;
use crate::relay;
use crate::service::TaskApi;
use crate::settings::Settings;
use crate::tasks::Gateway;
use crate::workflows::Workflows;

/// What the gateway's gRPC server serves (the in-flight bound sheds into
/// `dispatch_load_shed_total` too).
pub const GRPC: Spec = Spec {
    label: metrics::SERVICE,
    services: &[
        Rpcs {
            service: dispatch_proto::v1::task_service_server::SERVICE_NAME,
            methods: &crate::service::METHODS,
        },
        Rpcs {
            service: dispatch_proto::v1::schedule_service_server::SERVICE_NAME,
            methods: &crate::schedules::METHODS,
        },
    ],
};

/// A built gateway, bound but not yet serving.
pub struct App {
    settings: Settings,
    grpc: GrpcServer,
    local_addr: SocketAddr,
    admin: AdminServer,
    admin_addr: SocketAddr,
    api: TaskApi,
    durable: Durable,
    idempotency: Idempotency,
    redis: RedisSlot,
    pool: sqlx::MySqlPool,
    health: Health,
    tls: TlsFailures,
}

/// The MySQL pool. MySQL is the fallback, not a hard dependency: when it cannot be reached at
/// start-up the gateway still starts (Kafka serves) with a lazy pool that connects once MySQL is
/// back, and `/readyz` reports it.
async fn pool(settings: &Settings) -> anyhow::Result<sqlx::MySqlPool> {
    match dispatch_store::connect(&settings.database).await {
        Ok(p) => Ok(p),
        Err(e) => {
            tracing::warn!(error = %e, "mysql not reachable at start-up; outbox unavailable until it is");
            let options = settings
                .database
                .connect_options()
                .context("database.url")?;
            Ok(settings.database.pool_options().connect_lazy_with(options))
        }
    }
}

impl App {
    /// Builds the gateway: validates settings, creates clients, binds both listeners. Kafka,
    /// MySQL and Redis may be down: the probes report it and the gateway degrades.
    ///
    /// # Errors
    /// Invalid settings or an address that cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let s = &settings;
        s.validate()?;
        // A certificate that does not verify or a refused login stops start-up (an unreachable
        // dependency does not).
        let tls = check_at_start(&s.grpc, &s.kafka, &s.database, Some(&s.redis)).await?;
        let auth = Authenticator::for_service(&s.auth, &s.grpc, &s.admin)?;
        metrics::init();
        dispatch_runtime::metrics::register_runtime_metrics(metrics::SERVICE);

        let pool = pool(s).await?;
        let producer = Producer::new(&s.kafka, &s.outbox)?;
        let redis = RedisSlot::default();
        if let Ok(c) = dispatch_runtime::redis_client::connect(&s.redis).await {
            redis.set(c);
        }
        let idempotency = Idempotency::new(redis.clone(), &s.redis, &s.idempotency, pool.clone());
        let durable = Durable::new(producer, pool.clone());
        let gateway = Gateway::new(
            s.kafka.topics(),
            durable.clone(),
            idempotency.clone(),
            pool.clone(),
            &s.cancel,
        )
        .with_spec_limits(s.limits.spec_limits());
        let workflows = Workflows::new(
            pool.clone(),
            s.limits.spec_limits(),
            s.limits.max_workflow_nodes,
            s.limits.max_workflow_edges,
        );
        let api = TaskApi::new(
            Arc::new(gateway),
            Arc::new(workflows),
            Arc::new(auth),
            Arc::new(Limits::new(&s.limits, Some(&s.redis)).await),
        )
        .with_request_timeout(Duration::from_millis(s.grpc.request_timeout_ms));

        let health = Health::new();
        for c in ["kafka", "mysql"] {
            health.set(c, ComponentStatus::Down("not probed yet".into()));
        }
        health.set("redis", ComponentStatus::Degraded("not probed yet".into()));
        let grpc = GrpcServer::bind(GRPC, &s.grpc, tls).await?;
        let local_addr = grpc.local_addr()?;
        let admin = AdminServer::bind(s.admin.listen, health.clone())
            .await
            .with_context(|| format!("admin.listen {}", s.admin.listen))?;
        let admin = admin.with_profiling(&s.admin, &s.auth)?;
        let admin_addr = admin.local_addr()?;
        Ok(Self {
            settings,
            grpc,
            local_addr,
            admin,
            admin_addr,
            api,
            durable,
            idempotency,
            redis,
            pool,
            health,
            tls: TlsFailures::new(
                metrics::SERVICE,
                &[Dependency::Kafka, Dependency::Mysql, Dependency::Redis],
            ),
        })
    }

    /// The gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The readiness registry behind `/readyz`.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The TLS failures the health probe turns into the `<dependency>_tls` readiness components.
    pub fn tls_failures(&self) -> TlsFailures {
        self.tls.clone()
    }

    /// Serves until `shutdown` triggers, then shuts down in order:
    /// health NOT_SERVING -> stop accepting -> drain in-flight requests (bounded by
    /// `shutdown.drain_timeout_ms`) -> flush the producer -> stop background tasks (the relay
    /// releases its lock) -> stop the admin server -> close the pool.
    ///
    /// # Errors
    /// The gRPC server failed.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let s = &self.settings;
        let drain = Duration::from_millis(s.shutdown.drain_timeout_ms);
        // NOT_SERVING until the probe finds Kafka or MySQL up.
        let serving = self.grpc.serving();

        // The admin server outlives the drain, so /metrics and /readyz answer until the end.
        let admin_stop = CancellationToken::new();
        shutdown.spawn(self.admin.serve(admin_stop.clone()));
        if self.redis.get().is_none() {
            let (slot, rs, stop) = (self.redis.clone(), s.redis.clone(), shutdown.child());
            shutdown.spawn(async move { slot.connect(&rs, Duration::from_secs(1), stop).await });
        }
        shutdown.spawn(
            Probe {
                producer: self.durable.producer().clone(),
                pool: self.pool.clone(),
                pool_max: s.database.max_connections,
                idempotency: self.idempotency.clone(),
                health: self.health.clone(),
                serving,
                kafka: s.kafka.clone(),
                settings: s.health.clone(),
                tls: self.tls.clone(),
            }
            .run(shutdown.child()),
        );
        shutdown.spawn(crate::producer::watchdog(
            self.durable.producer().clone(),
            s.kafka.topics().tasks(dispatch_core::Priority::Default),
            s.outbox.clone(),
            shutdown.child(),
        ));
        shutdown.spawn(relay::watch_sticky(
            self.durable.clone(),
            s.outbox.clone(),
            shutdown.child(),
        ));
        if s.outbox.relay_enabled {
            shutdown.spawn(relay::run(
                self.durable.clone(),
                self.pool.clone(),
                s.outbox.clone(),
                Duration::from_millis(s.idempotency.store_retention_ms),
                shutdown.child(),
            ));
        }

        let schedule_service = crate::schedules::server(&self.pool, s).await?;
        let task_service = TaskServiceServer::new(self.api.clone())
            .max_decoding_message_size(s.grpc.max_request_bytes);
        let token = shutdown.token().clone();
        let routes = Routes::new(task_service).add_service(schedule_service);
        let stop = async move { token.cancelled().await };
        let serve = self.grpc.on_shed(metrics::load_shed).serve(routes, stop);
        tokio::pin!(serve);
        let served = tokio::select! {
            r = &mut serve => r,
            () = async { shutdown.triggered().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(drain_timeout_ms = s.shutdown.drain_timeout_ms, "drain timed out; closing with requests in flight");
                Ok(())
            }
        };
        shutdown.trigger();
        self.durable.producer().flush(drain).await;
        admin_stop.cancel();
        if !shutdown.wait(Duration::from_secs(5)).await {
            tracing::warn!("background tasks did not stop in time");
        }
        self.pool.close().await;
        tracing::info!("gateway stopped");
        served
    }
}
