//! Producing retry, DLQ, event and scheduler records, with delivery metrics and retries.

use std::time::{Duration, Instant};

use dispatch_core::Headers;
use dispatch_runtime::producer::{Landed, ProducerCore, kafka_headers};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

use dispatch_runtime::producer::{delivered, delivery_failed};

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The processor's producer: the shared core ([`ProducerCore`]: progress, wedge report, rebuild),
/// with the processor's delivery metrics. Cheap to clone; every clone sees a rebuild.
#[derive(Clone)]
pub struct Producer {
    core: ProducerCore,
}

/// One record to produce: its topic, key, value and headers.
#[derive(Clone, Copy)]
pub struct Out<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Record key (the partitioner's input).
    pub key: &'a [u8],
    /// Value.
    pub value: &'a [u8],
    /// Headers.
    pub headers: &'a Headers,
}

impl<'a> Out<'a> {
    /// A record for `topic`.
    pub fn new(topic: &'a str, key: &'a [u8], value: &'a [u8], headers: &'a Headers) -> Self {
        Self {
            topic,
            key,
            value,
            headers,
        }
    }

    fn record(self) -> FutureRecord<'a, [u8], [u8]> {
        FutureRecord::to(self.topic)
            .key(self.key)
            .payload(self.value)
            .headers(kafka_headers(self.headers))
    }
}

/// Runs `sends` (one per record) concurrently and keeps the values of those that returned one:
/// the records delivered, each named as its send chose.
pub async fn each_delivered<T>(
    sends: impl IntoIterator<Item = impl Future<Output = Option<T>>>,
) -> Vec<T> {
    futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn observed(
    kind: &'static str,
    started: Instant,
    r: Result<Landed, rdkafka::error::KafkaError>,
) -> Result<Delivered, rdkafka::error::KafkaError> {
    match r {
        Ok((partition, offset)) => {
            delivered(kind, started.elapsed());
            Ok(Delivered { partition, offset })
        }
        Err(e) => {
            delivery_failed(kind);
            Err(e)
        }
    }
}

impl Producer {
    /// Wraps a producer core.
    pub fn new(core: ProducerCore) -> Self {
        Self { core }
    }

    /// The shared core (for the watchdog and tests).
    pub fn core(&self) -> &ProducerCore {
        &self.core
    }

    /// Produces one record and waits for its acknowledgement.
    ///
    /// # Errors
    /// The delivery failed (after the client's own retries within `message.timeout.ms`), or the
    /// record was purged by a rebuild.
    pub async fn send(
        &self,
        kind: &'static str,
        out: Out<'_>,
    ) -> Result<Delivered, rdkafka::error::KafkaError> {
        let started = Instant::now();
        let sent = self.core.send(out.record(), Duration::from_secs(5)).await;
        observed(kind, started, sent)
    }

    /// Hands one record to the client *now* and returns the wait for its acknowledgement, with
    /// whether it was handed over now. Records handed over one after another keep that order on
    /// their partition (the idempotent producer preserves it, within one client: see
    /// [`Producer::rebuilds`]), which [`Producer::send`] cannot promise for concurrent callers.
    /// Falls back to `send` (waiting for queue space, so *not* in order with records enqueued
    /// meanwhile) when the local queue is full.
    pub fn enqueue(
        &self,
        kind: &'static str,
        out: Out<'_>,
    ) -> (
        futures::future::BoxFuture<'static, Result<Delivered, rdkafka::error::KafkaError>>,
        bool,
    ) {
        let started = Instant::now();
        match self.core.enqueue(out.record()) {
            Ok(delivery) => (
                Box::pin(async move { observed(kind, started, delivery.await) }),
                true,
            ),
            Err(_) => {
                let (this, topic, key, value, headers) = (
                    self.clone(),
                    out.topic.to_owned(),
                    out.key.to_vec(),
                    out.value.to_vec(),
                    out.headers.clone(),
                );
                let send = async move {
                    this.send(kind, Out::new(&topic, &key, &value, &headers))
                        .await
                };
                (Box::pin(send), false)
            }
        }
    }

    /// How many times the client was rebuilt. A rebuild starts a new client (a new idempotence
    /// session), so records handed over before it are in no order with records after it.
    pub fn rebuilds(&self) -> u64 {
        self.core.rebuilds()
    }

    /// [`Producer::send`], retried with backoff until it succeeds or `give_up` fires (`None`).
    pub async fn send_until(
        &self,
        kind: &'static str,
        out: Out<'_>,
        give_up: &CancellationToken,
    ) -> Option<Delivered> {
        let what = format!("produce to {}", out.topic);
        dispatch_runtime::retry::until_ok(&what, give_up, || self.send(kind, out)).await
    }

    /// Waits up to `timeout` for every queued record to be delivered (blocking).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.core.flush_blocking(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}
