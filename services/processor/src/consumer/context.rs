//! Rebalance handling.
//!
//! On revoke (before the partitions go): drop held retry records, fire the partitions' revoke
//! tokens (lanes drop work that has not started), wait up to `consumer.rebalance_drain_ms` for
//! running records to persist, commit the watermarks synchronously and forget the trackers. Work
//! that outlives this is stale: its lease no longer matches and its effects are fenced by version.
//! On assign: start fresh trackers; the poll thread re-applies pauses on its next turn.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Shared, Tp};
use crate::metrics::REBALANCES;

/// The consumer's context.
pub struct Ctx {
    shared: Arc<Shared>,
}

impl Ctx {
    /// A context over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl ClientContext for Ctx {}

impl Ctx {
    fn log_commit(result: &rdkafka::error::KafkaResult<()>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| Tp::new(e.topic(), e.partition()))
        .collect()
}

/// Commits `marks` synchronously; failures are logged (the timer or the next owner catches up).
pub fn commit_marks(consumer: &BaseConsumer<Ctx>, marks: &[(Tp, i64)], why: &'static str) {
    if marks.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in marks {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset)) {
            tracing::warn!(error = %e, "cannot build commit list");
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => tracing::debug!(partitions = marks.len(), why, "offsets committed"),
        Err(e) => tracing::warn!(error = %e, why, "offset commit failed"),
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        REBALANCES.with_label_values(&["revoke"]).inc();
        let tps = tps_of(tpl);
        tracing::info!(partitions = tps.len(), "partitions revoked");
        self.shared.holds.lock().retain(|tp, _| !tps.contains(tp));
        let marks = self
            .shared
            .partitions
            .revoke(&tps, self.shared.rebalance_drain);
        if consumer.assignment_lost() {
            tracing::warn!("assignment lost; offsets of revoked partitions are not committed");
        } else {
            commit_marks(consumer, &marks, "revoke");
        }
        let mut paused = self.shared.paused.lock();
        for tp in &tps {
            paused.remove(tp);
        }
        self.shared.pauses_changed();
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        Self::log_commit(&result);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                REBALANCES.with_label_values(&["assign"]).inc();
                let tps = tps_of(tpl);
                tracing::info!(partitions = tps.len(), "partitions assigned");
                // The client may keep a partition's old pause across a revoke and re-assign
                // (cooperative rebalancing); our record of pauses starts empty for it, so make the
                // client agree: resume it, and the poller re-pauses what should be paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "cannot resume assigned partitions");
                }
                {
                    let mut paused = self.shared.paused.lock();
                    for tp in &tps {
                        paused.remove(tp);
                    }
                }
                self.shared.partitions.assign(tps);
                self.shared.pauses_changed();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}
