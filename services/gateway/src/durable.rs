//! Making an accepted record durable: Kafka first, the MySQL outbox when a produce is at risk
//! or fails.
//!
//! **Sticky routing keeps per-key order across the fallback.** Once anything went to the outbox,
//! new records go to the outbox too, until the relay has published every pending row; then
//! routing switches back to direct Kafka. Otherwise a later submit of a key could reach Kafka
//! directly while an earlier one of the same key still waits in the outbox. The relay publishes
//! each key in id order and blocks a key behind its oldest unpublished row
//! (`dispatch_store::outbox_relay`). A key blocked behind a `dead` row keeps routing to the outbox
//! on its own (the rest goes back to Kafka once everything else drained), until an operator
//! requeues the row and it is published.
//!
//! Within one instance the switch is exact (a row committed here flips the flag before the
//! client sees OK). Across instances each one polls the outbox every `relay_interval_ms`, so a
//! client alternating instances within that window while another instance is falling back could
//! see two of its submits reordered; sequential submits through one instance never are.
//!
//! The per-key routing state lives in `sticky.rs`; this module consults and sets it.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use dispatch_core::TaskId;
use dispatch_runtime::breaker::{Breaker, BreakerSettings};
use dispatch_store::outbox::{self, Kind, OutboxRecord};
use dispatch_store::outbox_relay;
use futures::future::join_all;

use crate::metrics;
use crate::producer::{OutRecord, ProduceError, Produced, Producer};
use crate::sticky::{BLOCKED_KEYS_MAX, Sticky};

/// Where a record was made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// On Kafka, acknowledged by all in-sync replicas.
    Kafka(Produced),
    /// In the outbox (row id); the relay publishes it.
    Outbox(u64),
}

/// Why a record was not made durable (the caller must not answer OK).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refused {
    /// Neither Kafka nor the outbox took it.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The caller's deadline came before the record was durable; no outbox row was written
    /// (a record handed to Kafka may still be delivered: retry with an idempotency key).
    #[error("deadline exceeded before the record was durable: {0}")]
    DeadlineExceeded(String),
}

/// Why the outbox write did not happen.
enum Park {
    /// The deadline came first (rolled back).
    Deadline,
    /// The database failed.
    Failed(String),
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

/// Kafka-or-outbox. Cheap to clone.
#[derive(Clone)]
pub struct Durable {
    producer: Producer,
    pool: sqlx::MySqlPool,
    sticky: Arc<Sticky>,
    /// Opens after consecutive outbox writes that failed or did not fit in their deadline
    /// (MySQL down or stalled): while it is open, a submit Kafka did not take is refused
    /// UNAVAILABLE at once instead of waiting out its deadline on the database.
    outbox_breaker: Breaker,
}

/// Longest an outbox write may take before it counts as failed (the row is rolled back).
const OUTBOX_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2_500);

/// The outbox breaker: open after this many consecutive failed writes...
const OUTBOX_BREAKER_FAILURES: u32 = 3;
/// ...for 500 ms, doubling up to 5 s.
const OUTBOX_BREAKER_OPEN_MS: u64 = 500;
const OUTBOX_BREAKER_MAX_OPEN_MS: u64 = 5_000;

impl Durable {
    /// Over `producer` and the outbox in `pool`.
    pub fn new(producer: Producer, pool: sqlx::MySqlPool) -> Self {
        Self {
            producer,
            pool,
            sticky: Arc::default(),
            outbox_breaker: Breaker::new(
                metrics::SERVICE,
                "outbox",
                BreakerSettings::from_ms(
                    OUTBOX_BREAKER_FAILURES,
                    OUTBOX_BREAKER_OPEN_MS,
                    OUTBOX_BREAKER_MAX_OPEN_MS,
                ),
            ),
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

    /// Makes `rec` (a submit or a cancel of `task_id`) durable: on Kafka, or in the outbox when
    /// a produce is at risk (breaker open, all brokers down, Kafka stalled, sticky routing) or
    /// fails. Cancels take the same route as submits, so a cancel never overtakes its task's
    /// submit waiting in the outbox.
    ///
    /// `deadline` is the caller's (less a margin to answer in time): the produce waits at most
    /// until `deadline - outbox.write_reserve_ms`, so the outbox write still fits, and the outbox
    /// row is committed only before the deadline. So the answer is OK (durable), UNAVAILABLE or
    /// DEADLINE_EXCEEDED (nothing written), never OK after the caller gave up.
    ///
    /// # Errors
    /// [`Refused`]: the caller must not answer OK.
    pub async fn accept(
        &self,
        rec: OutRecord,
        task_id: TaskId,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<Accepted, Refused> {
        let mut out = self
            .accept_many(std::slice::from_ref(&(rec, task_id)), kind, deadline)
            .await;
        out.pop().unwrap_or_else(no_result)
    }

    /// [`Durable::accept`] for several records at once, one result per record, in order: the
    /// ones Kafka can take are produced together ([`Producer::send_many_guarded`]), and each one
    /// it did not take falls back to the outbox on its own, as a single record would.
    pub async fn accept_many(
        &self,
        recs: &[(OutRecord, TaskId)],
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Vec<Result<Accepted, Refused>> {
        let topic_kind = match kind {
            Kind::Submit => "tasks",
            Kind::Cancel => "cancel",
        };
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left().is_some_and(|l| l.is_zero()) {
            return recs
                .iter()
                .map(|_| Err(Refused::DeadlineExceeded("no time left".into())))
                .collect();
        }
        // Whether the caller left too little time for even one outbox write. Only then is a
        // write that runs out of time the caller's DEADLINE_EXCEEDED; otherwise it was this
        // gateway's wait on a failing Kafka (or a late timer on a busy host) that used the time,
        // and the answer is UNAVAILABLE, safe to retry (fault scenario mysql-and-kafka).
        let short = left().is_some_and(|l| l < self.producer.write_reserve());
        let mut out: Vec<Option<Result<Accepted, Refused>>> = vec![None; recs.len()];
        let mut direct = Vec::with_capacity(recs.len());
        let mut fallback: Vec<(usize, Option<String>)> = Vec::new();
        for (i, (rec, task_id)) in recs.iter().enumerate() {
            if cfg!(feature = "fault-ack-without-produce")
                && matches!(kind, Kind::Submit)
                && task_id.as_bytes()[15].is_multiple_of(50)
            {
                // The fault build: OK for a record that was never made durable.
                out[i] = Some(Ok(Accepted::Kafka(crate::producer::Produced {
                    topic: rec.topic.clone(),
                    partition: 0,
                    offset: -1,
                })));
            } else if self.sticky.routes_to_outbox(&rec.topic, &rec.key) {
                fallback.push((i, None));
            } else {
                direct.push(i);
            }
        }
        if !direct.is_empty() {
            let reserve = self.producer.write_reserve();
            // With less than the reserve left there is no time for a fallback anyway: Kafka gets
            // all of it (a healthy produce takes milliseconds).
            let budget = left().map(|l| if l > reserve { l - reserve } else { l });
            let batch: Vec<&OutRecord> = direct.iter().map(|&i| &recs[i].0).collect();
            let sent = self
                .producer
                .send_many_guarded(&batch, topic_kind, budget)
                .await;
            for (&i, r) in direct.iter().zip(sent) {
                match r {
                    Ok(p) => out[i] = Some(Ok(Accepted::Kafka(p))),
                    Err(e) => fallback.push((i, Some(e.to_string()))),
                }
            }
        }
        if !fallback.is_empty() {
            let parked = join_all(fallback.into_iter().map(|(i, kafka_err)| {
                let (rec, task_id) = &recs[i];
                async move {
                    let r = self
                        .fall_back(rec, *task_id, kind, topic_kind, kafka_err, deadline, short)
                        .await;
                    (i, r)
                }
            }))
            .await;
            for (i, r) in parked {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(no_result))
            .collect()
    }

    /// The outbox path of one record Kafka did not take (`kafka_err`; `None`: sticky routing
    /// sent it here without trying Kafka).
    #[allow(clippy::too_many_arguments)]
    async fn fall_back(
        &self,
        rec: &OutRecord,
        task_id: TaskId,
        kind: Kind,
        topic_kind: &'static str,
        kafka_err: Option<String>,
        deadline: Option<Instant>,
        short: bool,
    ) -> Result<Accepted, Refused> {
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let reason = kafka_err
            .as_deref()
            .unwrap_or("outbox backlog pending or key blocked (sticky routing)");
        match self.park(rec, task_id, kind, reason, deadline).await {
            Ok(id) => Ok(Accepted::Outbox(id)),
            Err(Park::Deadline) if short => Err(Refused::DeadlineExceeded(format!(
                "kafka: {reason}; the outbox write did not fit in the deadline"
            ))),
            Err(Park::Deadline) => Err(Refused::Unavailable(Unavailable {
                kafka: reason.to_owned(),
                outbox:
                    "the outbox write did not fit in what the kafka attempt left of the deadline"
                        .into(),
            })),
            Err(Park::Failed(outbox)) if kafka_err.is_none() => {
                // Sticky, but MySQL is failing: availability wins over ordering behind a backlog
                // that cannot drain anyway; Kafka is still durable.
                tracing::warn!(error = %outbox, "outbox write failed while sticky; trying kafka");
                self.producer
                    .send_guarded(rec, topic_kind, left())
                    .await
                    .map(Accepted::Kafka)
                    .map_err(|e| match e {
                        ProduceError::Timeout(_) if left().is_some_and(|l| l.is_zero()) => {
                            Refused::DeadlineExceeded(format!("outbox: {outbox}; kafka: {e}"))
                        }
                        e => Refused::Unavailable(Unavailable {
                            kafka: e.to_string(),
                            outbox,
                        }),
                    })
            }
            Err(Park::Failed(outbox)) => Err(Refused::Unavailable(Unavailable {
                kafka: reason.to_owned(),
                outbox,
            })),
        }
    }

    /// Writes the outbox row, committing only before `deadline`.
    async fn park(
        &self,
        rec: &OutRecord,
        task_id: TaskId,
        kind: Kind,
        reason: &str,
        deadline: Option<Instant>,
    ) -> Result<u64, Park> {
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
        if !self.outbox_breaker.permits() {
            return Err(Park::Failed(
                "outbox circuit breaker open (recent writes failed)".into(),
            ));
        }
        // A deadline too short for any write says nothing about the database.
        let fair_chance = deadline.is_none_or(|d| {
            d.saturating_duration_since(Instant::now()) >= self.producer.write_reserve()
        });
        // A database that does not answer within OUTBOX_WRITE_TIMEOUT (half a typical 5 s deadline) is failing: the caller
        // hears UNAVAILABLE while it still waits, rather than DEADLINE_EXCEEDED at its end.
        let cap = Instant::now() + OUTBOX_WRITE_TIMEOUT;
        let (until, capped) = match deadline {
            Some(d) if d <= cap => (d, false),
            _ => (cap, true),
        };
        let started = Instant::now();
        let r = match self.write_row(&row, kind, reason, Some(until)).await {
            // A write that had its fair chance (capped at OUTBOX_WRITE_TIMEOUT, or at least the
            // write reserve before the caller's deadline) and got no answer says the database
            // failed, not the caller: UNAVAILABLE (retry), answered before the caller's deadline.
            // Only a deadline too short for any write is the caller's DEADLINE_EXCEEDED.
            Err(Park::Deadline) if capped || fair_chance => Err(Park::Failed(format!(
                "the outbox write did not finish within {} ms",
                started.elapsed().as_millis()
            ))),
            r => r,
        };
        match &r {
            Ok(_) => self.outbox_breaker.success(),
            Err(Park::Failed(_)) => self.outbox_breaker.failure(),
            Err(Park::Deadline) => {}
        }
        r
    }

    async fn write_row(
        &self,
        row: &OutboxRecord,
        kind: Kind,
        reason: &str,
        deadline: Option<Instant>,
    ) -> Result<u64, Park> {
        let failed = |e: dispatch_store::StoreError| Park::Failed(e.to_string());
        let prepare = outbox::prepare(&self.pool, row, kind);
        let (tx, id) = match deadline {
            None => prepare.await.map_err(failed)?,
            // Dropped when the deadline passes: the open transaction rolls back.
            Some(d) => tokio::time::timeout_at(d.into(), prepare)
                .await
                .map_err(|_| Park::Deadline)?
                .map_err(failed)?,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            drop(tx); // rolled back: no row for a submit answered DEADLINE_EXCEEDED
            return Err(Park::Deadline);
        }
        tx.commit().await.map_err(|e| Park::Failed(e.to_string()))?;
        // After the commit and before the caller answers OK: the next record of the key sees it.
        self.sticky.mark(&row.topic, &row.key);
        metrics::outbox_written(reason);
        Ok(id)
    }

    /// Re-reads what the outbox holds (also rows written by other instances) and updates
    /// sticky routing.
    pub async fn refresh_sticky(&self) {
        let epoch = self.sticky.epoch();
        match outbox_relay::routing(&self.pool, BLOCKED_KEYS_MAX).await {
            Ok(r) => {
                let all = r.pending_overflow || r.dead_overflow;
                let mut keys = r.pending_keys;
                keys.extend(r.dead_keys);
                if self.sticky.update(epoch, all, keys) {
                    tracing::info!("outbox drained; submits go to kafka again");
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox routing check failed"),
        }
    }
}

/// The answer for a record the accept path left without one (none does; defensive).
fn no_result() -> Result<Accepted, Refused> {
    Err(Refused::Unavailable(Unavailable {
        kafka: "no result".into(),
        outbox: "not tried".into(),
    }))
}
