//! The events consumer: every reader instance reads *all* partitions of the events topic and
//! applies each event to its own caches (see [`Reader::apply_event`]).
//!
//! Every instance needs every event, so partitions are assigned directly instead of through a
//! consumer group (a group would share them out and add a rebalance delay). The instance starts at
//! the current end of each partition, resolved to concrete offsets before it reports ready, so an
//! event produced after start-up is never skipped; earlier history is what MySQL and the TTLs are
//! for. Nothing is committed. Partitions added to the topic later are picked up from their start.

use std::sync::Arc;
use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_runtime::admin::{ComponentStatus, Health};
use dispatch_runtime::kafka::StatisticsContext;
use dispatch_runtime::settings::KafkaSettings;
use prost::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::lookup::Reader;

/// Health component name of the events consumer.
pub const EVENTS: &str = "events";

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Whether the events consumer's Kafka answers: clears a Kafka TLS failure once it does.
#[derive(Clone)]
pub struct KafkaProbe {
    consumer: Arc<StreamConsumer<StatisticsContext>>,
    topic: String,
}

impl KafkaProbe {
    /// Whether a metadata request for the events topic is answered within `timeout`.
    pub async fn reaches(&self, timeout: Duration) -> bool {
        let (consumer, topic) = (Arc::clone(&self.consumer), self.topic.clone());
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}

/// The consumer and what it has been assigned.
pub struct EventsConsumer {
    consumer: Arc<StreamConsumer<StatisticsContext>>,
    topic: String,
    partitions: usize,
    health: Health,
}

impl EventsConsumer {
    /// Creates the consumer (nothing is assigned yet: see [`EventsConsumer::assign`]).
    ///
    /// # Errors
    /// Invalid client configuration.
    pub fn new(s: &KafkaSettings, prefetch_kbytes: u32, health: Health) -> anyhow::Result<Self> {
        let group = format!("dispatch-reader-{}", uuid::Uuid::now_v7().simple());
        let mut cfg = dispatch_runtime::kafka::consumer_config(s, &group);
        cfg.set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest");
        // Bound prefetch (RSS), unless the raw options say otherwise.
        dispatch_runtime::kafka::set_default(
            &mut cfg,
            s,
            "queued.max.messages.kbytes",
            prefetch_kbytes.to_string(),
        );
        dispatch_runtime::kafka::enable_statistics(&mut cfg, s);
        let consumer: StreamConsumer<StatisticsContext> = cfg
            .create_with_context(StatisticsContext::new("reader"))
            .map_err(|e| anyhow::anyhow!("events consumer: {e}"))?;
        health.set(EVENTS, ComponentStatus::Degraded("not assigned yet".into()));
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: s.topics().events(),
            partitions: 0,
            health,
        })
    }

    /// A metadata probe on this consumer's connections (for the health probe).
    pub fn probe(&self) -> KafkaProbe {
        KafkaProbe {
            consumer: Arc::clone(&self.consumer),
            topic: self.topic.clone(),
        }
    }

    /// Assigns partitions not assigned yet: at their current end on the first call, from their
    /// beginning when they appear later. Returns how many partitions are assigned.
    ///
    /// # Errors
    /// Metadata or offsets could not be read.
    pub async fn assign(&mut self) -> anyhow::Result<usize> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let known = self.partitions;
        let assigned = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let md = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            let count = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            if count == 0 {
                anyhow::bail!("topic {topic} has no partitions (does it exist?)");
            }
            if count <= known {
                return Ok(known);
            }
            let mut tpl = TopicPartitionList::new();
            for p in known..count {
                let p = i32::try_from(p)?;
                let offset = if known == 0 {
                    let (_, high) = consumer.fetch_watermarks(&topic, p, METADATA_TIMEOUT)?;
                    Offset::Offset(high)
                } else {
                    Offset::Beginning
                };
                tpl.add_partition_offset(&topic, p, offset)?;
            }
            consumer.incremental_assign(&tpl)?;
            Ok(count)
        })
        .await??;
        if assigned != self.partitions {
            tracing::info!(topic = %self.topic, partitions = assigned, "events consumer assigned");
        }
        self.partitions = assigned;
        self.health.set(EVENTS, ComponentStatus::Up);
        Ok(assigned)
    }

    /// Applies events until `stop` fires, (re)assigning when needed.
    pub async fn run(mut self, reader: Arc<Reader>, stop: CancellationToken) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.partitions == 0
                && let Err(e) = self.assign().await
            {
                self.health.set(
                    EVENTS,
                    ComponentStatus::Degraded(format!("cannot assign: {e}")),
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                _ = check.tick() => {
                    // New partitions, and a health check that works without traffic.
                    if let Err(e) = self.assign().await {
                        self.health.set(EVENTS, ComponentStatus::Degraded(format!("kafka: {e}")));
                    }
                }
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let Some(payload) = m.payload() else { continue };
                        match pb::TaskEvent::decode(payload) {
                            Ok(ev) => {
                                reader.apply_event(ev).await;
                            }
                            Err(e) => tracing::warn!(
                                partition = m.partition(), offset = m.offset(), error = %e,
                                "undecodable task event; skipped"
                            ),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "events consumer error");
                        self.health.set(EVENTS, ComponentStatus::Degraded(format!("kafka: {e}")));
                    }
                }
            }
        }
    }
}
