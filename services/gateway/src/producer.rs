//! The Kafka side: an idempotent `FutureProducer` (acks=all, lz4, small linger, murmur2_random
//! from `dispatch_runtime::kafka::producer_config`) behind a circuit breaker and a produce timeout.

use std::time::{Duration, Instant};

use dispatch_core::Headers;
use dispatch_runtime::settings::KafkaSettings;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::breaker::{self, Breaker};
use crate::metrics;
use crate::settings::OutboxSettings;

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
    /// No delivery report in time (the record may still be delivered later).
    #[error("no delivery report within {0:?}")]
    Timeout(Duration),
    /// librdkafka reported a failure.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// The producer, its breaker and the submit path's timeout. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    breaker: Breaker,
    timeout: Duration,
}

impl Producer {
    /// Creates the producer (does not connect yet: librdkafka connects in the background).
    ///
    /// # Errors
    /// An invalid librdkafka configuration.
    pub fn new(kafka: &KafkaSettings, outbox: &OutboxSettings) -> anyhow::Result<Self> {
        let inner: FutureProducer = dispatch_runtime::kafka::producer_config(kafka)
            .create()
            .map_err(|e| anyhow::anyhow!("kafka producer: {e}"))?;
        Ok(Self {
            inner,
            breaker: breaker::new(
                "kafka",
                outbox.breaker_failures,
                outbox.breaker_open_ms,
                outbox.breaker_max_open_ms,
            ),
            timeout: Duration::from_millis(outbox.produce_timeout_ms),
        })
    }

    /// The Kafka breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The submit path: through the breaker, waiting at most the produce timeout.
    ///
    /// A timed-out record stays in librdkafka's queue and may still be delivered; the caller then
    /// parks a second copy in the outbox. That duplicate is harmless: the processor dedupes by task
    /// id (its version fence makes a replayed submit a no-op).
    ///
    /// # Errors
    /// [`ProduceError`]: breaker open, timeout or a delivery failure.
    pub async fn send_guarded(
        &self,
        rec: &OutRecord,
        topic_kind: &'static str,
    ) -> Result<Produced, ProduceError> {
        if !self.breaker.is_call_permitted() {
            return Err(ProduceError::BreakerOpen);
        }
        let out = match tokio::time::timeout(self.timeout, self.send(rec, topic_kind)).await {
            Ok(r) => r,
            Err(_) => {
                metrics::produce_failed(topic_kind, "timeout");
                Err(ProduceError::Timeout(self.timeout))
            }
        };
        match &out {
            Ok(_) => self.breaker.on_success(),
            Err(_) => self.breaker.on_error(),
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
        match self.inner.send(record, self.timeout).await {
            Ok(d) => {
                metrics::produced(topic_kind, start.elapsed());
                Ok(Produced {
                    topic: rec.topic.clone(),
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((e, _)) => {
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
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            p.client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Waits up to `timeout` for every queued record's delivery report.
    pub async fn flush(&self, timeout: Duration) {
        let p = self.inner.clone();
        let res = tokio::task::spawn_blocking(move || p.flush(timeout)).await;
        match res {
            Ok(Ok(())) => tracing::info!("kafka producer flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "kafka producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "kafka producer flush task failed"),
        }
    }
}
