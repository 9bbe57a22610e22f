//! The Kafka side: an idempotent `FutureProducer` (acks=all, lz4, small linger, murmur2_random
//! from `dispatch_runtime::kafka::producer_config`) behind a circuit breaker and a produce timeout.
//!
//! A submit must not wait on a Kafka that cannot take it: [`Producer::at_risk`] says so at once
//! when the breaker is open, when librdkafka reported all brokers down, or when records have
//! waited `outbox.produce_stall_ms` without any delivery report ([`Health`]); a submit already
//! waiting gives up as soon as that becomes true, and the gateway parks it in the outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dispatch_core::Headers;
use dispatch_runtime::settings::KafkaSettings;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _, PurgeConfig};
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::settings::OutboxSettings;
use dispatch_runtime::breaker::{Breaker, BreakerSettings};

/// A record ready to produce (or to park in the outbox).
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Record key (the business key).
    pub key: Vec<u8>,
    /// Encoded envelope.
    pub value: Vec<u8>,
    /// Envelope headers plus trace context.
    pub headers: Headers,
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why a record is not (known to be) on Kafka.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// Recent produces failed; not even tried.
    #[error("kafka circuit breaker is open")]
    BreakerOpen,
    /// Kafka is known to be in trouble (all brokers down, or records waiting without any
    /// delivery report for `outbox.produce_stall_ms`): not tried, or given up on early.
    #[error("kafka at risk: {0}")]
    AtRisk(String),
    /// No delivery report in time (the record may still be delivered later).
    #[error("no delivery report within {0:?}")]
    Timeout(Duration),
    /// librdkafka reported a failure.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// What the producer knows about its own progress, shared with its librdkafka context.
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
    /// The last metadata answer to this client (ms since `epoch`; the health probe asks every
    /// `health.probe_interval_ms`).
    last_metadata_ms: AtomicU64,
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
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn started(&self) -> SendGuard<'_> {
        if self.sending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.busy_since_ms.store(self.now_ms(), Ordering::Release);
        }
        SendGuard(self)
    }

    fn acked(&self) {
        self.last_ack_ms.store(self.now_ms(), Ordering::Release);
        self.brokers_down.store(false, Ordering::Release);
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
    /// librdkafka's own count of records not yet reported, which includes abandoned sends).
    pub fn stalled_for(&self, queued: i32) -> Option<Duration> {
        if self.sending.load(Ordering::Acquire) == 0 && queued <= 0 {
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
}

/// Counts a send until its report arrives or it is abandoned.
struct SendGuard<'a>(&'a Health);

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The producer's librdkafka context: tells [`Health`] when librdkafka gives up on every broker
/// (so submits stop waiting on Kafka at once), logs like the default context, and keeps what a
/// wedge report needs: the last [`CAPTURED_LINES`] librdkafka log lines (with the debug contexts
/// of `outbox.producer_debug`, which only go there) and the latest statistics.
#[derive(Clone)]
pub struct Context {
    health: Arc<Health>,
    capture: Arc<Capture>,
}

/// librdkafka log lines kept for a wedge report.
pub const CAPTURED_LINES: usize = 300;

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
        dispatch_runtime::kafka::record_statistics("gateway", statistics);
        *self.capture.stats.lock() = Some(String::from_utf8_lossy(statistics).into_owned());
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.all_brokers_down();
        }
        tracing::warn!(error = %error, reason, "librdkafka error");
    }
}

/// The producer, its breaker, the submit path's timeout and what it knows of its own progress.
/// Cheap to clone; every clone sees a rebuild ([`Producer::rebuild`]).
#[derive(Clone)]
pub struct Producer {
    client: Arc<parking_lot::RwLock<FutureProducer<Context>>>,
    config: Arc<ClientConfig>,
    context: Context,
    breaker: Breaker,
    timeout: Duration,
    stall: Duration,
    write_reserve: Duration,
    health: Arc<Health>,
    rebuilds: Arc<AtomicU64>,
    last_report: Arc<parking_lot::Mutex<Option<String>>>,
}

impl Producer {
    /// Creates the producer (does not connect yet: librdkafka connects in the background).
    ///
    /// # Errors
    /// An invalid librdkafka configuration.
    pub fn new(kafka: &KafkaSettings, outbox: &OutboxSettings) -> anyhow::Result<Self> {
        let health = Arc::new(Health::default());
        let mut config = dispatch_runtime::kafka::producer_config(kafka);
        // Statistics for the wedge report (librdkafka's own view of brokers, queues and the
        // idempotent producer's state), unless the raw options say otherwise.
        dispatch_runtime::kafka::set_default(&mut config, kafka, "statistics.interval.ms", "10000");
        if !outbox.producer_debug.is_empty() {
            dispatch_runtime::kafka::set_default(
                &mut config,
                kafka,
                "debug",
                &outbox.producer_debug,
            );
        }
        let context = Context {
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
            rebuilds: Arc::default(),
            last_report: Arc::default(),
            breaker: Breaker::new(
                metrics::SERVICE,
                "kafka",
                BreakerSettings::from_ms(
                    outbox.breaker_failures,
                    outbox.breaker_open_ms,
                    outbox.breaker_max_open_ms,
                ),
            ),
            timeout: Duration::from_millis(outbox.produce_timeout_ms),
            stall: Duration::from_millis(outbox.produce_stall_ms.max(1)),
            write_reserve: Duration::from_millis(outbox.write_reserve_ms),
            health,
        })
    }

    /// The current librdkafka producer (a clone of its handle).
    fn client(&self) -> FutureProducer<Context> {
        self.client.read().clone()
    }

    /// How many times this producer was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Acquire)
    }

    /// The report logged at the last rebuild (librdkafka's statistics and recent log lines).
    pub fn last_wedge_report(&self) -> Option<String> {
        self.last_report.lock().clone()
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
    /// one's queued and in-flight records are purged (their sends fail at once: submits fall
    /// back to the outbox, the relay retries its rows) and it is destroyed off the runtime.
    ///
    /// # Errors
    /// The configuration no longer creates a producer (the old one stays).
    pub async fn rebuild(&self, why: &str) -> anyhow::Result<()> {
        let report = format!("{why}\n{}", self.debug_context());
        tracing::warn!(why, context = %report, "kafka producer makes no progress; rebuilding it");
        *self.last_report.lock() = Some(report);
        let fresh: FutureProducer<Context> = self
            .config
            .create_with_context(self.context.clone())
            .map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?;
        let old = std::mem::replace(&mut *self.client.write(), fresh);
        self.health.reset();
        self.rebuilds.fetch_add(1, Ordering::AcqRel);
        metrics::producer_rebuilt();
        tokio::task::spawn_blocking(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            drop(old);
        });
        Ok(())
    }

    /// The Kafka breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// What the producer knows of its progress.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The submit path's produce timeout (`outbox.produce_timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time a submit keeps back from its deadline for the outbox write
    /// (`outbox.write_reserve_ms`).
    pub fn write_reserve(&self) -> Duration {
        self.write_reserve
    }

    /// Why a produce now is at risk, if it is: the breaker is open, librdkafka reported all
    /// brokers down, or records have waited `outbox.produce_stall_ms` without a delivery report.
    pub fn at_risk(&self) -> Option<String> {
        if !self.breaker.permits() {
            return Some("circuit breaker open".into());
        }
        self.risk()
    }

    /// [`Producer::at_risk`] without asking the breaker (asking moves it to half-open).
    fn risk(&self) -> Option<String> {
        if self.health.brokers_down() {
            return Some("all brokers down".into());
        }
        match self.health.stalled_for(self.client().in_flight_count()) {
            Some(d) if d >= self.stall => {
                Some(format!("no delivery report for {} ms", d.as_millis()))
            }
            _ => None,
        }
    }

    /// The submit path: through the breaker, waiting at most `budget` (at most the produce
    /// timeout; less when the caller's deadline leaves less), and giving up at once when Kafka
    /// turns out to be at risk while the record waits.
    ///
    /// A record given up on stays in librdkafka's queue and may still be delivered; the caller
    /// then parks a second copy in the outbox. That duplicate is harmless: the processor dedupes
    /// by task id (its version fence makes a replayed submit a no-op).
    ///
    /// # Errors
    /// [`ProduceError`]: breaker open, at risk, timeout or a delivery failure.
    pub async fn send_guarded(
        &self,
        rec: &OutRecord,
        topic_kind: &'static str,
        budget: Option<Duration>,
    ) -> Result<Produced, ProduceError> {
        if !self.breaker.permits() {
            return Err(ProduceError::BreakerOpen);
        }
        if let Some(why) = self.risk() {
            return Err(ProduceError::AtRisk(why));
        }
        let wait = budget.map_or(self.timeout, |b| b.min(self.timeout));
        let tick = (self.stall / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let start = Instant::now();
        let send = self.send(rec, topic_kind);
        tokio::pin!(send);
        let out = loop {
            let left = wait.saturating_sub(start.elapsed());
            tokio::select! {
                r = &mut send => break r,
                () = tokio::time::sleep(tick.min(left)) => {
                    if start.elapsed() >= wait {
                        metrics::produce_failed(topic_kind, "timeout");
                        if wait < self.timeout {
                            // The caller's deadline, not Kafka, cut it short.
                            return Err(ProduceError::Timeout(wait));
                        }
                        break Err(ProduceError::Timeout(wait));
                    }
                    if let Some(why) = self.risk() {
                        metrics::produce_failed(topic_kind, "at risk");
                        break Err(ProduceError::AtRisk(why));
                    }
                }
            }
        };
        match &out {
            Ok(_) => self.breaker.success(),
            Err(_) => self.breaker.failure(),
        }
        out
    }

    /// Produces and waits for librdkafka's definitive delivery report (bounded by
    /// `kafka.message_timeout_ms`), so a failure here means the record is not on Kafka.
    ///
    /// # Errors
    /// [`ProduceError::Kafka`].
    pub async fn send(
        &self,
        rec: &OutRecord,
        topic_kind: &'static str,
    ) -> Result<Produced, ProduceError> {
        let start = Instant::now();
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.0.len());
        for (key, value) in rec.headers.iter() {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let record = FutureRecord::to(&rec.topic)
            .key(&rec.key)
            .payload(&rec.value)
            .headers(headers);
        let _sending = self.health.started();
        let client = self.client();
        match client.send(record, self.timeout).await {
            Ok(d) => {
                self.health.acked();
                metrics::produced(topic_kind, start.elapsed());
                Ok(Produced {
                    topic: rec.topic.clone(),
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((e, _)) => {
                self.health.failed();
                let reason = e.to_string();
                metrics::produce_failed(topic_kind, &reason);
                Err(ProduceError::Kafka(reason))
            }
        }
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

    /// Waits up to `timeout` for every queued record's delivery report.
    pub async fn flush(&self, timeout: Duration) {
        let p = self.client();
        let res = tokio::task::spawn_blocking(move || p.flush(timeout)).await;
        match res {
            Ok(Ok(())) => tracing::info!("kafka producer flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "kafka producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "kafka producer flush task failed"),
        }
    }
}

/// Watches the producer until `stop`: when it has made no progress for `outbox.producer_wedge_ms`
/// although it had work (records waiting, or deliveries failing) while the cluster answers a
/// metadata request for `probe_topic`, it is wedged (seen after a broker restart: librdkafka
/// 2.12.1's idempotent producer kept its records queued and never sent them, so the outbox never
/// drained). The watchdog logs librdkafka's statistics and recent log lines, then rebuilds it.
/// At most one rebuild per `producer_wedge_ms`: the new producer starts its own grace period.
pub async fn watchdog(
    producer: Producer,
    probe_topic: String,
    s: OutboxSettings,
    stop: CancellationToken,
) {
    let wedge = Duration::from_millis(s.producer_wedge_ms.max(1));
    let every = (wedge / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let queued = producer.client().in_flight_count();
        let Some(idle) = producer.health.no_progress_for(queued) else {
            // No work: the client may still be blind. Seen after a broker restart: one gateway's
            // client kept failing metadata requests (BrokerTransportFailure) for good while the
            // broker served everyone else; it had nothing queued (Kafka looked down, so submits
            // went to the outbox and the relay waited for Kafka), so the rule below never fired
            // and the outbox never drained. A client blind for `producer_wedge_ms` while a new
            // client from the same configuration gets answers is rebuilt.
            // The health probe asks for metadata every second: no request of our own here.
            let blind = producer.health.blind_for();
            if blind >= wedge
                && producer
                    .fresh_client_reaches(probe_topic.clone(), Duration::from_secs(2))
                    .await
                    .is_ok()
            {
                let why = format!(
                    "no metadata answer for {} ms while a new client gets answers",
                    blind.as_millis()
                );
                if let Err(e) = producer.rebuild(&why).await {
                    tracing::error!(error = %e, "cannot rebuild the kafka producer");
                }
            }
            continue;
        };
        if idle < wedge {
            continue;
        }
        // Only while the cluster is reachable: an outage is not a wedge.
        if producer
            .check_metadata(probe_topic.clone(), Duration::from_secs(2))
            .await
            .is_err()
        {
            continue;
        }
        let why = format!(
            "no delivery report for {} ms with {queued} records queued, while the cluster answers metadata requests",
            idle.as_millis()
        );
        if let Err(e) = producer.rebuild(&why).await {
            tracing::error!(error = %e, "cannot rebuild the kafka producer");
        }
    }
}
