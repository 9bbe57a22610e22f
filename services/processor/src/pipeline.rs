//! [`Pipeline`]: the consumption pipeline the [`App`](crate::App) runs once its servers are up,
//! the order it starts in and the order the processor stops in.
//!
//! [`Pipeline::start`], in order:
//! 1. the batch writer ([`crate::writer`]) and the gate ([`Gate`]);
//! 2. the [`Processor`] and the [`Dispatcher`] that feeds it;
//! 3. the subscription and the poll thread ([`Poller`], `kafka-poll`);
//! 4. the background loops on the app's tracker: the scheduler, the workflow advancer, retention,
//!    the schedule loop (each if enabled), the pause sync, lag, and the producer's watchdog;
//! 5. `mysql` and `kafka` Up, gRPC SERVING, then the [`TlsProbe`].
//!
//! [`Pipeline::stop`], the processor's shutdown, in order (each [`Stops`] token fires at one step):
//! - the probe, so it cannot report SERVING after this; then NOT_SERVING and `processor` Down;
//! 1. stop fetching, dispatching and the background loops; await the dispatcher; drop the records
//!    not started yet (their tokens are revoked);
//! 2. drain the running records within the bound, then hard-stop what is left (2 s grace);
//! 3. flush the writer (10 s), then abort it;
//! 4. flush the producer (5 s), then stop its watchdog;
//! 5. commit what is persisted and leave the group (the poll thread ends);
//! 6. stop the app's servers (they answer until the group is left), wait for the tracker (servers
//!    and background loops, 5 s at most), close the pools.
//!
//! The [`Processor`], and with it the writer's intake and the gate, is dropped only after step 6:
//! the writer ends at step 3, never earlier because its last sender went away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dispatch_runtime::admin::{ComponentStatus, Health};
use dispatch_runtime::producer::WedgeRules;
use dispatch_runtime::server::Serving;
use dispatch_runtime::tls_failures::TlsFailures;
use dispatch_store::MySqlPool;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::consumer::poller::Poller;
use crate::consumer::{Ctx, Shared};
use crate::control::Control;
use crate::gate::Gate;
use crate::handler::Registry;
use crate::lanes::{Dispatcher, Lanes, weighted_order};
use crate::process::{Parts, Processor};
use crate::produce::Producer;
use crate::readiness::TlsProbe;
use crate::scheduler::Scheduler;
use crate::settings::Settings;
use crate::slots::Slots;
use crate::writer::{self, WriterTask};

/// What the pipeline runs with: the app's handles, its servers' stop and its tracker.
pub struct Deps<'a> {
    /// The processor's settings.
    pub settings: &'a Settings,
    /// The processor's MySQL pool.
    pub pool: &'a MySqlPool,
    /// The batch writer's own connections ([`writer::commit_pool`]).
    pub commits: &'a MySqlPool,
    /// The Kafka producer.
    pub producer: &'a Producer,
    /// The task handlers.
    pub registry: &'a Registry,
    /// `/readyz`'s components.
    pub health: &'a Health,
    /// gRPC health: SERVING once started, NOT_SERVING first thing at stop.
    pub serving: Serving,
    /// Shared consumption state.
    pub shared: &'a Arc<Shared>,
    /// The group consumer.
    pub consumer: &'a Arc<BaseConsumer<Ctx>>,
    /// Operator control (paused types, the pause sync).
    pub control: &'a Control,
    /// Run-time TLS failures of MySQL and Kafka.
    pub tls_failures: &'a TlsFailures,
    /// The app's servers' stop (step 6).
    pub servers: CancellationToken,
    /// Where the servers run and the background loops are spawned; waited for at step 6.
    pub tracker: TaskTracker,
}

/// The stop signals, each fired at most once by [`Pipeline::stop`], at the step its line names.
#[derive(Default)]
struct Stops {
    /// The TLS probe; fired first, so it cannot report SERVING once shutdown started.
    probe: CancellationToken,
    /// The poll thread's fetching (it keeps serving callbacks); step 1.
    fetch: CancellationToken,
    /// The dispatcher, which abandons what is still queued; step 1.
    dispatch: CancellationToken,
    /// The background loops (scheduler, workflows, retention, schedules, pause sync, lag); step 1.
    background: CancellationToken,
    /// The handlers still running when the drain bound is over; step 2, only if some are.
    hard_stop: CancellationToken,
    /// The writer's intake: it flushes what is queued and exits; step 3.
    writer_close: CancellationToken,
    /// The writer's retries of a failing batch, if its flush took over 10 s; step 3.
    writer_abort: CancellationToken,
    /// The producer's watchdog, once the producer is flushed; step 4.
    watch_producer: CancellationToken,
    /// The poll thread: it commits what is persisted, leaves the group and exits; step 5.
    close: CancellationToken,
    /// The app's admin HTTP and gRPC servers; step 6.
    servers: CancellationToken,
}

/// The running consumption pipeline: writer, gate, processor, dispatcher, poll thread,
/// background loops, producer watchdog and TLS probe; and what its stop ends last (servers,
/// tracker, pools).
pub struct Pipeline {
    stops: Stops,
    probe: JoinHandle<()>,
    serving: Serving,
    health: Health,
    shared: Arc<Shared>,
    /// Dropped last in [`Pipeline::stop`] (see the module docs).
    processor: Arc<Processor>,
    dispatcher: JoinHandle<()>,
    writers: TaskTracker,
    producer: Producer,
    poll_thread: std::thread::JoinHandle<()>,
    tracker: TaskTracker,
    pool: MySqlPool,
    commits: MySqlPool,
}

impl Pipeline {
    /// Starts the pipeline in the order of the module docs; returns once gRPC health is SERVING.
    ///
    /// # Errors
    /// The consumer cannot subscribe or the poll thread cannot be spawned.
    pub async fn start(d: Deps<'_>) -> anyhow::Result<Pipeline> {
        let s = d.settings;
        // Ticking before the first record, so a stall is seen from the start (crate::stall).
        crate::stall::start();
        let stops = Stops {
            servers: d.servers,
            ..Stops::default()
        };
        let writers = TaskTracker::new();
        let writer = writer::spawn(
            WriterTask {
                commits: d.commits.clone(),
                pool: d.pool.clone(),
                producer: d.producer.clone(),
                topics: s.kafka.topics(),
                max_rows: s.writer.max_rows,
                max_delay: Duration::from_millis(s.writer.max_delay_ms),
                max_concurrent: s.writer.max_concurrent_batches,
                hold_uncommitted: s.writer.hold_uncommitted,
                health: d.health.clone(),
                tls: d.tls_failures.clone(),
                close: stops.writer_close.clone(),
                abort: stops.writer_abort.clone(),
            },
            &writers,
            s.writer.max_rows * 4,
        );
        let gate = Gate::spawn(
            d.pool.clone(),
            s.gate.max_ids,
            Duration::from_micros(s.gate.max_delay_us),
        );
        let workflows_waker = crate::workflows::Waker::default();
        let scheduler_waker = crate::workflows::Waker::default();
        let processor = Arc::new(Processor::new(Parts {
            topics: s.kafka.topics(),
            registry: d.registry.clone(),
            writer,
            gate,
            producer: d.producer.clone(),
            pool: d.pool.clone(),
            shared: d.shared.clone(),
            consumer: d.consumer.clone(),
            paused_types: d.control.types.subscribe(),
            hard_stop: stops.hard_stop.clone(),
            cancelled_ttl: Duration::from_millis(s.consumer.cancelled_ttl_ms),
            slots: Slots::new(s.consumer.max_concurrency, s.consumer.priority_weights),
            retry_topic_max_delay: Duration::from_millis(s.consumer.retry_topic_max_delay_ms),
            retry_backstop: Duration::from_millis(s.scheduler.republish_after_ms),
            workflows: workflows_waker.clone(),
        }));

        let (c_tx, c_rx) = mpsc::unbounded_channel();
        let (d_tx, d_rx) = mpsc::unbounded_channel();
        let (l_tx, l_rx) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(
            Dispatcher {
                rx: [c_rx, d_rx, l_rx],
                order: weighted_order(s.consumer.priority_weights),
                lanes: Arc::new(Lanes::default()),
                processor: processor.clone(),
                stop: stops.dispatch.clone(),
            }
            .run(),
        );

        let topics = s.kafka.topics().all_task_topics();
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        d.consumer.subscribe(&refs).context("subscribing")?;
        let poller = Poller {
            consumer: d.consumer.clone(),
            shared: d.shared.clone(),
            out: [c_tx, d_tx, l_tx],
            max_in_flight: s.consumer.max_in_flight,
            max_in_flight_bytes: s.consumer.max_in_flight_kbytes * 1024,
            resume_ratio: s.consumer.resume_ratio,
            priority_weights: s.consumer.priority_weights,
            stop_fetch: stops.fetch.clone(),
            close: stops.close.clone(),
        };
        let poll_thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poller.run())
            .context("spawning the poll thread")?;

        let tracker = &d.tracker;
        let background = &stops.background;
        if s.scheduler.enabled {
            tracker.spawn(
                Scheduler {
                    pool: d.pool.clone(),
                    producer: d.producer.clone(),
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
                    pool: d.pool.clone(),
                    producer: d.producer.clone(),
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
                    pool: d.pool.clone(),
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
                    pool: d.pool.clone(),
                    interval: Duration::from_millis(s.schedules.interval_ms),
                    batch_size: s.schedules.batch_size,
                    misfire_grace: Duration::from_millis(s.schedules.misfire_grace_ms),
                    stop: background.clone(),
                }
                .run(),
            );
        }
        tracker.spawn(d.control.clone().sync_loop(
            Duration::from_millis(s.consumer.pause_sync_ms),
            background.clone(),
        ));
        tracker.spawn(crate::lag::run(
            d.consumer.clone(),
            d.shared.clone(),
            d.pool.clone(),
            s.database.max_connections,
            Duration::from_millis(s.consumer.lag_interval_ms),
            background.clone(),
        ));
        // Until the producer is flushed at shutdown: a producer wedged after broker restarts
        // holds every attempt waiting on a retry record or an event, and their keys' lanes.
        tracker.spawn(dispatch_runtime::producer::watchdog(
            d.producer.core().clone(),
            WedgeRules {
                wedge: Duration::from_millis(s.writer.producer_wedge_ms),
                probe_topic: s.kafka.topics().events(),
                blind: false,
            },
            stops.watch_producer.clone(),
        ));
        d.health.set("mysql", ComponentStatus::Up);
        d.health.set("kafka", ComponentStatus::Up);
        d.serving.set(true).await;
        let probe = tokio::spawn(
            TlsProbe {
                tls: d.tls_failures.clone(),
                health: d.health.clone(),
                serving: d.serving.clone(),
                pool: d.pool.clone(),
                producer: d.producer.core().clone(),
                topic: s.kafka.topics().events(),
                settings: s.health.clone(),
            }
            .run(stops.probe.clone()),
        );
        tracing::info!(group = %s.consumer.group, topics = topics.len(), "processor running");
        Ok(Pipeline {
            stops,
            probe,
            serving: d.serving,
            health: d.health.clone(),
            shared: d.shared.clone(),
            processor,
            dispatcher,
            writers,
            producer: d.producer.clone(),
            poll_thread,
            tracker: d.tracker,
            pool: d.pool.clone(),
            commits: d.commits.clone(),
        })
    }

    /// Stops the processor in the order of the module docs: running records get `drain` to finish
    /// before their handlers are cancelled. Returns once the pools are closed.
    pub async fn stop(self, drain: Duration) {
        tracing::info!("shutting down");
        // The probe first, so it cannot report SERVING after this.
        self.stops.probe.cancel();
        let _ = self.probe.await;
        self.serving.set(false).await;
        self.health
            .set("processor", ComponentStatus::Down("shutting down".into()));

        // 1. Stop fetching and dispatching; stop the scheduler.
        self.stops.fetch.cancel();
        self.stops.dispatch.cancel();
        self.stops.background.cancel();
        let _ = self.dispatcher.await;
        // Records not started yet are dropped (read again by the next owner), as on a revoke: a
        // record waiting behind a running one of its key must not start once that one is
        // stopped, or it would run ahead of it.
        self.shared.partitions.revoke_all_tokens();
        // 2. Drain running records within the bound; then cancel what is left.
        let started = Instant::now();
        while self.shared.partitions.running() > 0 && started.elapsed() < drain {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.shared.partitions.running() > 0 {
            tracing::warn!(
                running = self.shared.partitions.running(),
                "drain timed out; cancelling the rest"
            );
            self.stops.hard_stop.cancel();
            let grace = Instant::now();
            while self.shared.partitions.running() > 0 && grace.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // 3. Flush the writer (bounded: a dead database cannot hold shutdown forever).
        self.stops.writer_close.cancel();
        self.writers.close();
        if tokio::time::timeout(Duration::from_secs(10), self.writers.wait())
            .await
            .is_err()
        {
            self.stops.writer_abort.cancel();
            self.writers.wait().await;
        }
        // 4. Flush the producer.
        let _ =
            tokio::task::spawn_blocking(move || self.producer.flush(Duration::from_secs(5))).await;
        self.stops.watch_producer.cancel();
        // 5. Commit what is persisted and leave the group.
        self.stops.close.cancel();
        let _ = tokio::task::spawn_blocking(move || self.poll_thread.join()).await;
        // 6. Servers and pool.
        self.stops.servers.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        self.pool.close().await;
        self.commits.close().await;
        tracing::info!("processor stopped");
        // Last: the writer's intake and the gate stayed open until here (see the module docs).
        drop(self.processor);
    }
}
