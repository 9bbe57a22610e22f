//! The scheduler: publishes `scheduled` tasks once their `run_at` is due.
//!
//! Every `scheduler.interval_ms`, one short transaction claims due rows (`FOR UPDATE SKIP
//! LOCKED`, so several processor instances never claim the same row), flips them to `pending`,
//! reads them back and commits: no row lock is held while Kafka is waited on. Then, in this
//! order, each task's PENDING event is published and acknowledged, and the task is produced as a
//! first-attempt SUBMIT to its priority topic. The event is acknowledged before the consumer can
//! see the task, so it can never land after the task's later events (RUNNING, SUCCEEDED).
//! A row left `pending` because the claimer died (or Kafka failed) before the task was produced
//! is claimed again after `republish_after` (at-least-once; the consumer's gate and the fence
//! absorb a duplicate). A row that does not decode into a task is marked DEAD with the reason, so
//! it never spins the scheduler. The published envelope carries no `run_at`: the task is due by
//! the database's clock, and a processor whose clock lags must not schedule it again.
//! A task keeps its submit's trace context while it waits (`tasks.trace_context`, written with
//! the SCHEDULED state), so its run continues the submit's trace.

use std::time::Duration;

use chrono::Utc;
use dispatch_core::{BusinessKey, Envelope, EnvelopeKind, TaskId, TaskType, Tenant, Topics};
use dispatch_proto::v1 as pb;
use dispatch_runtime::telemetry;
use dispatch_store::MySqlPool;
use dispatch_store::scheduler::DueTask;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::produce::{Out, Producer, each_delivered};

/// The scheduler's wiring.
pub struct Scheduler {
    /// Pool.
    pub pool: MySqlPool,
    /// Producer.
    pub producer: Producer,
    /// Topic names.
    pub topics: Topics,
    /// Pause between claims.
    pub interval: Duration,
    /// Rows per claim.
    pub batch_size: u32,
    /// A row claimed this long ago and still `pending` (its task never reached a consumer) is
    /// published again.
    pub republish_after: Duration,
    /// Wakes the loop before its interval (the workflow advancer after a release).
    pub wake: crate::workflows::Waker,
    /// Stops the loop.
    pub stop: CancellationToken,
}

fn envelope(t: &DueTask) -> Result<Envelope, String> {
    first_attempt(t)
}

/// The next attempt of a RETRYING task waiting in MySQL.
fn retry_envelope(t: &DueTask) -> Result<Envelope, String> {
    let mut e = first_attempt(t)?;
    e.attempt = t.attempts + 1;
    e.last_error = t.last_error.clone();
    e.run_at = t.run_at;
    Ok(e)
}

fn first_attempt(t: &DueTask) -> Result<Envelope, String> {
    Ok(Envelope {
        kind: EnvelopeKind::Submit,
        task_id: t.task_id,
        tenant: Tenant::parse(&t.tenant)?,
        business_key: BusinessKey::parse(&t.business_key)?,
        task_type: TaskType::parse(&t.task_type)?,
        payload: t.payload.clone(),
        priority: t.priority,
        idempotency_key: t.idempotency_key.clone(),
        submitted_at: t.created_at,
        run_at: None,
        deadline: t.deadline_at,
        retry: t.retry,
        attempt: 1,
        generation: t.generation,
        last_error: String::new(),
        cancel_reason: String::new(),
        timeout_ms: t.timeout_ms,
        workflow_id: t.workflow_id,
    })
}

impl Scheduler {
    /// Runs until `stop`.
    pub async fn run(self) {
        loop {
            let claimed = match self.tick().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler tick failed");
                    0
                }
            };
            // A full batch means more may be due: go again at once.
            if claimed < self.batch_size as usize {
                tokio::select! {
                    () = tokio::time::sleep(self.interval) => {}
                    () = self.wake.woken() => {}
                    () = self.stop.cancelled() => break,
                }
            } else if self.stop.is_cancelled() {
                break;
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// Claims and publishes one batch; returns how many rows were claimed.
    ///
    /// # Errors
    /// Database errors.
    pub async fn tick(&self) -> anyhow::Result<usize> {
        let now = Utc::now();
        let mut tx = dispatch_store::scheduler::begin_claim(&self.pool).await?;
        let due = dispatch_store::scheduler::claim_due(&mut tx, self.batch_size).await?;
        let left = self.batch_size.saturating_sub(due.len() as u32);
        let stale =
            dispatch_store::scheduler::claim_stale_pending(&mut tx, left, self.republish_after)
                .await?;
        let left = left.saturating_sub(stale.len() as u32);
        let retries = dispatch_store::scheduler::claim_due_retries(&mut tx, left).await?;
        if due.is_empty() && stale.is_empty() && retries.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let claimed = due.len() + stale.len() + retries.len();
        let retry_ids: Vec<TaskId> = retries.iter().map(|t| t.task_id).collect();
        dispatch_store::scheduler::lease_retries(
            &mut tx,
            &retry_ids,
            now + chrono::Duration::from_std(self.republish_after).unwrap_or_default(),
        )
        .await?;
        let mut invalid = Vec::new();
        let mut invalid_later = Vec::new();
        let mut ready: Vec<(&DueTask, Envelope)> = Vec::new();
        for t in due.iter().chain(&stale) {
            match envelope(t) {
                Ok(e) => ready.push((t, e)),
                Err(e) => {
                    tracing::error!(task_id = %t.task_id, error = %e, "scheduled row is invalid; marked dead");
                    invalid.push((
                        t.task_id,
                        t.generation,
                        format!("invalid scheduled row: {e}"),
                    ));
                }
            }
        }
        dispatch_store::scheduler::mark_invalid(&mut tx, &invalid, now).await?;
        let fresh: Vec<(TaskId, u32)> = ready
            .iter()
            .filter(|(t, _)| due.iter().any(|d| d.task_id == t.task_id))
            .map(|(t, _)| (t.task_id, t.generation))
            .collect();
        dispatch_store::scheduler::mark_pending(&mut tx, &fresh, now).await?;
        let again: Vec<TaskId> = stale.iter().map(|t| t.task_id).collect();
        dispatch_store::scheduler::touch_pending(&mut tx, &again, now).await?;
        let ids: Vec<TaskId> = ready.iter().map(|(t, _)| t.task_id).collect();
        let rows = dispatch_store::tasks::snapshots(&mut *tx, &ids).await?;
        tx.commit().await?;
        let tick_trace = telemetry::current_trace_headers();
        let sends = ready.iter().map(|(t, env)| {
            let row = rows
                .iter()
                .find(|r| r.task.task_id == t.task_id.to_string());
            let tick_trace = &tick_trace;
            async move {
                // The submit's trace, kept with the SCHEDULED row; else the tick's own (if any).
                let trace = if t.trace.is_empty() { tick_trace } else { &t.trace };
                let pending = row.is_some_and(|r| r.task.state == pb::TaskState::Pending as i32);
                // Moved on meanwhile (cancelled, or already running): nothing to publish.
                let Some(row) = row.filter(|_| pending) else {
                    return (false, None);
                };
                let key = t.task_id.to_string();
                let value = crate::writer::snapshot_event(row.task.clone()).encode_to_vec();
                let headers = crate::writer::event_headers(trace, &key);
                let topic = self.topics.events();
                if let Err(e) = self
                    .producer
                    .send("events", Out::new(&topic, key.as_bytes(), &value, &headers))
                    .await
                {
                    tracing::warn!(task_id = %t.task_id, error = %e, "cannot publish the pending event; the task is published again later");
                    return (false, None);
                }
                metrics::event_published();
                let event = Some(crate::writer::Published {
                    key,
                    version: row.task.version,
                    headers,
                    direct: false,
                });
                let mut h = env.headers();
                for (k, v) in trace {
                    h.set(k, v.as_bytes());
                }
                let topic = self.topics.tasks(env.priority);
                match self.producer.send("tasks", Out::new(&topic, env.key(), &env.encode(), &h)).await {
                    Ok(_) => (true, event),
                    Err(e) => {
                        tracing::warn!(task_id = %t.task_id, error = %e, "cannot publish due task; published again later");
                        (false, event)
                    }
                }
            }
        });
        let (sent, events): (Vec<bool>, Vec<Option<crate::writer::Published>>) =
            futures::future::join_all(sends).await.into_iter().unzip();
        let published = sent.into_iter().filter(|ok| *ok).count();
        // A cancel's event (another producer) may have landed before this PENDING event.
        crate::writer::settle(
            &self.producer,
            &self.pool,
            &self.topics.events(),
            events.into_iter().flatten().collect(),
            crate::writer::Publisher::Other,
        )
        .await;
        let retried = self.publish_retries(&retries, &mut invalid_later).await;
        if let Err(e) = dispatch_store::scheduler::finish_retries(&self.pool, &retried).await {
            // Their leases run out and the next claim finds them run (or publishes again).
            tracing::warn!(error = %e, "cannot end the waits of published retries");
        }
        let retried = retried.len();
        if !invalid_later.is_empty() {
            let mut conn = self.pool.acquire().await?;
            dispatch_store::scheduler::mark_invalid(&mut conn, &invalid_later, Utc::now()).await?;
        }
        if retried > 0 {
            tracing::debug!(retried, "due retries published");
        }
        metrics::scheduled_tasks_published(published);
        if published > 0 {
            tracing::info!(published, "due scheduled tasks published");
        }
        Ok(claimed)
    }

    /// Publishes the next attempt of each due retry to its retry level's topic, due now; returns
    /// the (task, version) of each one published.
    async fn publish_retries(
        &self,
        retries: &[DueTask],
        invalid: &mut Vec<(TaskId, u32, String)>,
    ) -> Vec<(TaskId, dispatch_core::Version)> {
        let mut ready = Vec::new();
        for t in retries {
            match retry_envelope(t) {
                Ok(e) => ready.push((t, e)),
                Err(e) => {
                    invalid.push((t.task_id, t.generation, format!("invalid retry row: {e}")))
                }
            }
        }
        let now_ms = Utc::now().timestamp_millis().to_string();
        let sends = ready.iter().map(|(t, env)| {
            let now_ms = &now_ms;
            async move {
                let mut h = env.headers();
                for (k, v) in &t.trace {
                    h.set(k, v.as_bytes());
                }
                h.set(dispatch_core::envelope::header::NOT_BEFORE, now_ms.as_str());
                let level = t.attempts.clamp(1, dispatch_core::topics::RETRY_LEVELS);
                let topic = self.topics.retry(level);
                match self.producer.send("retry", Out::new(&topic, env.key(), &env.encode(), &h)).await {
                    Ok(_) => {
                        if t.backstop {
                            tracing::warn!(task_id = %t.task_id, attempt = env.attempt, "a retry record never reached a consumer; its next attempt is published again from MySQL");
                            metrics::retry_backstops(1);
                        }
                        Some((t.task_id, t.version))
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %t.task_id, error = %e, "cannot publish a due retry; published again later");
                        None
                    }
                }
            }
        });
        each_delivered(sends).await
    }
}
