//! [`App`]: wiring. [`AppBuilder::build`] connects the dependencies and binds the listeners;
//! [`App::run_until_stopped`] starts the servers, then the consumption pipeline, and on shutdown
//! stops the pipeline, which stops everything in order (the start and stop orders are in the
//! docs of `pipeline.rs`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dispatch_runtime::admin::{AdminServer, Health};
use dispatch_runtime::kafka;
use dispatch_runtime::server::GrpcServer;
use dispatch_runtime::server::auth::Authenticator;
use dispatch_runtime::shutdown::Shutdown;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use dispatch_store::MySqlPool;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

use crate::admin::{Admin, AdminApi};
use crate::consumer::context::Fences;
use crate::consumer::{Ctx, Shared};
use crate::control::Control;
use crate::handler::{Handler, Registry};
use crate::pipeline::{Deps, Pipeline};
use crate::produce::Producer;
use crate::settings::Settings;
use crate::writer;
use dispatch_runtime::producer::ProducerCore;

/// Builds an [`App`] with handlers registered in code.
pub struct AppBuilder {
    settings: Settings,
    handlers: Vec<(String, Arc<dyn Handler>)>,
}

impl AppBuilder {
    /// Starts from `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            handlers: Vec::new(),
        }
    }

    /// Runs tasks of `task_type` with `handler` (bounds from `[handlers.types.<task_type>]`).
    /// A handler registered here wins over a configured one of the same type; see
    /// [`Handler`] for an example, and `examples/custom-handler` for a whole program.
    pub fn handler(mut self, task_type: &str, handler: impl Handler) -> Self {
        self.handlers
            .push((task_type.to_owned(), Arc::new(handler)));
        self
    }

    /// Connects to MySQL and Kafka, creates topics if configured and binds the listeners.
    ///
    /// # Errors
    /// Invalid settings, unreachable dependencies, unbindable addresses.
    pub async fn build(self) -> anyhow::Result<App> {
        let s = self.settings;
        s.validate()?;
        let auth = Authenticator::for_service(&s.auth, &s.grpc, &s.admin)?;
        let tls =
            dispatch_runtime::tls::check_at_start(&s.grpc, &s.kafka, &s.database, None).await?;
        let registry = Registry::build(&s.handlers, self.handlers)?;
        crate::metrics::init(&registry.task_types());
        // Before the clients: their contexts' TLS failures reach it from the first one.
        let tls_failures = TlsFailures::new("processor", &[Dependency::Kafka, Dependency::Mysql]);
        let pool = dispatch_store::connect(&s.database)
            .await
            .context("connecting to MySQL")?;
        let commits = writer::commit_pool(&s.database, s.writer.max_concurrent_batches)
            .await
            .context("connecting the batch writer to MySQL")?;
        if s.kafka.create_topics {
            kafka::ensure_topics(&s.kafka, &kafka::dispatch_topics(&s.kafka)).await?;
        }
        let mut pc = kafka::producer_config(&s.kafka);
        // No local delivery timeout (unless the raw options set one): while Kafka is down,
        // librdkafka keeps retrying every record in order (idempotent producer) and the work
        // behind it stays unacknowledged. A timeout would hand a state-change event back for an
        // application re-send, which lands after newer events of the same task.
        kafka::set_default(&mut pc, &s.kafka, "message.timeout.ms", "0");
        kafka::enable_statistics(&mut pc, &s.kafka);
        let producer = Producer::new(
            ProducerCore::new("processor", pc).context("creating the Kafka producer")?,
        );
        let topics = s.kafka.topics();
        let shared = Arc::new(Shared::new(
            topics.clone(),
            Duration::from_millis(s.consumer.rebalance_drain_ms),
        ));
        shared.partitions.set_parking_budget(
            s.consumer.max_parked,
            s.consumer.max_parked_kbytes.saturating_mul(1024),
        );
        let mut cc = kafka::consumer_config(&s.kafka, &s.consumer.group);
        kafka::enable_statistics(&mut cc, &s.kafka);
        // Bound prefetch (RSS), unless the raw options say otherwise: the queue and, with it, the
        // size of one fetch response (librdkafka's default: 50 MiB). Fetched batches are held
        // decompressed while any of their records is queued; see `consumer.prefetch_kbytes`.
        let prefetch_bytes = u64::from(s.consumer.prefetch_kbytes) * 1024;
        kafka::set_default(
            &mut cc,
            &s.kafka,
            "queued.max.messages.kbytes",
            s.consumer.prefetch_kbytes.to_string(),
        );
        kafka::set_default(
            &mut cc,
            &s.kafka,
            "fetch.max.bytes",
            prefetch_bytes.max(1 << 20).to_string(),
        );
        // Fetches wait for a few produced batches rather than answering each one; an idle
        // consumer fetches once per `fetch_wait_ms` (see `consumer.fetch_min_kbytes`). A resumed
        // partition (a retry come due, a priority back under its share) is fetched again only
        // once the fetch in flight returns, so this also bounds that wait (librdkafka's default,
        // 500 ms, showed as the tail of short retry delays).
        kafka::set_default(
            &mut cc,
            &s.kafka,
            "fetch.wait.max.ms",
            s.consumer.fetch_wait_ms.to_string(),
        );
        kafka::set_default(
            &mut cc,
            &s.kafka,
            "fetch.min.bytes",
            (u64::from(s.consumer.fetch_min_kbytes) * 1024).to_string(),
        );
        let consumer: BaseConsumer<Ctx> = cc
            .create_with_context(Ctx::fenced(
                shared.clone(),
                Fences {
                    pool: pool.clone(),
                    group: s.consumer.group.clone(),
                    owner: dispatch_core::instance::name(),
                    runtime: tokio::runtime::Handle::current(),
                },
            ))
            .context("creating the Kafka consumer")?;
        let health = Health::new();
        let admin = AdminServer::bind(s.admin.listen, health.clone())
            .await
            .with_context(|| format!("binding admin.listen {}", s.admin.listen))?;
        let admin = admin.with_profiling(&s.admin, &s.auth)?;
        let grpc = GrpcServer::bind(crate::admin::GRPC, &s.grpc, tls).await?;
        let (types_tx, _) = watch::channel(BTreeSet::new());
        let consumer = Arc::new(consumer);
        let control = Control {
            shared: shared.clone(),
            types: Arc::new(types_tx),
            hosts: registry.hosts().clone(),
            topics,
            pool: pool.clone(),
            group: s.consumer.group.clone(),
            client_id: cc.get("client.id").unwrap_or_default().to_owned(),
            stats_client: crate::lag::StatsClient::new(&cc),
            sync: Arc::default(),
        };
        // Start with the pauses every instance shares, before the first fetch.
        control.sync().await.context("reading the shared pauses")?;
        Ok(App {
            settings: s,
            pool,
            commits,
            producer,
            registry,
            health,
            admin,
            grpc,
            shared,
            consumer,
            control,
            auth,
            tls_failures,
        })
    }
}

/// A built processor, ready to run.
pub struct App {
    settings: Settings,
    pool: MySqlPool,
    /// The batch writer's own connections ([`writer::commit_pool`]).
    commits: MySqlPool,
    producer: Producer,
    registry: Registry,
    health: Health,
    admin: AdminServer,
    grpc: GrpcServer,
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Ctx>>,
    control: Control,
    auth: Authenticator,
    tls_failures: TlsFailures,
}

impl App {
    /// [`AppBuilder::build`] without custom handlers.
    ///
    /// # Errors
    /// As [`AppBuilder::build`].
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        AppBuilder::new(settings).build().await
    }

    /// A builder, to register handlers in code.
    pub fn builder(settings: Settings) -> AppBuilder {
        AppBuilder::new(settings)
    }

    /// The gRPC (AdminService) address.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The admin HTTP address.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Operator control of this processor.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The processor's MySQL pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The TLS failures of MySQL and Kafka that turn readiness down ([`crate::readiness`]).
    pub fn tls_failures(&self) -> TlsFailures {
        self.tls_failures.clone()
    }

    /// Runs until `shutdown` triggers, then stops in order: stop fetching, drain in-flight records
    /// (bounded), flush the writer, flush the producer, commit offsets and leave the group, stop
    /// the servers, close the pool (`pipeline.rs` has each step).
    ///
    /// # Errors
    /// The consumer cannot subscribe or the gRPC server cannot start.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let s = &self.settings;
        let servers = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(self.admin.serve(servers.clone()));
        let serving = self.grpc.serving();
        let admin_api = AdminApi::server(
            Admin {
                pool: self.pool.clone(),
                producer: self.producer.clone(),
                topics: s.kafka.topics(),
                kafka: s.kafka.clone(),
                control: self.control.clone(),
            },
            self.auth,
            s.grpc.max_request_bytes,
        );
        let grpc = self
            .grpc
            .serve(Routes::new(admin_api), servers.clone().cancelled_owned());
        tracker.spawn(async move {
            if let Err(e) = grpc.await {
                tracing::error!(error = %format!("{e:#}"), "grpc server failed");
            }
        });

        let pipeline = Pipeline::start(Deps {
            settings: s,
            pool: &self.pool,
            commits: &self.commits,
            producer: &self.producer,
            registry: &self.registry,
            health: &self.health,
            serving,
            shared: &self.shared,
            consumer: &self.consumer,
            control: &self.control,
            tls_failures: &self.tls_failures,
            servers,
            tracker,
        })
        .await?;
        shutdown.triggered().await;
        pipeline
            .stop(Duration::from_millis(s.shutdown.drain_timeout_ms))
            .await;
        Ok(())
    }
}
