//! Producing retry, DLQ, event and scheduler records, with delivery metrics and retries.

use std::time::{Duration, Instant};

use dispatch_core::Headers;
use dispatch_runtime::kafka::StatisticsContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio_util::sync::CancellationToken;

use crate::metrics::{PRODUCE_DURATION, PRODUCE_ERRORS};

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The processor's producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<StatisticsContext>,
}

/// Kafka headers from ours.
pub fn kafka_headers(h: &Headers) -> OwnedHeaders {
    h.iter().fold(OwnedHeaders::new(), |acc, (k, v)| {
        acc.insert(Header {
            key: k,
            value: Some(v),
        })
    })
}

impl Producer {
    /// Wraps a producer (its context records librdkafka's statistics as the processor's).
    pub fn new(inner: FutureProducer<StatisticsContext>) -> Self {
        Self { inner }
    }

    /// Produces one record and waits for its acknowledgement.
    ///
    /// # Errors
    /// The delivery failed (after the client's own retries within `message.timeout.ms`).
    pub async fn send(
        &self,
        kind: &'static str,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &Headers,
    ) -> Result<Delivered, rdkafka::error::KafkaError> {
        let started = Instant::now();
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(kafka_headers(headers));
        let r = self.inner.send(record, Duration::from_secs(5)).await;
        match r {
            Ok(d) => {
                PRODUCE_DURATION
                    .with_label_values(&[kind])
                    .observe(started.elapsed().as_secs_f64());
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((e, _)) => {
                PRODUCE_ERRORS.with_label_values(&[kind]).inc();
                Err(e)
            }
        }
    }

    /// Hands one record to the client *now* and returns the wait for its acknowledgement. Records
    /// enqueued one after another keep that order on their partition (the idempotent producer
    /// preserves it), which [`Producer::send`] cannot promise for concurrent callers. Falls back to
    /// `send` (waiting for queue space) when the local queue is full.
    pub fn enqueue(
        &self,
        kind: &'static str,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &Headers,
    ) -> futures::future::BoxFuture<'static, Result<Delivered, rdkafka::error::KafkaError>> {
        let started = Instant::now();
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(value)
            .headers(kafka_headers(headers));
        match self.inner.send_result(record) {
            Ok(delivery) => Box::pin(async move {
                let outcome = match delivery.await {
                    Ok(Ok(d)) => Ok(Delivered {
                        partition: d.partition,
                        offset: d.offset,
                    }),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(rdkafka::error::KafkaError::Canceled),
                };
                match &outcome {
                    Ok(_) => PRODUCE_DURATION
                        .with_label_values(&[kind])
                        .observe(started.elapsed().as_secs_f64()),
                    Err(_) => PRODUCE_ERRORS.with_label_values(&[kind]).inc(),
                }
                outcome
            }),
            Err(_) => {
                let (this, topic, key, value, headers) = (
                    self.clone(),
                    topic.to_owned(),
                    key.to_vec(),
                    value.to_vec(),
                    headers.clone(),
                );
                Box::pin(async move { this.send(kind, &topic, &key, &value, &headers).await })
            }
        }
    }

    /// [`Producer::send`], retried with backoff until it succeeds or `give_up` fires (`None`).
    pub async fn send_until(
        &self,
        kind: &'static str,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &Headers,
        give_up: &CancellationToken,
    ) -> Option<Delivered> {
        dispatch_runtime::retry::until_ok(&format!("produce to {topic}"), give_up, || {
            self.send(kind, topic, key, value, headers)
        })
        .await
    }

    /// Waits up to `timeout` for every queued record to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.inner.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}
