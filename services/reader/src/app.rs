//! Assembles the reader ([`App::build`]) and runs it until shutdown ([`App::run_until_stopped`]).
//!
//! Over 400 lines because it is the reader's whole wiring in one place: what [`App::build`]
//! creates (caches, store, Redis, the event consumer, the gRPC and admin servers), the shutdown
//! order in [`App::run_until_stopped`], and the background Redis connect and dependency probes the
//! health checks read; those background loops would move out first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dispatch_proto::v1::task_query_service_server::TaskQueryServiceServer;
use dispatch_runtime::admin::{AdminServer, ComponentStatus, Health};
use dispatch_runtime::server::auth::Authenticator;
use dispatch_runtime::server::{GrpcServer, Rpcs, Serving, Spec};
use dispatch_runtime::tls::check_at_start;
use dispatch_runtime::tls_failures::{Dependency, TlsFailures};
use dispatch_runtime::{Shutdown, kafka, redis_client};
use tonic::service::Routes;

use crate::events::{EventsConsumer, KafkaProbe};
use crate::l1::L1;
use crate::l2::L2;
use crate::l2::REDIS;
use crate::lookup::{Freshness, Reader};
use crate::metrics::{self, Stats};
use crate::notify::Notifier;
use crate::service::{Limits, QueryApi};
use crate::settings::Settings;
use crate::store::Store;
use dispatch_runtime::breaker::{Breaker, BreakerSettings};
use dispatch_runtime::ratelimit::SharedLimiter;

/// Health component name of MySQL.
pub const MYSQL: &str = "mysql";

/// What the reader's gRPC server serves.
pub const GRPC: Spec = Spec {
    label: "reader",
    services: &[Rpcs {
        service: dispatch_proto::v1::task_query_service_server::SERVICE_NAME,
        methods: &metrics::METHODS,
    }],
};

/// A built reader: listeners bound, clients connected, not serving yet.
pub struct App {
    settings: Settings,
    grpc: GrpcServer,
    admin: AdminServer,
    health: Health,
    reader: Arc<Reader>,
    auth: Arc<Authenticator>,
    events: EventsConsumer,
    tls: TlsFailures,
}

/// A view of a running app for tests and benchmarks.
#[derive(Clone)]
pub struct ReaderHandle {
    reader: Arc<Reader>,
    health: Health,
    tls: TlsFailures,
}

impl ReaderHandle {
    /// Per-instance counters.
    pub fn stats(&self) -> &Stats {
        &self.reader.stats
    }

    /// Component health (mysql, redis, events).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The TLS failures of MySQL, Redis and Kafka that the probe turns into readiness.
    pub fn tls_failures(&self) -> &TlsFailures {
        &self.tls
    }

    /// Whether the Redis breaker is open.
    pub fn redis_breaker_open(&self) -> bool {
        self.reader.l2.breaker().is_open()
    }

    /// Test hook: closes the MySQL pool, so every later query fails as if the database were gone.
    pub async fn close_store_for_tests(&self) {
        self.reader.store.pool().close().await;
    }
}

impl App {
    /// Validates settings, connects MySQL (required), Redis and Kafka (both optional: the app
    /// starts degraded and recovers in the background), and binds the listeners.
    ///
    /// # Errors
    /// Invalid settings, MySQL unreachable within `database.connect_timeout_ms`, or an address
    /// that cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let s = &settings;
        s.validate()?;
        let tls = check_at_start(&s.grpc, &s.kafka, &s.database, Some(&s.redis)).await?;
        let auth = Arc::new(Authenticator::for_service(&s.auth, &s.grpc, &s.admin)?);
        metrics::init();
        dispatch_runtime::metrics::register_runtime_metrics("reader");
        let health = Health::new();
        // Before the clients: the events consumer's context reports to it from the start.
        let tls_failures = TlsFailures::new(
            "reader",
            &[Dependency::Kafka, Dependency::Mysql, Dependency::Redis],
        );
        let c = &s.cache;
        let ms = Duration::from_millis;

        let pool = dispatch_store::pool::connect_replica(&s.database)
            .await
            .context("connecting to mysql")?;
        health.set(MYSQL, ComponentStatus::Up);
        let stats = Arc::new(Stats::default());
        let store = Store::new(
            pool,
            c.store_max_concurrency,
            ms(c.store_queue_timeout_ms),
            Arc::clone(&stats),
        )
        .with_tls_failures(tls_failures.clone());

        let breaker = Breaker::with_health(
            "reader",
            REDIS,
            BreakerSettings::from_ms(c.breaker_failures, c.breaker_open_ms, c.breaker_max_open_ms),
            health.clone(),
            REDIS,
        );
        let l2 = Arc::new(
            L2::new(
                c,
                s.redis.key_prefix.clone(),
                ms(s.redis.command_timeout_ms),
                breaker,
            )
            .with_tls_failures(tls_failures.clone()),
        );
        if l2.enabled() {
            connect_redis(s, &l2, &health, &tls_failures).await;
        }

        let mut events =
            EventsConsumer::new(&s.kafka, s.cache.events_prefetch_kbytes, health.clone())?;
        if s.kafka.create_topics {
            let topic = s.kafka.topics().events();
            let specs: Vec<_> = kafka::dispatch_topics(&s.kafka)
                .into_iter()
                .filter(|t| t.name == topic)
                .collect();
            if let Err(e) = kafka::ensure_topics(&s.kafka, &specs).await {
                tracing::warn!(error = %e, "cannot ensure the events topic; will retry assignment");
            }
        }
        if let Err(e) = events.assign().await {
            tracing::warn!(error = %e, "events consumer not assigned yet; retrying in the background");
        }

        let reader = Arc::new(Reader {
            l1: Arc::new(L1::new(c)),
            l2,
            store,
            notifier: Arc::new(Notifier::default()),
            stats,
            freshness: Freshness {
                beta: c.xfetch_beta,
                ryw_wait: ms(c.read_your_writes_wait_ms),
                ryw_poll: ms(c.read_your_writes_poll_ms),
            },
        });
        let grpc = GrpcServer::bind(GRPC, &s.grpc, tls).await?;
        let admin = AdminServer::bind(s.admin.listen, health.clone())
            .await
            .with_context(|| format!("binding admin.listen {}", s.admin.listen))?;
        let admin = admin.with_profiling(&s.admin, &s.auth)?;
        Ok(Self {
            settings,
            grpc,
            admin,
            health,
            reader,
            auth,
            events,
            tls: tls_failures,
        })
    }

    /// The gRPC address.
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

    /// A handle for tests and benchmarks.
    pub fn handle(&self) -> ReaderHandle {
        ReaderHandle {
            reader: Arc::clone(&self.reader),
            health: self.health.clone(),
            tls: self.tls.clone(),
        }
    }

    /// Serves until `shutdown` fires, then stops in order: health NOT_SERVING → stop accepting
    /// and drain in-flight requests (bounded; watch streams end at once) → stop the events
    /// consumer and probes → stop the admin server → close the pool.
    ///
    /// # Errors
    /// The gRPC server fails.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let serving = self.grpc.serving();
        let kafka = self.events.probe();

        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin_task = tokio::spawn(self.admin.serve(admin_stop.clone()));
        shutdown.spawn(self.events.run(Arc::clone(&self.reader), shutdown.child()));
        shutdown.spawn(probe_loop(
            Arc::clone(&self.reader),
            self.health.clone(),
            serving.clone(),
            self.settings.clone(),
            Tls {
                failures: self.tls,
                kafka,
            },
            shutdown.child(),
        ));

        let svc = QueryApi::new(
            Arc::clone(&self.reader),
            self.auth,
            shutdown.child(),
            Limits {
                watch: crate::watch::WatchLimits {
                    max_streams: self.settings.cache.watch_max_streams,
                    max_streams_per_tenant: self.settings.cache.watch_max_streams_per_tenant,
                    max_duration: Duration::from_millis(self.settings.cache.watch_max_duration_ms),
                    poll: Duration::from_millis(self.settings.cache.watch_poll_ms),
                },
                max_response_bytes: self.settings.query.max_response_bytes,
            },
        )
        .with_rate_limits(Arc::new(
            SharedLimiter::connected(
                crate::limits::config(&self.settings.limits),
                Some(&self.settings.redis),
            )
            .await,
        ));
        let max = self.settings.grpc.max_request_bytes;
        let svc = TaskQueryServiceServer::new(svc).max_decoding_message_size(max);
        let server = self
            .grpc
            .serve(Routes::new(svc), shutdown.child().cancelled_owned());
        let server = tokio::spawn(server);
        if self.health.is_ready() {
            serving.set(true).await;
        }
        tracing::info!(%addr, "reader serving");

        shutdown.triggered().await;
        let drain = Duration::from_millis(self.settings.shutdown.drain_timeout_ms);
        let served = match tokio::time::timeout(drain, server).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::anyhow!("grpc server task failed: {e}")),
            Err(_) => {
                tracing::warn!("drain timed out; dropping remaining requests");
                Ok(())
            }
        };
        if !shutdown.wait(drain).await {
            tracing::warn!("background tasks did not stop in time");
        }
        admin_stop.cancel();
        let _ = admin_task.await;
        self.reader.store.pool().close().await;
        tracing::info!("reader stopped");
        served
    }
}

async fn connect_redis(settings: &Settings, l2: &L2, health: &Health, tls: &TlsFailures) {
    let wait = Duration::from_millis(settings.redis.connect_timeout_ms.saturating_mul(2));
    match tokio::time::timeout(wait, redis_client::connect(&settings.redis)).await {
        Ok(Ok(conn)) => {
            l2.set_connection(conn);
            tls.succeeded(Dependency::Redis);
            health.set(REDIS, ComponentStatus::Up);
        }
        Ok(Err(e)) => {
            tls.observe(Dependency::Redis, &e);
            health.set(
                REDIS,
                ComponentStatus::Degraded(format!("not reachable: {e}")),
            );
        }
        Err(_) => health.set(REDIS, ComponentStatus::Degraded("connect timed out".into())),
    }
}

/// What the probe turns into the `<dependency>_tls` components.
struct Tls {
    /// Recorded by the store, L2, the Redis connects and (heard) the events consumer's context.
    failures: TlsFailures,
    /// Clears a Kafka failure once Kafka answers.
    kafka: KafkaProbe,
}

/// The dependencies whose TLS failures only degrade the reader, as their other failures do
/// (`redis`, `events`): it answers correctly without Redis, and without the events topic its
/// caches are kept by their TTLs (a live task's L2 copy: 10 s) and read-your-writes re-reads
/// MySQL. Taking every replica out of service (they share trust and credentials) would turn a
/// cache and freshness problem into an outage of reads. MySQL's failure is Down: NOT_SERVING.
const TLS_OPTIONAL: &[Dependency] = &[Dependency::Redis, Dependency::Kafka];

/// Background probes: MySQL reachability drives readiness and gRPC health; Redis is reconnected
/// and pinged so its breaker closes again without traffic; cache and pool gauges are published.
/// Run-time TLS failures (`dispatch_runtime::tls_failures`): `mysql_tls` Down (and NOT_SERVING),
/// `redis_tls` and `kafka_tls` Degraded ([`TLS_OPTIONAL`]), each for `health.tls_hold_ms` after
/// the last failure and until the dependency has worked since (a `SELECT 1`, a Redis connect or
/// PING, a metadata answer to the events consumer).
async fn probe_loop(
    reader: Arc<Reader>,
    health: Health,
    serving: Serving,
    settings: Settings,
    tls: Tls,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = Duration::from_millis(settings.cache.probe_interval_ms);
    let hold = Duration::from_millis(settings.health.tls_hold_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let timeout = every.max(Duration::from_millis(500));
        let (mysql, ()) = tokio::join!(reader.store.ping(timeout), async {
            // Only while a Kafka TLS failure waits for Kafka to work again.
            if tls
                .failures
                .failing(Dependency::Kafka, Duration::ZERO)
                .is_some()
                && tls.kafka.reaches(timeout).await
            {
                tls.failures.succeeded(Dependency::Kafka);
            }
        });
        let up = mysql.is_ok() && tls.failures.failing(Dependency::Mysql, hold).is_none();
        // gRPC health first, so whoever sees the component change sees gRPC health agree.
        if reported != Some(up) {
            serving.set(up).await;
            reported = Some(up);
        }
        health.set_up_or_down(MYSQL, mysql);
        let l2 = &reader.l2;
        if l2.enabled() {
            if !l2.connected() {
                connect_redis(&settings, l2, &health, &tls.failures).await;
            } else if l2.breaker().is_open() {
                // Permitted only once the open period passed (half-open): a success closes it.
                if l2.ping().await {
                    tls.failures.succeeded(Dependency::Redis);
                }
            } else {
                health.set(REDIS, ComponentStatus::Up);
                if tls
                    .failures
                    .failing(Dependency::Redis, Duration::ZERO)
                    .is_some()
                    && l2.ping().await
                {
                    tls.failures.succeeded(Dependency::Redis);
                }
            }
        }
        tls.failures.sync(&health, hold, TLS_OPTIONAL);
        let (entries, bytes) = reader.l1.size().await;
        metrics::cache_size(entries, bytes);
        reader
            .store
            .export_pool_gauges(settings.database.max_connections);
    }
}
