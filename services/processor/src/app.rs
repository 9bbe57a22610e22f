//! [`App`]: wiring, start-up and the shutdown order.
//!
//! Over 400 lines because the processor's wiring and shutdown order are read in one place (what
//! must stop before what); the construction of the components in [`AppBuilder::build`] (about 120
//! lines) would move out first.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dispatch_runtime::admin::{AdminServer, ComponentStatus, Health};
use dispatch_runtime::kafka;
use dispatch_runtime::server::GrpcServer;
use dispatch_runtime::server::auth::Authenticator;
use dispatch_runtime::shutdown::Shutdown;
use dispatch_runtime::tls::ServerTls;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use dispatch_store::MySqlPool;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;

use crate::admin::{Admin, AdminApi};
use crate::consumer::context::Fences;
use crate::consumer::poller::Poller;
use crate::consumer::{Ctx, Shared};
use crate::control::Control;
use crate::dispatch::{Dispatcher, Lanes, weighted_order};
use crate::gate::Gate;
use crate::handler::{Handler, Registry};
use crate::process::{Parts, Processor};
use crate::produce::Producer;
use crate::readiness::TlsProbe;
use crate::scheduler::Scheduler;
use crate::settings::Settings;
use crate::slots::Slots;
use crate::writer::{self, WriterTask};
use dispatch_runtime::producer::{ProducerCore, WedgeRules};

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
        let auth = Authenticator::for_listeners(
            &s.auth,
            &[
                ("grpc.listen", s.grpc.listen),
                ("admin.listen", s.admin.listen),
            ],
        )?;
        let tls = ServerTls::from_settings(&s.grpc)?;
        dispatch_runtime::tls::check_dependencies(&s.kafka, &s.database, &s.redis).await?;
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
        // A resumed partition (a retry partition whose held record came due, a priority back
        // under its share) is fetched again only once the fetch in flight returns: at most this
        // long (librdkafka's default, 500 ms, shows as the tail of short retry delays). An idle
        // consumer costs a few more empty fetches per second.
        kafka::set_default(&mut cc, &s.kafka, "fetch.wait.max.ms", "100");
        let consumer: BaseConsumer<Ctx> = cc
            .create_with_context(Ctx::fenced(
                shared.clone(),
                Fences {
                    pool: pool.clone(),
                    group: s.consumer.group.clone(),
                    owner: instance_name(),
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
    /// the servers, close the pool.
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

        let writer_close = CancellationToken::new();
        let writer_abort = CancellationToken::new();
        let writers = TaskTracker::new();
        let writer = writer::spawn(
            WriterTask {
                commits: self.commits.clone(),
                pool: self.pool.clone(),
                producer: self.producer.clone(),
                topics: s.kafka.topics(),
                max_rows: s.writer.max_rows,
                max_delay: Duration::from_millis(s.writer.max_delay_ms),
                max_concurrent: s.writer.max_concurrent_batches,
                health: self.health.clone(),
                tls: self.tls_failures.clone(),
                close: writer_close.clone(),
                abort: writer_abort.clone(),
            },
            &writers,
            s.writer.max_rows * 4,
        );
        let gate = Gate::spawn(
            self.pool.clone(),
            s.writer.gate_max_ids,
            Duration::from_micros(s.writer.gate_max_delay_us),
        );
        let hard_stop = CancellationToken::new();
        let workflows_waker = crate::workflows::Waker::default();
        let scheduler_waker = crate::workflows::Waker::default();
        let processor = Arc::new(Processor::new(Parts {
            topics: s.kafka.topics(),
            registry: self.registry.clone(),
            writer,
            gate,
            producer: self.producer.clone(),
            pool: self.pool.clone(),
            shared: self.shared.clone(),
            consumer: self.consumer.clone(),
            paused_types: self.control.types.subscribe(),
            hard_stop: hard_stop.clone(),
            cancelled_ttl: Duration::from_millis(s.consumer.cancelled_ttl_ms),
            slots: Slots::new(s.consumer.max_concurrency, s.consumer.priority_weights),
            retry_topic_max_delay: Duration::from_millis(s.consumer.retry_topic_max_delay_ms),
            workflows: workflows_waker.clone(),
        }));

        let (c_tx, c_rx) = mpsc::unbounded_channel();
        let (d_tx, d_rx) = mpsc::unbounded_channel();
        let (l_tx, l_rx) = mpsc::unbounded_channel();
        let stop_dispatch = CancellationToken::new();
        let dispatcher = tokio::spawn(
            Dispatcher {
                rx: [c_rx, d_rx, l_rx],
                order: weighted_order(s.consumer.priority_weights),
                lanes: Arc::new(Lanes::default()),
                processor: processor.clone(),
                stop: stop_dispatch.clone(),
            }
            .run(),
        );

        let topics = s.kafka.topics().all_task_topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&refs).context("subscribing")?;
        let stop_fetch = CancellationToken::new();
        let close = CancellationToken::new();
        let poller = Poller {
            consumer: self.consumer.clone(),
            shared: self.shared.clone(),
            out: [c_tx, d_tx, l_tx],
            max_in_flight: s.consumer.max_in_flight,
            max_in_flight_bytes: s.consumer.max_in_flight_kbytes * 1024,
            resume_ratio: s.consumer.resume_ratio,
            priority_weights: s.consumer.priority_weights,
            stop_fetch: stop_fetch.clone(),
            close: close.clone(),
        };
        let poll_thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poller.run())
            .context("spawning the poll thread")?;

        let background = CancellationToken::new();
        if s.scheduler.enabled {
            tracker.spawn(
                Scheduler {
                    pool: self.pool.clone(),
                    producer: self.producer.clone(),
                    topics: s.kafka.topics(),
                    interval: Duration::from_millis(s.scheduler.interval_ms),
                    batch_size: s.scheduler.batch_size,
                    republish_after: Duration::from_millis(s.scheduler.republish_after_ms),
                    wake: scheduler_waker.clone(),
                    stop: background.clone(),
                }
                .run(),
            );
        }
        if s.workflows.enabled {
            tracker.spawn(
                crate::workflows::Advancer {
                    pool: self.pool.clone(),
                    producer: self.producer.clone(),
                    topics: s.kafka.topics(),
                    interval: Duration::from_millis(s.workflows.interval_ms),
                    batch_size: s.workflows.batch_size,
                    resend_after: Duration::from_millis(s.workflows.resend_after_ms),
                    waker: workflows_waker,
                    scheduler: scheduler_waker,
                    stop: background.clone(),
                }
                .run(),
            );
        }
        if s.retention.enabled {
            tracker.spawn(
                crate::retention::Retention {
                    pool: self.pool.clone(),
                    settings: s.retention.clone(),
                    kafka: s.kafka.clone(),
                    stop: background.clone(),
                    observer: None,
                }
                .run(),
            );
        }
        if s.schedules.enabled {
            tracker.spawn(
                crate::schedules::ScheduleLoop {
                    pool: self.pool.clone(),
                    interval: Duration::from_millis(s.schedules.interval_ms),
                    batch_size: s.schedules.batch_size,
                    misfire_grace: Duration::from_millis(s.schedules.misfire_grace_ms),
                    stop: background.clone(),
                }
                .run(),
            );
        }
        tracker.spawn(self.control.clone().sync_loop(
            Duration::from_millis(s.consumer.pause_sync_ms),
            background.clone(),
        ));
        tracker.spawn(crate::lag::run(
            self.consumer.clone(),
            self.shared.clone(),
            self.pool.clone(),
            s.database.max_connections,
            Duration::from_millis(s.consumer.lag_interval_ms),
            background.clone(),
        ));
        // Until the producer is flushed at shutdown: a producer wedged after broker restarts
        // holds every attempt waiting on a retry record or an event, and their keys' lanes.
        let watch_producer = CancellationToken::new();
        tracker.spawn(dispatch_runtime::producer::watchdog(
            self.producer.core().clone(),
            WedgeRules {
                wedge: Duration::from_millis(s.writer.producer_wedge_ms),
                probe_topic: s.kafka.topics().events(),
                blind: false,
            },
            watch_producer.clone(),
        ));
        self.health.set("mysql", ComponentStatus::Up);
        self.health.set("kafka", ComponentStatus::Up);
        serving.set(true).await;
        let stop_probe = CancellationToken::new();
        let probe = tokio::spawn(
            TlsProbe {
                tls: self.tls_failures.clone(),
                health: self.health.clone(),
                serving: serving.clone(),
                pool: self.pool.clone(),
                producer: self.producer.core().clone(),
                topic: s.kafka.topics().events(),
                settings: s.health.clone(),
            }
            .run(stop_probe.clone()),
        );
        tracing::info!(group = %s.consumer.group, topics = topics.len(), "processor running");

        shutdown.triggered().await;
        tracing::info!("shutting down");
        // The probe first, so it cannot report SERVING after this.
        stop_probe.cancel();
        let _ = probe.await;
        serving.set(false).await;
        self.health
            .set("processor", ComponentStatus::Down("shutting down".into()));

        // 1. Stop fetching and dispatching; stop the scheduler.
        stop_fetch.cancel();
        stop_dispatch.cancel();
        background.cancel();
        let _ = dispatcher.await;
        // Records not started yet are dropped (read again by the next owner), as on a revoke: a
        // record waiting behind a running one of its key must not start once that one is
        // stopped, or it would run ahead of it.
        self.shared.partitions.revoke_all_tokens();
        // 2. Drain running records within the bound; then cancel what is left.
        let drain = Duration::from_millis(s.shutdown.drain_timeout_ms);
        let started = Instant::now();
        while self.shared.partitions.running() > 0 && started.elapsed() < drain {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.shared.partitions.running() > 0 {
            tracing::warn!(
                running = self.shared.partitions.running(),
                "drain timed out; cancelling the rest"
            );
            hard_stop.cancel();
            let grace = Instant::now();
            while self.shared.partitions.running() > 0 && grace.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // 3. Flush the writer (bounded: a dead database cannot hold shutdown forever).
        writer_close.cancel();
        writers.close();
        if tokio::time::timeout(Duration::from_secs(10), writers.wait())
            .await
            .is_err()
        {
            writer_abort.cancel();
            writers.wait().await;
        }
        // 4. Flush the producer.
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        watch_producer.cancel();
        // 5. Commit what is persisted and leave the group.
        close.cancel();
        let _ = tokio::task::spawn_blocking(move || poll_thread.join()).await;
        // 6. Servers and pool.
        servers.cancel();
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        self.pool.close().await;
        self.commits.close().await;
        tracing::info!("processor stopped");
        Ok(())
    }
}

/// This process as the owner recorded with its lease epochs: `<hostname>:<pid>`.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}
