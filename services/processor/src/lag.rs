//! Consumer lag: per assigned partition, high watermark minus committed offset.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::consumer::{Ctx, Shared};
use crate::metrics::{LAG, OLDEST_PENDING};

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to be written.
    pub high_watermark: i64,
    /// Committed offset (the low watermark when the group has none).
    pub committed_offset: i64,
    /// `high_watermark - committed_offset`.
    pub lag: i64,
}

/// Positions of every assigned partition (blocking: asks the brokers).
pub fn partition_stats(consumer: &BaseConsumer<Ctx>, shared: &Shared) -> Vec<PartitionStats> {
    let assigned = shared.partitions.assigned();
    if assigned.is_empty() {
        return Vec::new();
    }
    let mut tpl = TopicPartitionList::new();
    for tp in &assigned {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read committed offsets");
            TopicPartitionList::new()
        });
    assigned
        .iter()
        .filter_map(|tp| {
            let (low, high) = consumer
                .fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5))
                .ok()?;
            let c = committed
                .find_partition(&tp.topic, tp.partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low);
            Some(PartitionStats {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                high_watermark: high,
                committed_offset: c,
                lag: (high - c).max(0),
            })
        })
        .collect()
}

/// Refreshes the lag, oldest-pending and pool gauges every `interval` until `stop`.
pub async fn run(
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    pool: dispatch_store::MySqlPool,
    max_connections: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        OLDEST_PENDING.set(shared.partitions.oldest_pending_age().as_secs_f64());
        dispatch_runtime::metrics::db_pool("processor", &pool, max_connections);
        let (c, s) = (consumer.clone(), shared.clone());
        if let Ok(stats) = tokio::task::spawn_blocking(move || partition_stats(&c, &s)).await {
            LAG.reset();
            for p in stats {
                LAG.with_label_values(&[&p.topic, &p.partition.to_string()])
                    .set(p.lag);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => break,
        }
    }
}
