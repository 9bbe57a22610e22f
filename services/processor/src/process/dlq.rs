//! Retry records, dead letters (DLQ record + index row + DEAD) and poison records.
//!
//! Every produce is awaited (acks=all) before the state that depends on it is written: a RETRYING
//! or DEAD row always has its record on Kafka. A record whose partition is revoked while its
//! produce keeps failing is abandoned and re-read by the partition's next owner.

use chrono::{DateTime, Utc};
use dispatch_core::envelope::header;
use dispatch_core::topics::RETRY_LEVELS;
use dispatch_core::{Envelope, Headers, TaskId, TaskState};
use dispatch_runtime::telemetry;
use dispatch_store::attempts::AttemptRow;
use dispatch_store::dead_letters::DeadLetterRow;

use super::{Processor, write_of};
use crate::consumer::Delivery;
use crate::lanes::LaneTicket;
use crate::metrics::{self, ErrorClass};
use crate::produce::{Delivered, Out};
use crate::writer::Committed;
use crate::writer::RetryDue;

/// Largest error text in a DLQ header.
const MAX_ERROR_BYTES: usize = 1024;

/// Why a task dies.
pub struct DeadCause {
    /// `Permanent`, `Exhausted`, `Deadline`, `UnknownType` (`Poison` is for records).
    pub class: ErrorClass,
    /// The error.
    pub error: String,
}

impl DeadCause {
    /// A cause.
    pub fn new(class: ErrorClass, error: impl Into<String>) -> Self {
        Self {
            class,
            error: error.into(),
        }
    }
}

/// `exhausted` or `deadline` for a retryable failure that gets no further attempt.
pub fn error_class(env: &Envelope, attempt: u32, next_at: DateTime<Utc>) -> ErrorClass {
    if env.retry.has_attempts_left(attempt) && env.deadline.is_some_and(|dl| next_at > dl) {
        ErrorClass::Deadline
    } else {
        ErrorClass::Exhausted
    }
}

/// Truncates to at most `max` bytes on a character boundary.
pub fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn with_trace(mut h: Headers) -> Headers {
    for (k, v) in telemetry::current_trace_headers() {
        h.set(&k, v.into_bytes());
    }
    h
}

fn provenance(h: &mut Headers, d: &Delivery, class: &str, error: &str) {
    h.set(header::ORIGINAL_TOPIC, d.lease.tp.topic.as_bytes());
    h.set(header::ORIGINAL_PARTITION, d.lease.tp.partition.to_string());
    h.set(header::ORIGINAL_OFFSET, d.lease.offset.to_string());
    h.set(header::ERROR_CLASS, class);
    h.set(header::ERROR, truncate_bytes(error, MAX_ERROR_BYTES));
    h.set(header::DEAD_AT, Utc::now().timestamp_millis().to_string());
}

impl Processor {
    /// Schedules the next attempt, then writes RETRYING. A delay the retry topics take (up to
    /// `consumer.retry_topic_max_delay_ms`) goes to the retry topic of its level; a longer one
    /// waits in MySQL (a row in `retry_waits`) and the scheduler publishes it when
    /// due, so a long backoff never holds up the short ones queued behind it on a retry topic.
    pub(super) async fn retry(
        &self,
        d: &Delivery,
        env: &Envelope,
        error: &str,
        not_before: DateTime<Utc>,
        row: AttemptRow,
        ticket: &mut LaneTicket,
    ) -> Option<Committed> {
        let a = env.attempt;
        let level = a.min(RETRY_LEVELS);
        let delay = (not_before - Utc::now()).to_std().unwrap_or_default();
        let in_mysql = delay > self.retry_topic_max_delay;
        // Where the retry record landed, as its delivery report says (logged below: a task left
        // RETRYING after a producer rebuild had no record on its retry topic; docs/reliability.md).
        let mut landed = None;
        if !in_mysql {
            let mut next = env.clone();
            next.attempt = a + 1;
            next.last_error = truncate_bytes(error, MAX_ERROR_BYTES).to_string();
            let mut h = with_trace(next.headers());
            h.set(
                header::NOT_BEFORE,
                not_before.timestamp_millis().to_string(),
            );
            let topic = self.topics.retry(level);
            let at = self
                .producer
                .send_until(
                    "retry",
                    Out::new(&topic, env.key(), &next.encode(), &h),
                    &d.lease.revoked,
                )
                .await?;
            landed = Some(at);
        }
        metrics::retry_scheduled(level);
        tracing::info!(error = %error, next_attempt = a + 1, level, delay_ms = delay.as_millis() as u64, in_mysql, partition = landed.map(|d| d.partition), offset = landed.map(|d| d.offset), "attempt failed; retry scheduled");
        let mut w = write_of(
            env,
            TaskState::Retrying,
            a,
            TaskState::Retrying.version(env.generation, a),
        );
        w.lease_epoch = d.lease.fence;
        w.last_error = error.to_string();
        let trace = telemetry::current_trace_headers();
        // A retry on a topic also leaves a backstop wait in MySQL: should its record not reach a
        // consumer (its partition unfetched while the group cannot settle, as in
        // kafka-restart-x5, or the record lost by a broker; docs/reliability.md), the scheduler
        // publishes the next attempt again once the wait is due and the task is still RETRYING
        // at this version. When the attempt runs, the task moves on and the wait is dropped at
        // its next claim; a second record of one attempt is skipped by the gate or the in-flight
        // check.
        let due = if in_mysql {
            Some(RetryDue {
                at: not_before,
                backstop: false,
            })
        } else {
            chrono::Duration::from_std(self.retry_backstop)
                .ok()
                .filter(|_| !cfg!(feature = "fault-no-retry-backstop"))
                .map(|b| RetryDue {
                    at: not_before + b,
                    backstop: true,
                })
        };
        let c = match due {
            Some(due) => self.writer.write_retry(w, row, trace, due).await,
            None => self.writer.write(w, Some(row), trace).await,
        };
        ticket.release();
        Some(c)
    }

    /// Dead-letters a task: DLQ record, index row, then DEAD.
    pub(super) async fn dead(
        &self,
        d: &Delivery,
        env: &Envelope,
        cause: DeadCause,
        row: Option<AttemptRow>,
        ticket: &mut LaneTicket,
    ) -> Option<Committed> {
        let mut dead = env.clone();
        dead.last_error = truncate_bytes(&cause.error, MAX_ERROR_BYTES).to_string();
        let mut h = with_trace(dead.headers());
        provenance(&mut h, d, cause.class.as_str(), &cause.error);
        let delivered = self
            .producer
            .send_until(
                "dlq",
                Out::new(&self.topics.dlq(), env.key(), &dead.encode(), &h),
                &d.lease.revoked,
            )
            .await?;
        metrics::dead_lettered(cause.class);
        tracing::warn!(error_class = cause.class.as_str(), error = %cause.error, "task dead-lettered");
        let ran = row.is_some();
        let index = DeadLetterRow {
            task_id: env.task_id,
            tenant: env.tenant.to_string(),
            task_type: env.task_type.to_string(),
            business_key: env.business_key.to_string(),
            generation: env.generation,
            error_class: cause.class.as_str().to_string(),
            error: cause.error.clone(),
            attempts: if ran {
                env.attempt
            } else {
                env.attempt.saturating_sub(1)
            },
            original_topic: d.lease.tp.topic.to_string(),
            original_partition: d.lease.tp.partition,
            original_offset: d.lease.offset,
            dlq_partition: delivered.partition,
            dlq_offset: delivered.offset,
            dead_at: Utc::now(),
        };
        self.index_dead_letter(&index, d).await?;
        let mut w = write_of(
            env,
            TaskState::Dead,
            index.attempts,
            TaskState::Dead.version(env.generation, env.attempt),
        );
        w.lease_epoch = d.lease.fence;
        w.last_error = cause.error;
        let c = self
            .writer
            .write(w, row, telemetry::current_trace_headers())
            .await;
        ticket.release();
        Some(c)
    }

    async fn index_dead_letter(&self, row: &DeadLetterRow, d: &Delivery) -> Option<()> {
        dispatch_runtime::retry::until_ok("indexing a dead letter", &d.lease.revoked, || {
            dispatch_store::dead_letters::insert(&self.pool, row)
        })
        .await
    }

    /// A record that is not a valid envelope: its raw bytes go to the DLQ (class `poison`) with
    /// the decode error, it is indexed, and the partition moves on.
    pub async fn poison(&self, d: Delivery) {
        let Err(err) = &d.envelope else {
            return;
        };
        if !self.shared.partitions.start(&d.lease) {
            return self.abandon(&d.lease);
        }
        let error = err.to_string();
        tracing::warn!(error = %error, topic = %d.lease.tp.topic, partition = d.lease.tp.partition, offset = d.lease.offset, "poison record");
        let mut h = d.headers.clone();
        provenance(&mut h, &d, ErrorClass::Poison.as_str(), &error);
        let Some(Delivered { partition, offset }) = self
            .producer
            .send_until(
                "dlq",
                Out::new(&self.topics.dlq(), &d.key, &d.raw, &h),
                &d.lease.revoked,
            )
            .await
        else {
            return self.abandon(&d.lease);
        };
        metrics::dead_lettered(ErrorClass::Poison);
        let hs = &d.headers;
        let index = DeadLetterRow {
            task_id: hs
                .get_str(header::TASK_ID)
                .and_then(|s| TaskId::parse(s).ok())
                .unwrap_or_else(|| TaskId::from_slice(&[0u8; 16]).unwrap_or_default()),
            tenant: hs
                .get_str(header::TENANT)
                .unwrap_or("unknown")
                .chars()
                .take(64)
                .collect(),
            task_type: hs
                .get_str(header::TASK_TYPE)
                .unwrap_or("unknown")
                .chars()
                .take(128)
                .collect(),
            business_key: String::from_utf8_lossy(&d.key).chars().take(256).collect(),
            generation: 0,
            error_class: ErrorClass::Poison.as_str().into(),
            error,
            attempts: hs
                .get_i64(header::ATTEMPT)
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            original_topic: d.lease.tp.topic.to_string(),
            original_partition: d.lease.tp.partition,
            original_offset: d.lease.offset,
            dlq_partition: partition,
            dlq_offset: offset,
            dead_at: Utc::now(),
        };
        match self.index_dead_letter(&index, &d).await {
            Some(()) => self.finish(&d.lease),
            None => self.abandon(&d.lease),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_char_boundaries() {
        assert_eq!(truncate_bytes("abc", 10), "abc");
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes(&"x".repeat(2000), 1024).len(), 1024);
    }
}
