//! The Kafka side: an idempotent `FutureProducer` (acks=all, lz4, small linger, murmur2_random
//! from `dispatch_runtime::kafka::producer_config`) behind a circuit breaker and a produce timeout.
//!
//! A submit must not wait on a Kafka that cannot take it: [`Producer::at_risk`] says so at once
//! when the breaker is open, when librdkafka reported all brokers down, or when records have
//! waited `outbox.produce_stall_ms` without any delivery report ([`Health`]); a submit already
//! waiting gives up as soon as that becomes true, and the gateway parks it in the outbox. The
//! client itself, its progress and its rebuild are `dispatch_runtime::producer`'s core, shared
//! with the processor.

use std::time::{Duration, Instant};

use dispatch_core::Headers;
use dispatch_runtime::producer::{Health, ProducerCore, WedgeRules, kafka_headers};
use dispatch_runtime::settings::KafkaSettings;
use futures::StreamExt;
use futures::future::Either;
use futures::stream::FuturesUnordered;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
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

/// The producer, its breaker, the submit path's timeout and what it knows of its own progress.
/// Cheap to clone; every clone sees a rebuild ([`Producer::rebuild`]).
#[derive(Clone)]
pub struct Producer {
    core: ProducerCore,
    breaker: Breaker,
    timeout: Duration,
    stall: Duration,
    write_reserve: Duration,
}

impl Producer {
    /// Creates the producer (does not connect yet: librdkafka connects in the background).
    ///
    /// # Errors
    /// An invalid librdkafka configuration.
    pub fn new(kafka: &KafkaSettings, outbox: &OutboxSettings) -> anyhow::Result<Self> {
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
        Ok(Self {
            core: ProducerCore::new(metrics::SERVICE, config)?,
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
        })
    }

    /// The shared producer core (client, progress, rebuild).
    pub fn core(&self) -> &ProducerCore {
        &self.core
    }

    /// How many times this producer was rebuilt.
    pub fn rebuilds(&self) -> u64 {
        self.core.rebuilds()
    }

    /// The report logged at the last rebuild (librdkafka's statistics and recent log lines).
    pub fn last_wedge_report(&self) -> Option<String> {
        self.core.last_wedge_report()
    }

    /// What librdkafka knows right now: its latest statistics and its recent log lines.
    pub fn debug_context(&self) -> String {
        self.core.debug_context()
    }

    /// Replaces the librdkafka producer ([`ProducerCore::rebuild`]): the old one's records fail
    /// at once (submits fall back to the outbox, the relay retries its rows).
    ///
    /// # Errors
    /// The configuration no longer creates a producer (the old one stays).
    pub async fn rebuild(&self, why: &str) -> anyhow::Result<()> {
        self.core.rebuild(why).await
    }

    /// The Kafka breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// What the producer knows of its progress.
    pub fn health(&self) -> &Health {
        self.core.health()
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
        let health = self.core.health();
        if health.brokers_down() {
            return Some("all brokers down".into());
        }
        match health.stalled_for(|| self.core.in_flight_count()) {
            Some(d) if d >= self.stall => {
                Some(format!("no delivery report for {} ms", d.as_millis()))
            }
            _ => None,
        }
    }

    /// The submit path for one record: [`Producer::send_many_guarded`] of one.
    ///
    /// # Errors
    /// [`ProduceError`]: breaker open, at risk, timeout or a delivery failure.
    pub async fn send_guarded(
        &self,
        rec: &OutRecord,
        topic_kind: &'static str,
        budget: Option<Duration>,
    ) -> Result<Produced, ProduceError> {
        let mut out = self.send_many_guarded(&[rec], topic_kind, budget).await;
        out.pop()
            .unwrap_or_else(|| Err(ProduceError::Kafka("no delivery result".into())))
    }

    /// The submit path: through the breaker, waiting at most `budget` (at most the produce
    /// timeout; less when the caller's deadline leaves less), and giving up at once when Kafka
    /// turns out to be at risk while the records wait. Returns one result per record, in order.
    ///
    /// Every record is handed to librdkafka at once, in order (records of one key keep their
    /// order on the partition), and their delivery reports are awaited together under one timer:
    /// a SubmitTasks call of 100 records costs one wait, not 100. A record librdkafka's queue
    /// cannot take right now waits for space as [`Producer::send`] does, and a later record of
    /// its key can overtake it then (as with one send per record before). The breaker hears of
    /// each record as its report arrives.
    ///
    /// A record given up on stays in librdkafka's queue and may still be delivered; the caller
    /// then parks a second copy in the outbox. That duplicate is harmless: the processor dedupes
    /// by task id (its version fence makes a replayed submit a no-op).
    pub async fn send_many_guarded(
        &self,
        recs: &[&OutRecord],
        topic_kind: &'static str,
        budget: Option<Duration>,
    ) -> Vec<Result<Produced, ProduceError>> {
        let refuse_all = |e: ProduceError| recs.iter().map(|_| Err(e.clone())).collect();
        if !self.breaker.permits() {
            return refuse_all(ProduceError::BreakerOpen);
        }
        if let Some(why) = self.risk() {
            return refuse_all(ProduceError::AtRisk(why));
        }
        let wait = budget.map_or(self.timeout, |b| b.min(self.timeout));
        let tick = (self.stall / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let start = Instant::now();
        let mut out: Vec<Option<Result<Produced, ProduceError>>> = vec![None; recs.len()];
        let mut waiting = FuturesUnordered::new();
        for (i, rec) in recs.iter().enumerate() {
            match self.core.enqueue(future_record(rec)) {
                Ok(delivery) => waiting.push(Either::Left(async move { (i, delivery.await) })),
                // The queue is full: wait for space like `send` (rare; boxed to keep the common
                // delivery future small).
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    let core = &self.core;
                    let timeout = self.timeout;
                    waiting.push(Either::Right(Box::pin(async move {
                        (i, core.send(future_record(rec), timeout).await)
                    })));
                }
                Err(e) => {
                    self.breaker.failure();
                    out[i] = Some(Err(self.failed(topic_kind, &e)));
                }
            }
        }
        let sleep = tokio::time::sleep(tick.min(wait));
        tokio::pin!(sleep);
        let gave_up = loop {
            tokio::select! {
                // Reports that arrived count before the timer gives up on anything.
                biased;
                next = waiting.next() => match next {
                    None => break None,
                    Some((i, r)) => {
                        out[i] = Some(match r {
                            Ok((partition, offset)) => {
                                metrics::produced(topic_kind, start.elapsed());
                                self.breaker.success();
                                Ok(Produced {
                                    topic: recs[i].topic.clone(),
                                    partition,
                                    offset,
                                })
                            }
                            Err(e) => {
                                self.breaker.failure();
                                Err(self.failed(topic_kind, &e))
                            }
                        });
                    }
                },
                () = &mut sleep => {
                    let elapsed = start.elapsed();
                    if elapsed >= wait {
                        break Some(ProduceError::Timeout(wait));
                    }
                    if let Some(why) = self.risk() {
                        break Some(ProduceError::AtRisk(why));
                    }
                    sleep.as_mut().reset((Instant::now() + tick.min(wait - elapsed)).into());
                }
            }
        };
        // The records still waiting are given up on (their sends are dropped with `waiting`).
        let given_up = |e: &ProduceError| {
            metrics::produce_failed(
                topic_kind,
                match e {
                    ProduceError::Timeout(_) => "timeout",
                    _ => "at risk",
                },
            );
            Err(e.clone())
        };
        // A timeout cut short by the caller's deadline says nothing about Kafka.
        let callers = matches!(&gave_up, Some(ProduceError::Timeout(w)) if *w < self.timeout);
        out.into_iter()
            .map(|o| match (o, &gave_up) {
                (Some(r), _) => r,
                (None, Some(e)) => {
                    if !callers {
                        self.breaker.failure();
                    }
                    given_up(e)
                }
                (None, None) => Err(ProduceError::Kafka("no delivery report".into())),
            })
            .collect()
    }

    fn failed(&self, topic_kind: &'static str, e: &KafkaError) -> ProduceError {
        let reason = e.to_string();
        metrics::produce_failed(topic_kind, &reason);
        ProduceError::Kafka(reason)
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
        match self.core.send(future_record(rec), self.timeout).await {
            Ok((partition, offset)) => {
                metrics::produced(topic_kind, start.elapsed());
                Ok(Produced {
                    topic: rec.topic.clone(),
                    partition,
                    offset,
                })
            }
            Err(e) => Err(self.failed(topic_kind, &e)),
        }
    }

    /// Whether the cluster answers a metadata request for `topic` within `timeout`.
    ///
    /// # Errors
    /// The librdkafka error text.
    pub async fn check_metadata(&self, topic: String, timeout: Duration) -> Result<(), String> {
        self.core.check_metadata(topic, timeout).await
    }

    /// Waits up to `timeout` for every queued record's delivery report.
    pub async fn flush(&self, timeout: Duration) {
        let core = self.core.clone();
        let res = tokio::task::spawn_blocking(move || core.flush_blocking(timeout)).await;
        match res {
            Ok(Ok(())) => tracing::info!("kafka producer flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "kafka producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "kafka producer flush task failed"),
        }
    }
}

fn future_record(rec: &OutRecord) -> FutureRecord<'_, [u8], [u8]> {
    FutureRecord::to(&rec.topic)
        .key(rec.key.as_slice())
        .payload(rec.value.as_slice())
        .headers(kafka_headers(&rec.headers))
}

/// Watches the producer until `stop` ([`dispatch_runtime::producer::watchdog`]): rebuilt when it
/// has made no progress for `outbox.producer_wedge_ms` although it had work while the cluster
/// answers, or when it has had no metadata answer that long while a new client gets answers (the
/// health probe asks every second).
pub async fn watchdog(
    producer: Producer,
    probe_topic: String,
    s: OutboxSettings,
    stop: CancellationToken,
) {
    let rules = WedgeRules {
        wedge: Duration::from_millis(s.producer_wedge_ms),
        probe_topic,
        blind: true,
    };
    dispatch_runtime::producer::watchdog(producer.core, rules, stop).await;
}
