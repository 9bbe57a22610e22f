//! Reading dead letters back from `dispatch.dlq` by their coordinates.
//!
//! A short-lived consumer (one per request) that never joins a group: it assigns the partition at
//! the wanted offset and polls. Consecutive offsets of one partition (a redrive in id order
//! usually reads runs of them) stream without a new seek. Blocking: call from `spawn_blocking`.

use std::time::{Duration, Instant};

use dispatch_core::Headers;
use dispatch_runtime::settings::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};

/// Seek instead of reading forward when the wanted offset is further ahead than this.
const MAX_SKIP: i64 = 1_000;

/// A record as stored on the DLQ.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    /// Record key.
    pub key: Vec<u8>,
    /// Record value (an envelope, or a poison record's raw bytes).
    pub value: Vec<u8>,
    /// Headers (routing + provenance).
    pub headers: Headers,
}

/// Why a dead letter's record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Kafka refused or failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The offset is no longer on the topic (retention) or never held a record.
    #[error("record {partition}/{offset} is no longer on the DLQ topic")]
    Gone {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
    /// Nothing arrived in time.
    #[error("timed out reading {partition}/{offset} from the DLQ topic")]
    Timeout {
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
}

/// Reads DLQ records by (partition, offset).
pub struct DlqReader {
    consumer: BaseConsumer,
    topic: String,
    /// The assigned partition and the offset the next poll returns.
    at: Option<(i32, i64)>,
    timeout: Duration,
}

impl DlqReader {
    /// A reader of `topic` on the brokers of `kafka`; each read waits at most `timeout`.
    ///
    /// # Errors
    /// The client cannot be created (bad configuration).
    pub fn new(kafka: &KafkaSettings, topic: String, timeout: Duration) -> Result<Self, ReadError> {
        let mut cfg = dispatch_runtime::kafka::consumer_config(kafka, "dispatch-admin-dlq-reader");
        // Assign-only: never joins the group, never commits.
        cfg.set("enable.auto.commit", "false")
            .set("queued.max.messages.kbytes", "4096");
        Ok(Self {
            consumer: cfg.create()?,
            topic,
            at: None,
            timeout,
        })
    }

    fn seek(&mut self, partition: i32, offset: i64) -> Result<(), ReadError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        self.at = Some((partition, offset));
        Ok(())
    }

    /// The record at `partition`/`offset`.
    ///
    /// # Errors
    /// Kafka errors, a record gone from the topic, or a timeout.
    pub fn read(&mut self, partition: i32, offset: i64) -> Result<DlqRecord, ReadError> {
        let streaming = matches!(self.at, Some((p, next)) if p == partition && next <= offset && offset - next <= MAX_SKIP);
        if !streaming {
            self.seek(partition, offset)?;
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The position is unknown now: seek next time.
                self.at = None;
                return Err(ReadError::Timeout { partition, offset });
            }
            let Some(msg) = self.consumer.poll(left) else {
                continue;
            };
            let msg = msg?;
            if msg.partition() != partition {
                continue;
            }
            self.at = Some((partition, msg.offset() + 1));
            if msg.offset() < offset {
                continue;
            }
            if msg.offset() > offset {
                return Err(ReadError::Gone { partition, offset });
            }
            let mut headers = Headers::default();
            if let Some(h) = msg.headers() {
                for hd in h.iter() {
                    headers.set(hd.key, hd.value.unwrap_or_default());
                }
            }
            return Ok(DlqRecord {
                key: msg.key().unwrap_or_default().to_vec(),
                value: msg.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
}
