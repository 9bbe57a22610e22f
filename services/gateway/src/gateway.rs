//! The gateway's domain: submit, submit many, cancel. Takes validated input and the caller's
//! tenant; knows nothing of gRPC transport (service.rs adapts).

use std::time::Duration;

use chrono::Utc;
use dispatch_core::state::ACCEPTED_VERSION;
use dispatch_core::validate::parse_task_spec;
use dispatch_core::{
    BusinessKey, Envelope, Headers, NewTask, Priority, TaskId, TaskState, Tenant, Topics,
    Violations,
};
use dispatch_proto::v1 as pb;
use dispatch_store::outbox_relay::{self, KnownTask};
use futures::future::join_all;

use crate::durable::{Accepted, Durable};
use crate::error::GatewayError;
use crate::idempotency::{Claim, Idempotency};
use crate::metrics;
use crate::producer::OutRecord;
use crate::recent::{RecentSubmit, RecentSubmits};
use crate::settings::CancelSettings;

/// Maximum length of a cancel reason, in bytes.
pub const CANCEL_REASON_MAX_BYTES: usize = 512;

/// The gateway's state, shared by every request.
pub struct Gateway {
    topics: Topics,
    durable: Durable,
    idempotency: Idempotency,
    pool: sqlx::MySqlPool,
    recent: RecentSubmits,
}

/// W3C trace context to put on produced records.
pub type TraceHeaders = Vec<(String, String)>;

impl Gateway {
    /// Assembles the domain.
    pub fn new(
        topics: Topics,
        durable: Durable,
        idempotency: Idempotency,
        pool: sqlx::MySqlPool,
        cancel: &CancelSettings,
    ) -> Self {
        Self {
            topics,
            durable,
            idempotency,
            pool,
            recent: RecentSubmits::new(
                cancel.recent_capacity,
                Duration::from_millis(cancel.recent_ttl_ms),
            ),
        }
    }

    /// Kafka-or-outbox.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    fn record(&self, env: &Envelope, trace: &TraceHeaders) -> OutRecord {
        let mut headers: Headers = env.headers();
        for (k, v) in trace {
            headers.set(k, v.as_bytes());
        }
        OutRecord {
            topic: self.topics.tasks(env.priority),
            key: env.key().to_vec(),
            value: env.encode(),
            headers,
        }
    }

    /// Accepts one validated task: dedupes by idempotency key, then makes it durable.
    ///
    /// # Errors
    /// [`GatewayError::Unavailable`] when neither Kafka nor the outbox took it.
    pub async fn submit(
        &self,
        task: NewTask,
        trace: &TraceHeaders,
    ) -> Result<pb::SubmitTaskResponse, GatewayError> {
        let redis_key = match &task.idempotency_key {
            None => None,
            Some(key) => match self
                .idempotency
                .claim(&task.tenant, key, task.task_id)
                .await
            {
                Claim::Duplicate(resp) => {
                    metrics::submit("duplicate");
                    return Ok(resp);
                }
                Claim::Fresh { redis_key } => redis_key,
            },
        };
        let task_id = task.task_id;
        let recent = RecentSubmit {
            tenant: task.tenant.clone(),
            business_key: task.business_key.clone(),
            priority: task.priority,
        };
        let env = Envelope::submit(task);
        let rec = self.record(&env, trace);
        let mut resp = pb::SubmitTaskResponse {
            task_id: task_id.to_string(),
            duplicate: false,
            version: ACCEPTED_VERSION,
            ..Default::default()
        };
        match self.durable.accept(rec, task_id).await {
            Ok(Accepted::Kafka(p)) => {
                metrics::submit("kafka");
                resp.accepted_via = pb::AcceptedVia::Kafka as i32;
                resp.topic = p.topic;
                resp.partition = p.partition;
                resp.offset = p.offset;
            }
            Ok(Accepted::Outbox(id)) => {
                metrics::submit("outbox");
                resp.accepted_via = pb::AcceptedVia::Outbox as i32;
                resp.topic = self.topics.tasks(recent.priority);
                resp.outbox_id = id;
            }
            Err(e) => {
                metrics::submit("unavailable");
                tracing::warn!(task_id = %task_id, error = %e, "submit not accepted");
                if let Some(k) = &redis_key {
                    self.idempotency.release(k).await;
                }
                return Err(e.into());
            }
        }
        if let Some(k) = &redis_key {
            self.idempotency.finish(k, &resp).await;
        }
        self.recent.insert(task_id, recent);
        Ok(resp)
    }

    /// Accepts a batch: every item is validated and made durable on its own, concurrently (their
    /// records are produced together and every delivery report awaited).
    pub async fn submit_many(
        &self,
        tenant: &Tenant,
        specs: Vec<pb::TaskSpec>,
        trace: &TraceHeaders,
    ) -> Vec<pb::SubmitResult> {
        let now = Utc::now();
        let items = specs.into_iter().enumerate().map(|(i, spec)| async move {
            let index = i as u32;
            let outcome = match parse_task_spec(&format!("tasks[{i}]"), tenant, spec, now) {
                Err(v) => {
                    metrics::submit("invalid");
                    Err(GatewayError::Invalid(v))
                }
                Ok(task) => self.submit(task, trace).await,
            };
            pb::SubmitResult {
                index,
                outcome: Some(match outcome {
                    Ok(r) => pb::submit_result::Outcome::Accepted(r),
                    Err(e) => pb::submit_result::Outcome::Error(item_error(e)),
                }),
            }
        });
        join_all(items).await
    }

    /// Publishes a cancel command on the task's own partition (so it is ordered after the
    /// submit). Finished tasks are left alone (`accepted = false`).
    ///
    /// Cancels are never parked in the outbox: the outbox keys rows by (task, topic), which the
    /// submit's row already holds, and a refused cancel is safe for the caller to retry.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, NOT_FOUND (unknown or another tenant's task), UNAVAILABLE.
    pub async fn cancel(
        &self,
        tenant: &Tenant,
        req: pb::CancelTaskRequest,
        trace: &TraceHeaders,
    ) -> Result<pb::CancelTaskResponse, GatewayError> {
        let mut v = Violations::default();
        let task_id = v.check(
            "task_id",
            TaskId::parse(&req.task_id).map_err(|e| e.to_string()),
        );
        let given_key = if req.business_key.is_empty() {
            Some(None)
        } else {
            v.check("business_key", BusinessKey::parse(&req.business_key))
                .map(Some)
        };
        if req.reason.len() > CANCEL_REASON_MAX_BYTES {
            v.add(
                "reason",
                format!("must be at most {CANCEL_REASON_MAX_BYTES} bytes"),
            );
        }
        let (Some(task_id), Some(given_key), true) = (task_id, given_key, v.is_empty()) else {
            return Err(GatewayError::Invalid(v));
        };
        let not_found = || GatewayError::NotFound(format!("task {task_id} not found"));

        let (business_key, priority, state) = match dispatch_store::tasks::get(&self.pool, task_id)
            .await
        {
            Ok(Some(t)) => {
                if t.tenant != tenant.as_str() {
                    return Err(not_found());
                }
                let state = TaskState::from_proto(t.state());
                if let Some(s) = state.filter(|s| s.is_terminal()) {
                    return Ok(pb::CancelTaskResponse {
                        task_id: task_id.to_string(),
                        accepted: false,
                        state: s.to_proto() as i32,
                    });
                }
                if given_key
                    .as_ref()
                    .is_some_and(|k| k.as_str() != t.business_key)
                {
                    let mut v = Violations::default();
                    v.add("business_key", "does not match the task's business key");
                    return Err(GatewayError::Invalid(v));
                }
                let key = BusinessKey::parse(&t.business_key)
                    .map_err(|e| GatewayError::Internal(format!("stored business key {e}")))?;
                let priority = Priority::from_proto_i32(t.priority).unwrap_or_default();
                (key, priority, state)
            }
            Ok(None) => {
                let (k, p) = self.route_unstored(tenant, task_id, given_key).await?;
                (k, p, None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "task lookup failed; routing cancel without the store");
                let (k, p) = self
                    .route_unstored(tenant, task_id, given_key)
                    .await
                    .map_err(|err| match err {
                        GatewayError::NotFound(_) => GatewayError::StoreUnavailable(e.to_string()),
                        other => other,
                    })?;
                (k, p, None)
            }
        };
        let env = Envelope::cancel(task_id, tenant.clone(), business_key, priority, req.reason);
        let rec = self.record(&env, trace);
        self.durable
            .producer()
            .send_guarded(&rec, "cancel")
            .await
            .map_err(|e| GatewayError::KafkaUnavailable(e.to_string()))?;
        tracing::info!(task_id = %task_id, "cancel published");
        Ok(pb::CancelTaskResponse {
            task_id: task_id.to_string(),
            accepted: true,
            state: state.map_or(pb::TaskState::Unspecified, TaskState::to_proto) as i32,
        })
    }

    /// Route of a task the store does not know yet: a recent submit of this instance, its outbox
    /// row, or the caller's business key (then on the default-priority topic: a cancel that
    /// overtakes its submit is handled by the processor as a tombstone).
    async fn route_unstored(
        &self,
        tenant: &Tenant,
        task_id: TaskId,
        given_key: Option<BusinessKey>,
    ) -> Result<(BusinessKey, Priority), GatewayError> {
        let not_found = || GatewayError::NotFound(format!("task {task_id} not found"));
        if let Some(r) = self.recent.get(&task_id) {
            if r.tenant != *tenant {
                return Err(not_found());
            }
            return Ok((r.business_key, r.priority));
        }
        if let Ok(Some(KnownTask::Outboxed { envelope, .. })) =
            outbox_relay::find_task(&self.pool, task_id).await
        {
            if envelope.tenant != *tenant {
                return Err(not_found());
            }
            return Ok((envelope.business_key, envelope.priority));
        }
        match given_key {
            Some(k) => Ok((k, Priority::Default)),
            None => Err(GatewayError::NotFound(format!(
                "task {task_id} not found; if it was just submitted, pass its business_key"
            ))),
        }
    }
}

fn item_error(e: GatewayError) -> pb::ItemError {
    let code = e.code() as i32;
    match e {
        GatewayError::Invalid(v) => pb::ItemError {
            code,
            message: format!("invalid task: {}", v.summary()),
            violations: v
                .0
                .into_iter()
                .map(|f| pb::FieldViolation {
                    field: f.field,
                    description: f.description,
                })
                .collect(),
        },
        other => pb::ItemError {
            code,
            message: other.to_string(),
            violations: Vec::new(),
        },
    }
}
