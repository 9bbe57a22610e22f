//! The scheduler: publishes `scheduled` tasks once their `run_at` is due.
//!
//! Every `scheduler.interval_ms`, one transaction claims due rows (`FOR UPDATE SKIP LOCKED`, so
//! several processor instances never claim the same row), produces each as a first-attempt
//! SUBMIT to its priority topic, waits for the acks, flips the produced rows to `pending` and
//! commits. The consumer then runs them like any other task. The published envelope carries no
//! `run_at`: the task is due by the database's clock, and a processor whose clock lags must not
//! schedule it again. A crash between produce and commit leaves the row `scheduled`, so it is
//! published again (at-least-once; the consumer's gate and the version fence absorb duplicates).
//! A task keeps its submit's trace context while it waits (`tasks.trace_context`, written with
//! the SCHEDULED state), so its run continues the submit's trace.

use std::time::Duration;

use chrono::Utc;
use dispatch_core::{
    BusinessKey, Envelope, EnvelopeKind, RetryPolicy, TaskId, TaskState, TaskType, Tenant, Topics,
};
use dispatch_runtime::telemetry;
use dispatch_store::MySqlPool;
use dispatch_store::scheduler::DueTask;
use dispatch_store::tasks::TaskWrite;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::metrics::SCHEDULER_CLAIMED;
use crate::produce::Producer;

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
    /// Stops the loop.
    pub stop: CancellationToken,
}

fn envelope(t: &DueTask) -> Result<Envelope, String> {
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
        retry: RetryPolicy {
            max_attempts: t.max_attempts,
            initial_backoff_ms: t.initial_backoff_ms,
            max_backoff_ms: t.max_backoff_ms,
        },
        attempt: 1,
        generation: t.generation,
        last_error: String::new(),
        cancel_reason: String::new(),
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
        let mut tx = self.pool.begin().await?;
        let due = dispatch_store::scheduler::claim_due(&mut tx, self.batch_size).await?;
        if due.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let tick_trace = telemetry::current_trace_headers();
        let sends = due.iter().map(|t| async {
            let env = match envelope(t) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(task_id = %t.task_id, error = %e, "scheduled row is invalid; left scheduled");
                    return None;
                }
            };
            // The submit's trace, kept with the SCHEDULED row; else the tick's own (if any).
            let trace = if t.trace.is_empty() { &tick_trace } else { &t.trace };
            let mut h = env.headers();
            for (k, v) in trace {
                h.set(k, v.as_bytes());
            }
            let topic = self.topics.tasks(env.priority);
            match self.producer.send("tasks", &topic, env.key(), &env.encode(), &h).await {
                Ok(_) => Some((t.task_id, t.generation)),
                Err(e) => {
                    tracing::warn!(task_id = %t.task_id, error = %e, "cannot publish due task; retried next tick");
                    None
                }
            }
        });
        let published: Vec<(TaskId, u32)> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        let now = Utc::now();
        dispatch_store::scheduler::mark_pending(&mut tx, &published, now).await?;
        tx.commit().await?;
        SCHEDULER_CLAIMED.inc_by(published.len() as u64);
        if !published.is_empty() {
            tracing::info!(published = published.len(), "due scheduled tasks published");
        }
        self.publish_events(&due, &published, now).await;
        Ok(due.len())
    }

    /// PENDING events for the released tasks (best effort: the consumer's RUNNING follows soon).
    async fn publish_events(
        &self,
        due: &[DueTask],
        published: &[(TaskId, u32)],
        now: chrono::DateTime<Utc>,
    ) {
        let topic = self.topics.events();
        let sends = due
            .iter()
            .filter(|t| published.iter().any(|(id, _)| *id == t.task_id))
            .map(|t| {
                let w = TaskWrite {
                    task_id: t.task_id,
                    tenant: t.tenant.clone(),
                    business_key: t.business_key.clone(),
                    task_type: t.task_type.clone(),
                    priority: t.priority,
                    payload: t.payload.clone(),
                    state: TaskState::Pending,
                    attempts: 0,
                    max_attempts: t.max_attempts,
                    initial_backoff_ms: t.initial_backoff_ms,
                    max_backoff_ms: t.max_backoff_ms,
                    generation: t.generation,
                    idempotency_key: t.idempotency_key.clone(),
                    run_at: t.run_at,
                    deadline_at: t.deadline_at,
                    last_error: String::new(),
                    result: None,
                    version: TaskState::Pending.version(t.generation, 0),
                    created_at: t.created_at,
                    updated_at: now,
                };
                let value = crate::writer::event(&w).encode_to_vec();
                let key = t.task_id.to_string();
                let headers = crate::writer::event_headers(&t.trace, &key);
                let topic = topic.clone();
                async move {
                    if let Err(e) = self
                        .producer
                        .send("events", &topic, key.as_bytes(), &value, &headers)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot publish pending event");
                    } else {
                        crate::metrics::EVENTS.inc();
                    }
                }
            });
        futures::future::join_all(sends).await;
    }
}
