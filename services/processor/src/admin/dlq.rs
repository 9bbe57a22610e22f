//! The DLQ operations: list, inspect, purge and redrive.
//!
//! A redrive moves each dead letter back as its original envelope in the next generation
//! (`generation + 1`, attempt 1) to the first retry level with `dispatch-not-before` = now, so
//! redriven work queues behind live retries instead of the priority topics, and the store fence
//! (`TaskState::may_overwrite`) lets exactly that generation revive the DEAD task. Lineage headers
//! name the redrive and the dead letter's DLQ coordinates. Rows are claimed per batch with
//! `FOR UPDATE SKIP LOCKED` and marked in the same transaction after their records are produced
//! (see `dispatch_store::dead_letters_admin`): concurrent redrives never move one dead letter
//! twice, and a redrive that dies half-way leaves the unmarked rows open (records it produced are
//! at-least-once and fenced by version).

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::Utc;
use dispatch_core::envelope::header;
use dispatch_core::{Envelope, EnvelopeKind, TaskId};
use dispatch_store::dead_letters_admin::{self as store, DeadLetterFilter, StoredDeadLetter};
use governor::{Quota, RateLimiter};

use super::reader::{DlqReader, DlqRecord, ReadError};
use super::{Admin, AdminError};
use crate::produce::Out;

/// Rows claimed per transaction (bounded further by the rate, so a claim is held about a second).
const MAX_BATCH: u32 = 200;
/// How long one DLQ record may take to read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a redrive asks for.
#[derive(Debug, Clone)]
pub struct RedriveRequest {
    /// Which dead letters.
    pub filter: DeadLetterFilter,
    /// Count only.
    pub dry_run: bool,
    /// At most this many.
    pub max_count: u32,
    /// Records per second.
    pub rate_per_second: u32,
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveOutcome {
    /// Stamped on every moved record.
    pub redrive_id: String,
    /// Open, non-poison dead letters selected (up to `max_count`).
    pub matched: u64,
    /// Records moved (matched minus those whose DLQ record could not be read back).
    pub redriven: u64,
}

impl Admin {
    /// A dead letter and its payload (read back from the DLQ topic).
    ///
    /// # Errors
    /// Not found, database errors.
    pub async fn dead_letter(
        &self,
        task_id: TaskId,
    ) -> Result<(StoredDeadLetter, Option<Vec<u8>>), AdminError> {
        let d = store::latest_for_task(&self.pool, task_id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no dead letter for task {task_id}")))?;
        let (kafka, topic) = (self.kafka.clone(), self.topics.dlq());
        let (p, o) = (d.row.dlq_partition, d.row.dlq_offset);
        let read = tokio::task::spawn_blocking(move || {
            DlqReader::new(&kafka, topic, READ_TIMEOUT)?.read(p, o)
        })
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
        let payload = match read {
            Ok(rec) => Some(match Envelope::decode(&rec.value) {
                Ok(env) => env.payload,
                // A poison record: its raw bytes are what there is.
                Err(_) => rec.value,
            }),
            Err(e) => {
                tracing::warn!(error = %e, task_id = %task_id, "dead letter record unreadable; answering without payload");
                None
            }
        };
        Ok((d, payload))
    }

    /// Moves open, non-poison dead letters matching the filter back to the first retry level.
    ///
    /// # Errors
    /// Database or Kafka client errors; what was moved before the error stays moved and marked.
    pub async fn redrive(&self, r: RedriveRequest) -> Result<RedriveOutcome, AdminError> {
        let redrive_id = uuid::Uuid::now_v7().to_string();
        if r.dry_run {
            let n = store::count_redrivable(&self.pool, &r.filter).await?;
            return Ok(RedriveOutcome {
                redrive_id,
                matched: n.min(u64::from(r.max_count)),
                redriven: 0,
            });
        }
        let rate = NonZeroU32::new(r.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate));
        let (kafka, topic) = (self.kafka.clone(), self.topics.dlq());
        let mut reader = Some(
            tokio::task::spawn_blocking(move || DlqReader::new(&kafka, topic, READ_TIMEOUT))
                .await
                .map_err(|e| AdminError::Internal(e.to_string()))?
                .map_err(|e| AdminError::Kafka(e.to_string()))?,
        );
        let batch = rate.get().clamp(1, MAX_BATCH);
        // Dead letters indexed from now on (including this redrive's records dying again) are
        // not this redrive's business.
        let up_to = store::last_id(&self.pool).await?;
        let (mut cursor, mut matched, mut redriven) = (0u64, 0u64, 0u64);
        tracing::info!(redrive_id = %redrive_id, max_count = r.max_count, rate = rate.get(), "redrive started");
        while matched < u64::from(r.max_count) {
            let left = u64::from(r.max_count) - matched;
            let claim = store::claim(
                &self.pool,
                &r.filter,
                (cursor, up_to),
                batch.min(left as u32),
            )
            .await?;
            let Some(last) = claim.rows.last() else {
                break;
            };
            cursor = last.id;
            matched += claim.rows.len() as u64;
            let coords: Vec<(i32, i64)> = claim
                .rows
                .iter()
                .map(|d| (d.row.dlq_partition, d.row.dlq_offset))
                .collect();
            let mut rd = reader
                .take()
                .ok_or_else(|| AdminError::Internal("dlq reader lost".into()))?;
            let (rd, records) = tokio::task::spawn_blocking(move || {
                // Read in (partition, offset) order, so the reader streams runs of one partition
                // instead of seeking for nearly every letter (claims come in id order, which
                // interleaves partitions: ~0.4 s a seek); the results keep the claim's order.
                let mut order: Vec<usize> = (0..coords.len()).collect();
                order.sort_by_key(|&i| coords[i]);
                let mut records: Vec<Option<Result<_, _>>> =
                    std::iter::repeat_with(|| None).take(coords.len()).collect();
                for i in order {
                    let (p, o) = coords[i];
                    records[i] = Some(rd.read(p, o));
                }
                let records: Vec<_> = records.into_iter().flatten().collect();
                (rd, records)
            })
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
            reader = Some(rd);
            let mut sends = Vec::with_capacity(records.len());
            for (d, rec) in claim.rows.iter().zip(records) {
                let Some((env, h)) = redriven_record(d, rec, &redrive_id) else {
                    continue;
                };
                limiter.until_ready().await;
                let (producer, topic) = (self.producer.clone(), self.topics.retry(1));
                let id = d.id;
                sends.push(tokio::spawn(async move {
                    producer
                        .send("retry", Out::new(&topic, env.key(), &env.encode(), &h))
                        .await
                        .map(|_| id)
                }));
            }
            let mut moved = Vec::with_capacity(sends.len());
            let mut failure = None;
            for s in sends {
                match s.await {
                    Ok(Ok(id)) => moved.push(id),
                    Ok(Err(e)) => failure = Some(e.to_string()),
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            claim.mark(&moved, &redrive_id).await?;
            redriven += moved.len() as u64;
            crate::metrics::dead_letters_redriven(moved.len());
            if let Some(e) = failure {
                tracing::warn!(redrive_id = %redrive_id, error = %e, redriven, "redrive stopped: produce failed");
                return Err(AdminError::Kafka(format!(
                    "producing to {} failed after {redriven} records were redriven: {e}",
                    self.topics.retry(1)
                )));
            }
        }
        tracing::info!(redrive_id = %redrive_id, matched, redriven, "redrive finished");
        Ok(RedriveOutcome {
            redrive_id,
            matched,
            redriven,
        })
    }
}

/// The record that redrives `d`, or `None` (logged) when its DLQ record cannot be used.
fn redriven_record(
    d: &StoredDeadLetter,
    rec: Result<DlqRecord, ReadError>,
    redrive_id: &str,
) -> Option<(Envelope, dispatch_core::Headers)> {
    let task_id = d.row.task_id;
    let rec = match rec {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(task_id = %task_id, error = %e, "dead letter not redriven: record unreadable");
            return None;
        }
    };
    let mut env = match Envelope::decode(&rec.value) {
        Ok(env) if env.kind == EnvelopeKind::Submit && env.task_id == task_id => env,
        Ok(_) => {
            tracing::warn!(task_id = %task_id, "dead letter not redriven: record does not match its index row");
            return None;
        }
        Err(e) => {
            tracing::warn!(task_id = %task_id, error = %e, "dead letter not redriven: record is not an envelope");
            return None;
        }
    };
    env.generation += 1;
    env.attempt = 1;
    let mut h = env.headers();
    for (k, v) in dispatch_runtime::telemetry::current_trace_headers() {
        h.set(&k, v.into_bytes());
    }
    h.set(
        header::NOT_BEFORE,
        Utc::now().timestamp_millis().to_string(),
    );
    h.set(header::REDRIVE_ID, redrive_id);
    h.set(header::DLQ_PARTITION, d.row.dlq_partition.to_string());
    h.set(header::DLQ_OFFSET, d.row.dlq_offset.to_string());
    Some((env, h))
}
