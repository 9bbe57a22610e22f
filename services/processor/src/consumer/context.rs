//! Rebalance handling.
//!
//! On revoke (before the partitions go): drop held retry records, fire the partitions' revoke
//! tokens (lanes drop work that has not started), wait up to `consumer.rebalance_drain_ms` for
//! running records to persist, commit the watermarks synchronously and forget the trackers. Work
//! that outlives this is stale: its lease no longer matches and its effects are fenced by version.
//! On assign: raise the partitions' lease epochs in MySQL (`dispatch_store::epochs`; the clock if
//! MySQL cannot be reached), start fresh trackers; the poll thread re-applies pauses on its next
//! turn.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{Shared, Tp};
use crate::metrics;

/// Where lease epochs come from.
pub struct Fences {
    /// MySQL.
    pub pool: dispatch_store::MySqlPool,
    /// The consumer group.
    pub group: String,
    /// This instance, recorded with the epoch.
    pub owner: String,
    /// The runtime the pool lives on (callbacks run on the poll thread).
    pub runtime: tokio::runtime::Handle,
}

impl Fences {
    /// New lease epochs for `tps`: from MySQL, or the clock when it cannot be reached in time.
    fn next(&self, tps: &[Tp]) -> Vec<u64> {
        let parts: Vec<(String, i32)> = tps
            .iter()
            .map(|tp| (tp.topic.to_string(), tp.partition))
            .collect();
        let fut = dispatch_store::epochs::next(&self.pool, &self.group, &self.owner, &parts);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(EPOCH_TIMEOUT, fut).await })
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot raise lease epochs; using the clock");
                vec![dispatch_store::epochs::clock_epoch(); tps.len()]
            }
            Err(_) => {
                tracing::warn!("raising lease epochs timed out; using the clock");
                vec![dispatch_store::epochs::clock_epoch(); tps.len()]
            }
        }
    }
}

/// How long an assignment waits for MySQL to raise its lease epochs.
const EPOCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The consumer's context.
pub struct Ctx {
    shared: Arc<Shared>,
    fences: Option<Fences>,
}

impl Ctx {
    /// A context over `shared`, without lease epochs (tests).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            fences: None,
        }
    }

    /// A context over `shared` whose assignments take lease epochs from `fences`.
    pub fn fenced(shared: Arc<Shared>, fences: Fences) -> Self {
        Self {
            shared,
            fences: Some(fences),
        }
    }
}

impl ClientContext for Ctx {
    fn stats_raw(&self, statistics: &[u8]) {
        dispatch_runtime::kafka::record_statistics("processor", statistics);
    }

    /// Logs like rdkafka's default context, and counts TLS and SASL failures
    /// (`dispatch_tls_errors_total{service="processor", dependency="kafka"}`), which the app's
    /// `TlsFailures` hears and turns into readiness (`crate::readiness`).
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let tls = dispatch_runtime::tls_failures::kafka_error("processor", &error, reason);
        tracing::error!(error = %error, reason, tls, "librdkafka error");
    }
}

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
        metrics::partitions_revoked();
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
                metrics::partitions_assigned();
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
                let fences = match &self.fences {
                    Some(f) => f.next(&tps),
                    None => vec![0; tps.len()],
                };
                self.shared
                    .partitions
                    .assign_fenced(tps.into_iter().zip(fences));
                self.shared.pauses_changed();
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}
