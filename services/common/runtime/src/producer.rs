//! The Kafka producer core the gateway and the processor share: one idempotent `FutureProducer`
//! that knows its own progress ([`Health`]), keeps what a wedge report needs (librdkafka's recent
//! log lines and latest statistics), and can be replaced in place ([`ProducerCore::rebuild`]).
//! [`watchdog`] replaces it when it has work but makes no progress while the cluster answers,
//! and as soon as the cluster answers again after librdkafka lost track of a partition's leader.
//!
//! Why: after broker restarts librdkafka 2.12.1's idempotent producer was seen keeping its
//! records queued for good ("new leader-1 not found in cache" while the broker served every other
//! client). In the gateway the outbox then never drained; in the processor every attempt waiting
//! on a retry record or an event stayed in flight, its key's lane with it, and the records behind
//! them parked until the process restarted (`kafka-restart-x5`). A rebuilt producer purges the
//! old one's records: their sends fail at once and their callers retry on the new client.
//!
//! The cause is librdkafka issue 5430 (open against 2.12.1 and 2.14.1): a produce response that
//! names a partition's current leader as -1 (a broker shutting down, a fenced broker) goes
//! through an incremental metadata update that skips the partition ("new leader-1 not found in
//! cache"), and the partition stays without a leader however many full metadata answers follow.
//! Waiting for "no progress" found it 15-25 s after every broker restart in the fault runs, and
//! never when other partitions of the same client kept delivering. That log line is the signal:
//! [`Health::leader_lost`] marks the client, and the watchdog rebuilds it once a new client gets
//! metadata answers.
//!
//! Over 400 lines on purpose: the progress state, the librdkafka context that feeds it, the client
//! that reports to it and the watchdog that reads it are one mechanism, read together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dispatch_core::Headers;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::sync::CancellationToken;

/// librdkafka log lines kept for a wedge report.
pub const CAPTURED_LINES: usize = 300;

/// What a producer knows about its own progress, shared with its librdkafka context.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Sends awaiting their delivery report.
    sending: AtomicUsize,
    /// When `sending` last went from 0 to 1 (ms since `epoch`).
    busy_since_ms: AtomicU64,
    /// The last successful delivery report (ms since `epoch`).
    last_ack_ms: AtomicU64,
    /// The last failed delivery (ms since `epoch`; 0 = none).
    last_failure_ms: AtomicU64,
    /// librdkafka reported all brokers down; cleared by a delivery or a metadata answer.
    brokers_down: AtomicBool,
    /// The last metadata answer to this client (ms since `epoch`).
    last_metadata_ms: AtomicU64,
    /// librdkafka skipped a partition's leader change ("... not found in cache"): the client
    /// may never produce to that partition again (librdkafka issue 5430). Cleared by a rebuild.
    leader_lost: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            sending: AtomicUsize::new(0),
            busy_since_ms: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            brokers_down: AtomicBool::new(false),
            last_metadata_ms: AtomicU64::new(0),
            leader_lost: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A send starts: counted until the returned guard drops (its report came, or it was
    /// abandoned).
    fn started(self: &Arc<Self>) -> SendGuard {
        if self.sending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.busy_since_ms.store(self.now_ms(), Ordering::Release);
        }
        SendGuard(self.clone())
    }

    fn acked(&self) {
        self.last_ack_ms.store(self.now_ms(), Ordering::Release);
        // Read first: a store on every delivery would bounce the line between the cores.
        if self.brokers_down.load(Ordering::Acquire) {
            self.brokers_down.store(false, Ordering::Release);
        }
    }

    fn failed(&self) {
        self.last_failure_ms.store(self.now_ms(), Ordering::Release);
    }

    /// How long the producer has made no progress although it had work: no delivery report
    /// since the last success while records waited or deliveries failed in that time. `None`
    /// while it has no work, or progresses.
    pub fn no_progress_for(&self, queued: i32) -> Option<Duration> {
        let last_ack = self.last_ack_ms.load(Ordering::Acquire);
        let now = self.now_ms();
        let waiting = self.sending.load(Ordering::Acquire) > 0 || queued > 0;
        let failing = self.last_failure_ms.load(Ordering::Acquire) > last_ack;
        (waiting || failing).then(|| Duration::from_millis(now.saturating_sub(last_ack)))
    }

    /// A new producer starts with a clean slate (its grace period counts from now).
    fn reset(&self) {
        let now = self.now_ms();
        self.last_ack_ms.store(now, Ordering::Release);
        self.last_failure_ms.store(0, Ordering::Release);
        self.brokers_down.store(false, Ordering::Release);
        self.last_metadata_ms.store(now, Ordering::Release);
        self.leader_lost.store(false, Ordering::Release);
    }

    /// The cluster answered (a metadata request): "all brokers down" is over.
    pub fn reachable(&self) {
        self.brokers_down.store(false, Ordering::Release);
        self.last_metadata_ms
            .store(self.now_ms(), Ordering::Release);
    }

    /// How long this client has had no metadata answer.
    pub fn blind_for(&self) -> Duration {
        let last = self.last_metadata_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// librdkafka reported that no broker is reachable.
    pub fn all_brokers_down(&self) {
        self.brokers_down.store(true, Ordering::Release);
    }

    /// How long records have waited without any delivery report, if any wait (`queued`:
    /// librdkafka's own count of records not yet reported, which includes abandoned sends; asked
    /// only when no send of ours waits, since it takes librdkafka's queue locks).
    pub fn stalled_for(&self, queued: impl FnOnce() -> i32) -> Option<Duration> {
        if self.sending.load(Ordering::Acquire) == 0 && queued() <= 0 {
            return None;
        }
        let since = self
            .last_ack_ms
            .load(Ordering::Acquire)
            .max(self.busy_since_ms.load(Ordering::Acquire));
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Whether librdkafka reported all brokers down (and nothing has answered since).
    pub fn brokers_down(&self) -> bool {
        self.brokers_down.load(Ordering::Acquire)
    }

    /// Whether librdkafka dropped a partition's leader change since this client was built (see
    /// the module's documentation).
    pub fn leader_lost(&self) -> bool {
        self.leader_lost.load(Ordering::Acquire)
    }

    /// Reads one librdkafka log line for the leader-loss signal.
    pub fn observe_log(&self, fac: &str, message: &str) {
        if is_leader_loss(fac, message) {
            self.leader_lost.store(true, Ordering::Release);
        }
    }
}

/// librdkafka's warning for a leader change it skipped: `METADATAUPDATE` "Partition
/// <topic>(<id>)[<n>]: new leader<id> not found in cache" (`rd_kafka_metadata_update_op`).
fn is_leader_loss(fac: &str, message: &str) -> bool {
    fac == "METADATAUPDATE" && message.contains("not found in cache")
}

/// Tells `health` how a send ended. A record purged by a rebuild is not a failure of the new
/// client: the purge settles after [`Health::reset`], and counting it had the watchdog rebuild
/// the new client one `wedge` later with nothing queued.
fn settle(health: &Health, r: Result<Landed, KafkaError>) -> Result<Landed, KafkaError> {
    match &r {
        Ok(_) => health.acked(),
        Err(e) if is_purge(e) => {}
        Err(_) => health.failed(),
    }
    r
}

/// The error of a record purged from librdkafka's queue or in-flight set.
fn is_purge(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

/// Counts a send until its report arrives or it is abandoned.
struct SendGuard(Arc<Health>);

impl Drop for SendGuard {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The producer's librdkafka context: tells [`Health`] when librdkafka gives up on every broker,
/// logs like the default context, counts TLS and SASL failures in `dispatch_tls_errors_total`
/// ([`crate::tls_failures::kafka_error`]), records the statistics as `dispatch_kafka_*` metrics
/// of its service, and keeps what a wedge report needs: the last [`CAPTURED_LINES`] librdkafka log lines
/// (debug contexts go only there) and the latest statistics.
#[derive(Clone)]
pub struct Context {
    service: &'static str,
    health: Arc<Health>,
    capture: Arc<Capture>,
}

#[derive(Default)]
struct Capture {
    lines: parking_lot::Mutex<std::collections::VecDeque<String>>,
    stats: parking_lot::Mutex<Option<String>>,
}

impl Capture {
    fn push(&self, line: String) {
        let mut l = self.lines.lock();
        if l.len() >= CAPTURED_LINES {
            l.pop_front();
        }
        l.push_back(line);
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.health.observe_log(fac, message);
        self.capture.push(format!(
            "{} {level:?} {fac} {message}",
            chrono::Utc::now().format("%H:%M:%S%.3f")
        ));
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(fac, message, "librdkafka"),
            RDKafkaLogLevel::Warning => tracing::warn!(fac, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(fac, message, "librdkafka")
            }
            // Debug contexts are for the wedge report, not the log.
            RDKafkaLogLevel::Debug => {}
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        crate::kafka::record_statistics(self.service, statistics);
        *self.capture.stats.lock() = Some(String::from_utf8_lossy(statistics).into_owned());
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.all_brokers_down();
        }
        let tls = crate::tls_failures::kafka_error(self.service, &error, reason);
        tracing::warn!(error = %error, reason, tls, "librdkafka error");
    }
}

/// Kafka headers from ours.
pub fn kafka_headers(h: &Headers) -> OwnedHeaders {
    h.iter().fold(
        OwnedHeaders::new_with_capacity(h.0.len()),
        |acc, (key, value)| {
            acc.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// Where a record landed: (partition, offset).
pub type Landed = (i32, i64);

/// The shared producer: cheap to clone, and every clone sees a rebuild.
#[derive(Clone)]
pub struct ProducerCore {
    client: Arc<parking_lot::RwLock<FutureProducer<Context>>>,
    config: Arc<ClientConfig>,
    context: Context,
    health: Arc<Health>,
    rebuilds: Arc<AtomicU64>,
    last_report: Arc<parking_lot::Mutex<Option<String>>>,
}

impl ProducerCore {
    /// Creates the producer of `service` from `config` (does not connect yet: librdkafka
    /// connects in the background).
    ///
    /// # Errors
    /// An invalid librdkafka configuration.
    pub fn new(service: &'static str, config: ClientConfig) -> anyhow::Result<Self> {
        let health = Arc::new(Health::default());
        let context = Context {
            service,
            health: health.clone(),
            capture: Arc::default(),
        };
        let client: FutureProducer<Context> = config
            .create_with_context(context.clone())
            .map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?;
        Ok(Self {
            client: Arc::new(parking_lot::RwLock::new(client)),
            config: Arc::new(config),
            context,
            health,
            rebuilds: Arc::default(),
            last_report: Arc::default(),
        })
    }

    /// The current librdkafka producer (a clone of its handle).
    pub fn client(&self) -> FutureProducer<Context> {
        self.client.read().clone()
    }

    /// What the producer knows of its progress.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// How many times this producer was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Acquire)
    }

    /// The report logged at the last rebuild (librdkafka's statistics and recent log lines).
    pub fn last_wedge_report(&self) -> Option<String> {
        self.last_report.lock().clone()
    }

    /// Produces `record` and waits for its delivery report (`queue_timeout`: how long to wait for
    /// space in librdkafka's queue).
    ///
    /// # Errors
    /// The delivery failed (or the record was purged by a rebuild).
    pub async fn send(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
        queue_timeout: Duration,
    ) -> Result<Landed, KafkaError> {
        let _sending = self.health.started();
        let r = self.client().send(record, queue_timeout).await;
        self.settle(r.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e))
    }

    /// Hands `record` to the client now (so records enqueued one after another keep their order
    /// on a partition) and returns the wait for its delivery report.
    ///
    /// # Errors
    /// librdkafka's queue is full (nothing was enqueued).
    pub fn enqueue(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<impl Future<Output = Result<Landed, KafkaError>> + Send + 'static, KafkaError> {
        let sending = self.health.started();
        // Through the lock's guard: a clone of the client's handle per record is not needed.
        let delivery = self.client.read().send_result(record).map_err(|(e, _)| e)?;
        Ok(async move {
            let r = match delivery.await {
                Ok(Ok(d)) => Ok((d.partition, d.offset)),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            };
            settle(&sending.0, r)
        })
    }

    fn settle(&self, r: Result<Landed, KafkaError>) -> Result<Landed, KafkaError> {
        settle(&self.health, r)
    }

    /// Records not yet delivered, in librdkafka's own count.
    pub fn in_flight_count(&self) -> i32 {
        self.client().in_flight_count()
    }

    /// What librdkafka knows right now: its latest statistics and its recent log lines.
    pub fn debug_context(&self) -> String {
        let stats = self
            .context
            .capture
            .stats
            .lock()
            .clone()
            .unwrap_or_else(|| "(no statistics yet)".into());
        let lines: Vec<String> = self.context.capture.lines.lock().iter().cloned().collect();
        format!(
            "librdkafka statistics: {stats}\nlibrdkafka log (last {} lines):\n{}",
            lines.len(),
            lines.join("\n")
        )
    }

    /// Replaces the librdkafka producer with a new one from the same configuration; the old
    /// one's queued and in-flight records are purged (their sends fail at once, and their callers
    /// retry or fall back) and it is destroyed off the runtime.
    ///
    /// # Errors
    /// The configuration no longer creates a producer (the old one stays).
    pub async fn rebuild(&self, why: &str) -> anyhow::Result<()> {
        let report = format!("{why}\n{}", self.debug_context());
        tracing::warn!(why, context = %report, "rebuilding the kafka producer");
        *self.last_report.lock() = Some(report);
        let fresh: FutureProducer<Context> = self
            .config
            .create_with_context(self.context.clone())
            .map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?;
        let old = std::mem::replace(&mut *self.client.write(), fresh);
        self.health.reset();
        self.rebuilds.fetch_add(1, Ordering::AcqRel);
        REBUILDS.inc();
        tokio::task::spawn_blocking(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            drop(old);
        });
        Ok(())
    }

    /// Whether the cluster answers a metadata request for `topic` within `timeout` (one topic
    /// keeps the probe cheap on a large cluster).
    ///
    /// # Errors
    /// The librdkafka error text.
    pub async fn check_metadata(&self, topic: String, timeout: Duration) -> Result<(), String> {
        let p = self.client();
        tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.health.reachable();
        Ok(())
    }

    /// Whether a new client built from this producer's configuration gets a metadata answer for
    /// `topic` within `timeout` (is the cluster reachable, whatever the state of our client?).
    ///
    /// # Errors
    /// The librdkafka error text.
    pub async fn fresh_client_reaches(
        &self,
        topic: String,
        timeout: Duration,
    ) -> Result<(), String> {
        let config = Arc::clone(&self.config);
        tokio::task::spawn_blocking(move || {
            let probe: rdkafka::producer::BaseProducer =
                config.create().map_err(|e| e.to_string())?;
            probe
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Waits up to `timeout` for every queued record's delivery report (blocking: call it off
    /// the runtime's worker threads).
    ///
    /// # Errors
    /// Records were still queued at the timeout.
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.client().flush(Timeout::After(timeout))
    }
}

static REBUILDS: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    crate::metrics::register(
        prometheus::IntCounter::new(
            "dispatch_kafka_producer_rebuilds_total",
            "Kafka producers replaced because they made no progress, or lost track of a partition leader, while the cluster was reachable.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

static PRODUCE_DURATION: std::sync::LazyLock<prometheus::HistogramVec> =
    std::sync::LazyLock::new(|| {
        crate::metrics::register(
            prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "dispatch_kafka_produce_duration_seconds",
                    "Kafka delivery-report latency, by the kind of topic produced to.",
                )
                .buckets(crate::metrics::LATENCY_BUCKETS.to_vec()),
                &["topic_kind"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        )
    });

static PRODUCE_ERRORS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        crate::metrics::register(
            prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "dispatch_kafka_produce_errors_total",
                    "Failed Kafka deliveries (errors and timeouts), by the kind of topic.",
                ),
                &["topic_kind"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
        )
    });

/// A record of `topic_kind` was acknowledged `elapsed` after it was produced
/// (`dispatch_kafka_produce_duration_seconds`).
pub fn delivered(topic_kind: &str, elapsed: Duration) {
    PRODUCE_DURATION
        .with_label_values(&[topic_kind])
        .observe(elapsed.as_secs_f64());
}

/// A produce of `topic_kind` failed or timed out (`dispatch_kafka_produce_errors_total`).
pub fn delivery_failed(topic_kind: &str) {
    PRODUCE_ERRORS.with_label_values(&[topic_kind]).inc();
}

/// Registers the producer metrics: the rebuild counter (zero until a rebuild) and the delivery
/// series of each of a service's `topic_kinds`.
pub fn init_metrics(topic_kinds: &[&str]) {
    std::sync::LazyLock::force(&REBUILDS);
    for k in topic_kinds {
        let _ = PRODUCE_DURATION.with_label_values(&[k]);
        let _ = PRODUCE_ERRORS.with_label_values(&[k]);
    }
}

/// What the [`watchdog`] treats as a wedge.
#[derive(Debug, Clone)]
pub struct WedgeRules {
    /// No progress for this long, with work, while the cluster answers: rebuild.
    pub wedge: Duration,
    /// A topic for the metadata probes.
    pub probe_topic: String,
    /// Also rebuild a client without work that has had no metadata answer for `wedge` while a
    /// new client gets answers. Only for a producer whose owner probes it regularly
    /// ([`ProducerCore::check_metadata`]); otherwise every idle client looks blind.
    pub blind: bool,
}

/// Watches `core` until `stop`: when it has made no progress for `rules.wedge` although it had
/// work (records waiting, or deliveries failing) while the cluster answers a metadata request, it
/// is wedged; the watchdog logs librdkafka's statistics and recent log lines, then rebuilds it.
/// At most one rebuild per `rules.wedge`: the new producer starts its own grace period. A client
/// that lost a partition's leader ([`Health::leader_lost`]) is rebuilt as soon as a new client
/// gets metadata answers, without waiting for `rules.wedge`.
pub async fn watchdog(core: ProducerCore, rules: WedgeRules, stop: CancellationToken) {
    let wedge = rules.wedge.max(Duration::from_millis(1));
    let every = (wedge / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // A client that had work through an outage gets this long to reconnect once the cluster
    // answers again, before "no progress" counts against it (otherwise every client with work
    // was rebuilt at the broker's return, purging records it was about to deliver).
    let grace = (wedge / 3).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut reachable_since: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if core.health.leader_lost() {
            // While the broker is still away the new client would lose the leader too: wait
            // until the cluster answers.
            if cluster_answers(&core, &rules).await {
                replace(
                    &core,
                    "librdkafka dropped a partition's leader change (\"not found in cache\", \
                     librdkafka issue 5430) and the cluster answers again",
                )
                .await;
            }
            continue;
        }
        let queued = core.in_flight_count();
        let Some(idle) = core.health.no_progress_for(queued) else {
            reachable_since = None;
            // No work: the client may still be blind. Seen after a broker restart: one gateway's
            // client kept failing metadata requests (BrokerTransportFailure) for good while the
            // broker served everyone else; it had nothing queued (Kafka looked down, so submits
            // went to the outbox and the relay waited for Kafka), so the rule below never fired
            // and the outbox never drained.
            let blind = core.health.blind_for();
            if rules.blind && blind >= wedge && cluster_answers(&core, &rules).await {
                let why = format!(
                    "no metadata answer for {} ms while a new client gets answers",
                    blind.as_millis()
                );
                replace(&core, &why).await;
            }
            continue;
        };
        if idle < wedge {
            reachable_since = None;
            continue;
        }
        // Only while the cluster is reachable: an outage is not a wedge. A fresh client, not
        // ours: a wedged client may fail its own metadata requests too.
        if !cluster_answers(&core, &rules).await {
            reachable_since = None;
            continue;
        }
        if reachable_since.get_or_insert_with(Instant::now).elapsed() < grace {
            continue;
        }
        reachable_since = None;
        let why = format!(
            "no delivery report for {} ms with {queued} records queued, while the cluster answers metadata requests",
            idle.as_millis()
        );
        replace(&core, &why).await;
    }
}

/// Whether a new client from `core`'s configuration gets a metadata answer for the probe topic
/// within 2 s: the cluster is reachable, whatever the state of `core`'s own client.
async fn cluster_answers(core: &ProducerCore, rules: &WedgeRules) -> bool {
    core.fresh_client_reaches(rules.probe_topic.clone(), Duration::from_secs(2))
        .await
        .is_ok()
}

/// [`ProducerCore::rebuild`], logging a configuration that no longer makes a producer.
async fn replace(core: &ProducerCore, why: &str) {
    if let Err(e) = core.rebuild(why).await {
        tracing::error!(error = %e, "cannot rebuild the kafka producer");
    }
}

#[cfg(test)]
mod tests {
    use dispatch_testkit::eventually;
    use rdkafka::mocking::MockCluster;

    use super::*;

    const TOPIC: &str = "dispatch.task-events";

    type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

    /// An idempotent producer on librdkafka's in-process mock cluster (one broker, [`TOPIC`]
    /// with three partitions), with `extra` librdkafka options.
    fn mock_producer(extra: &[(&str, &str)]) -> anyhow::Result<(Mock, ProducerCore)> {
        let mock = MockCluster::new(1)?;
        mock.create_topic(TOPIC, 3, 1)?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("enable.idempotence", "true");
        for (k, v) in extra {
            config.set(*k, *v);
        }
        Ok((mock, ProducerCore::new("processor", config)?))
    }

    /// The line librdkafka 2.12.1 logs when a produce response names leader -1.
    const SKIPPED: &str = "Partition dispatch.task-events(YNC+FVjVRCe7TaJCe3ll5A)[2]: new leader-1 not found in cache";

    #[test]
    fn a_skipped_leader_change_marks_the_client_until_it_is_rebuilt() {
        let h = Health::default();
        h.observe_log(
            "FAIL",
            "127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed",
        );
        h.observe_log("METADATA", "new leader-1 not found in cache");
        assert!(
            !h.leader_lost(),
            "only the METADATAUPDATE warning is the signal"
        );
        h.observe_log("METADATAUPDATE", SKIPPED);
        assert!(h.leader_lost());
        h.reset();
        assert!(!h.leader_lost(), "a rebuilt client starts clean");
    }

    /// A client marked by the warning is rebuilt once a new client reaches the cluster, long
    /// before the no-progress rule (60 s here) would fire, and with nothing queued.
    #[tokio::test]
    async fn the_watchdog_rebuilds_a_client_that_lost_a_leader_once_the_cluster_answers()
    -> anyhow::Result<()> {
        let (_mock, core) = mock_producer(&[])?;
        let stop = CancellationToken::new();
        tokio::spawn(watchdog(
            core.clone(),
            WedgeRules {
                wedge: Duration::from_secs(60),
                probe_topic: TOPIC.into(),
                blind: false,
            },
            stop.clone(),
        ));
        core.context
            .log(RDKafkaLogLevel::Warning, "METADATAUPDATE", SKIPPED);
        eventually(
            "a rebuild after the warning",
            Duration::from_secs(20),
            || async { (core.rebuilds() > 0).then_some(()) },
        )
        .await?;
        stop.cancel();
        assert!(!core.health().leader_lost());
        let report = core.last_wedge_report().unwrap_or_default();
        assert!(report.contains("librdkafka issue 5430"), "{report}");
        assert!(
            report.contains("not found in cache"),
            "the report keeps the warning: {report}"
        );
        // The new client delivers.
        let r = core
            .send(
                FutureRecord::to(TOPIC).key(&b"k"[..]).payload(&b"v"[..]),
                Duration::from_secs(5),
            )
            .await;
        assert!(r.is_ok(), "{r:?}");
        Ok(())
    }

    /// The records a rebuild purges fail after the new client's clean slate; they are the old
    /// client's failures, not the new one's.
    #[tokio::test]
    async fn records_purged_by_a_rebuild_do_not_count_against_the_new_client() -> anyhow::Result<()>
    {
        use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
        let (mock, core) = mock_producer(&[("message.timeout.ms", "0")])?;
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10_000],
        );
        let stuck = {
            let core = core.clone();
            tokio::spawn(async move {
                core.send(
                    FutureRecord::to(TOPIC).key(&b"k"[..]).payload(&b"v"[..]),
                    Duration::from_secs(5),
                )
                .await
            })
        };
        eventually(
            "the record in librdkafka",
            Duration::from_secs(10),
            || async { (core.in_flight_count() > 0).then_some(()) },
        )
        .await?;
        core.rebuild("test").await?;
        let r = stuck.await?;
        assert!(r.as_ref().is_err_and(is_purge), "{r:?}");
        assert_eq!(core.health().no_progress_for(0), None);
        Ok(())
    }
}
