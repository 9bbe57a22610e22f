//! Making an accepted record durable: Kafka first, the MySQL outbox when Kafka is unavailable.
//!
//! **Sticky routing keeps per-key order across the fallback.** Once anything went to the outbox,
//! new submits go to the outbox too, until the relay has published every pending row; then
//! routing switches back to direct Kafka. Otherwise a later submit of a key could reach Kafka
//! directly while an earlier one of the same key still waits in the outbox. The relay publishes
//! in id order and blocks a key behind its oldest pending row (`outbox_relay::relay_ordered`).
//!
//! Within one instance the switch is exact (a row committed here flips the flag before the
//! client sees OK). Across instances each one polls `has_pending` every `relay_interval_ms`, so a
//! client alternating instances within that window while another instance is falling back could
//! see two of its submits reordered; sequential submits through one instance never are.

use std::sync::Arc;

use chrono::Utc;
use dispatch_core::TaskId;
use dispatch_store::outbox::{self, Kind, OutboxRecord};
use dispatch_store::outbox_relay;
use parking_lot::Mutex;

use crate::metrics;
use crate::producer::{OutRecord, Produced, Producer};

/// Where a record was made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// On Kafka, acknowledged by all in-sync replicas.
    Kafka(Produced),
    /// In the outbox (row id); the relay publishes it.
    Outbox(u64),
}

/// Neither Kafka nor the outbox took the record.
#[derive(Debug, Clone, thiserror::Error)]
#[error("kafka unavailable ({kafka}) and outbox write failed ({outbox})")]
pub struct Unavailable {
    /// Why Kafka did not take it.
    pub kafka: String,
    /// Why the outbox did not take it.
    pub outbox: String,
}

/// Sticky-routing state: `active` while the outbox may hold pending rows. `epoch` counts outbox
/// writes, so a "no pending rows" answer that raced with a new write cannot clear the flag.
#[derive(Debug, Default)]
struct Sticky {
    state: Mutex<(bool, u64)>,
}

impl Sticky {
    fn active(&self) -> bool {
        self.state.lock().0
    }
    fn mark(&self) {
        let mut s = self.state.lock();
        s.0 = true;
        s.1 += 1;
    }
    fn epoch(&self) -> u64 {
        self.state.lock().1
    }
    fn clear_if_unchanged(&self, epoch: u64) -> bool {
        let mut s = self.state.lock();
        let was = s.0;
        if s.1 == epoch {
            s.0 = false;
        }
        was && !s.0
    }
    fn set_active(&self) {
        self.state.lock().0 = true;
    }
}

/// Kafka-or-outbox. Cheap to clone.
#[derive(Clone)]
pub struct Durable {
    producer: Producer,
    pool: sqlx::MySqlPool,
    sticky: Arc<Sticky>,
}

impl Durable {
    /// Over `producer` and the outbox in `pool`.
    pub fn new(producer: Producer, pool: sqlx::MySqlPool) -> Self {
        Self {
            producer,
            pool,
            sticky: Arc::default(),
        }
    }

    /// The producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Whether submits are currently routed to the outbox.
    pub fn sticky(&self) -> bool {
        self.sticky.active()
    }

    /// Makes `rec` (a submit or a cancel of `task_id`) durable: on Kafka, or (breaker open,
    /// produce error or timeout, or sticky routing) in the outbox. Cancels take the same route as
    /// submits, so a cancel never overtakes its task's submit waiting in the outbox.
    ///
    /// # Errors
    /// [`Unavailable`] when both failed: the caller must not answer OK.
    pub async fn accept(
        &self,
        rec: OutRecord,
        task_id: TaskId,
        kind: Kind,
    ) -> Result<Accepted, Unavailable> {
        let topic_kind = match kind {
            Kind::Submit => "tasks",
            Kind::Cancel => "cancel",
        };
        let kafka_err = if self.sticky.active() {
            None
        } else {
            match self.producer.send_guarded(&rec, topic_kind).await {
                Ok(p) => return Ok(Accepted::Kafka(p)),
                Err(e) => Some(e.to_string()),
            }
        };
        let reason = kafka_err
            .as_deref()
            .unwrap_or("outbox backlog pending (sticky routing)");
        match self.park(&rec, task_id, kind, reason).await {
            Ok(id) => Ok(Accepted::Outbox(id)),
            Err(outbox) if kafka_err.is_none() => {
                // Sticky, but MySQL is failing: availability wins over ordering behind a backlog
                // that cannot drain anyway; Kafka is still durable.
                tracing::warn!(error = %outbox, "outbox write failed while sticky; trying kafka");
                self.producer
                    .send_guarded(&rec, topic_kind)
                    .await
                    .map(Accepted::Kafka)
                    .map_err(|e| Unavailable {
                        kafka: e.to_string(),
                        outbox,
                    })
            }
            Err(outbox) => Err(Unavailable {
                kafka: reason.to_owned(),
                outbox,
            }),
        }
    }

    async fn park(
        &self,
        rec: &OutRecord,
        task_id: TaskId,
        kind: Kind,
        reason: &str,
    ) -> Result<u64, String> {
        let row = OutboxRecord {
            id: 0,
            task_id,
            topic: rec.topic.clone(),
            key: rec.key.clone(),
            value: rec.value.clone(),
            headers: rec.headers.clone(),
            attempts: 0,
            created_at: Utc::now(),
        };
        let id = match kind {
            Kind::Submit => outbox::insert(&self.pool, &row).await,
            Kind::Cancel => outbox::insert_cancel(&self.pool, &row).await,
        }
        .map_err(|e| e.to_string())?;
        // After the commit and before the caller answers OK: the next submit sees the flag.
        self.sticky.mark();
        metrics::outbox_written(reason);
        Ok(id)
    }

    /// Re-reads whether the outbox has pending rows (also those written by other instances) and
    /// updates sticky routing.
    pub async fn refresh_sticky(&self) {
        let epoch = self.sticky.epoch();
        match outbox_relay::has_pending(&self.pool).await {
            Ok(true) => self.sticky.set_active(),
            Ok(false) => {
                if self.sticky.clear_if_unchanged(epoch) {
                    tracing::info!("outbox drained; submits go to kafka again");
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox pending check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_racing_with_a_drain_check_keeps_the_flag() {
        let s = Sticky::default();
        s.mark();
        let e = s.epoch();
        s.mark(); // a write lands while the check runs
        assert!(!s.clear_if_unchanged(e));
        assert!(s.active());
        assert!(s.clear_if_unchanged(s.epoch()));
        assert!(!s.active());
    }
}
