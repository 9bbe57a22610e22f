//! The gateway's domain: submit, submit many, cancel. Takes validated input and the caller's
//! tenant; knows nothing of gRPC transport (service.rs adapts).
//!
//! Over 400 lines because submit, submit many and cancel share the claim, the route and the
//! accept, and the per-item outcome mapping; submit many (about 130 lines, repeats of a key
//! following the first item) would move to a module of its own first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use dispatch_core::state::ACCEPTED_VERSION;
use dispatch_core::validate::{SpecLimits, parse_task_spec_with};
use dispatch_core::{
    BusinessKey, Envelope, Headers, IdempotencyKey, NewTask, Priority, TaskId, TaskState, Tenant,
    Topics, Violations,
};
use dispatch_proto::v1 as pb;
use dispatch_store::idempotency_keys;
use dispatch_store::outbox::Kind;
use dispatch_store::outbox_relay::{self, KnownTask};
use futures::future::join_all;

use crate::durable::{Accepted, Durable, Refused};
use crate::error::GatewayError;
use crate::fingerprint::Fingerprint;
use crate::idempotency::{Claim, Conflict, Idempotency, Keyed};
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
    spec_limits: SpecLimits,
}

/// A submit whose record is ready to be made durable, and what its answer needs.
struct Ready {
    task_id: TaskId,
    recent: RecentSubmit,
    /// The Redis idempotency key this submit claimed (finished or released after the accept).
    redis_key: Option<String>,
    fingerprint: Option<Fingerprint>,
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
            spec_limits: SpecLimits::default(),
        }
    }

    /// Validates specs under `limits` (`[limits]`: the per-task timeout maxima) instead of the
    /// defaults.
    #[must_use]
    pub fn with_spec_limits(mut self, limits: SpecLimits) -> Self {
        self.spec_limits = limits;
        self
    }

    /// The limits specs are validated under.
    pub fn spec_limits(&self) -> &SpecLimits {
        &self.spec_limits
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
    /// [`GatewayError::Unavailable`] when neither Kafka nor the outbox took it;
    /// [`GatewayError::Conflict`] when its idempotency key was first used with other parameters.
    pub async fn submit(
        &self,
        task: NewTask,
        trace: &TraceHeaders,
        deadline: Option<Instant>,
    ) -> Result<pb::SubmitTaskResponse, GatewayError> {
        let (claim, fingerprint) = if task.idempotency_key.is_some() {
            let fingerprint = Fingerprint::of(&task);
            let keyed = [Keyed {
                task: &task,
                fingerprint,
            }];
            let claim = self.idempotency.claim_many(&keyed, deadline).await.pop();
            (claim, Some(fingerprint))
        } else {
            (None, None)
        };
        match self.ready(task, claim, fingerprint, trace) {
            Err(answer) => answer,
            Ok((ready, record)) => self
                .make_durable(vec![ready], vec![record], deadline)
                .await
                .pop()
                .unwrap_or_else(|| Err(GatewayError::Internal("no answer".into()))),
        }
    }

    /// Answers a claimed task at once (a duplicate, a conflict, a key that could not be
    /// checked), or readies its record (`claim` is `None` without an idempotency key).
    fn ready(
        &self,
        task: NewTask,
        claim: Option<Claim>,
        fingerprint: Option<Fingerprint>,
        trace: &TraceHeaders,
    ) -> Result<(Ready, (OutRecord, TaskId)), Result<pb::SubmitTaskResponse, GatewayError>> {
        let redis_key = match claim {
            None => None,
            Some(Claim::Duplicate(resp)) => {
                metrics::submit("duplicate");
                return Err(Ok(resp));
            }
            Some(Claim::Conflict(c)) => {
                metrics::submit("conflict");
                tracing::info!(task_id = %c.task_id, fields = ?c.fields, "idempotency key reused with other parameters");
                return Err(Err(GatewayError::Conflict(c)));
            }
            Some(Claim::Unchecked) => {
                metrics::submit("unavailable");
                return Err(Err(GatewayError::StoreUnavailable(
                    "cannot check the idempotency key: redis and mysql are unavailable; retry"
                        .into(),
                )));
            }
            Some(Claim::Fresh { redis_key }) => redis_key,
        };
        let task_id = task.task_id;
        let recent = RecentSubmit {
            tenant: task.tenant.clone(),
            business_key: task.business_key.clone(),
            priority: task.priority,
        };
        let env = Envelope::submit(task);
        let record = (self.record(&env, trace), task_id);
        Ok((
            Ready {
                task_id,
                recent,
                redis_key,
                fingerprint,
            },
            record,
        ))
    }

    /// Makes ready tasks durable together ([`Durable::accept_many`]) and answers each, in order;
    /// then records (or, for a task not accepted, releases) the idempotency keys they claimed.
    async fn make_durable(
        &self,
        ready: Vec<Ready>,
        records: Vec<(OutRecord, TaskId)>,
        deadline: Option<Instant>,
    ) -> Vec<Result<pb::SubmitTaskResponse, GatewayError>> {
        let accepted = self
            .durable
            .accept_many(&records, Kind::Submit, deadline)
            .await;
        drop(records);
        let mut answers = Vec::with_capacity(ready.len());
        let mut keyed = Vec::new();
        let mut recent = Vec::with_capacity(ready.len());
        for (r, a) in ready.into_iter().zip(accepted) {
            let task_id = r.task_id;
            let mut resp = pb::SubmitTaskResponse {
                task_id: task_id.to_string(),
                duplicate: false,
                version: ACCEPTED_VERSION,
                ..Default::default()
            };
            let answer = match a {
                Ok(Accepted::Kafka(p)) => {
                    metrics::submit("kafka");
                    resp.accepted_via = pb::AcceptedVia::Kafka as i32;
                    resp.topic = p.topic;
                    resp.partition = p.partition;
                    resp.offset = p.offset;
                    Ok(resp)
                }
                Ok(Accepted::Outbox(id)) => {
                    metrics::submit("outbox");
                    resp.accepted_via = pb::AcceptedVia::Outbox as i32;
                    resp.topic = self.topics.tasks(r.recent.priority);
                    resp.outbox_id = id;
                    Ok(resp)
                }
                Err(e) => {
                    metrics::submit(match e {
                        Refused::Unavailable(_) => "unavailable",
                        Refused::DeadlineExceeded(_) => "deadline_exceeded",
                    });
                    tracing::warn!(task_id = %task_id, error = %e, "submit not accepted");
                    Err(e.into())
                }
            };
            if answer.is_ok() {
                recent.push((task_id, r.recent));
            }
            if let Some(k) = r.redis_key {
                keyed.push((answers.len(), k, r.fingerprint));
            }
            answers.push(answer);
        }
        self.recent.extend(recent);
        if !keyed.is_empty() {
            let answers = &answers;
            join_all(keyed.iter().map(|(j, k, fp)| async move {
                match (&answers[*j], fp) {
                    (Ok(resp), Some(fp)) => self.idempotency.finish(k, fp, resp).await,
                    (Ok(_), None) => {}
                    (Err(_), _) => self.idempotency.release(k).await,
                }
            }))
            .await;
        }
        answers
    }

    /// Accepts a batch: every item is validated and answered on its own; the records are made
    /// durable together (handed to Kafka in the call's order and awaited under one timer, each
    /// one Kafka did not take parked in the outbox on its own, concurrently). The idempotency
    /// keys of the batch are claimed together (one MySQL statement). An item that repeats an
    /// earlier item's idempotency key gets that item's answer (`duplicate = true`) when its
    /// parameters are the same, and ALREADY_EXISTS when they are not: one key, one task, also
    /// within a batch.
    pub async fn submit_many(
        &self,
        tenant: &Tenant,
        specs: Vec<pb::TaskSpec>,
        trace: &TraceHeaders,
        deadline: Option<Instant>,
    ) -> Vec<pb::SubmitResult> {
        let now = Utc::now();
        let n = specs.len();
        let mut items: Vec<Item> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                match parse_task_spec_with(
                    &format!("tasks[{i}]"),
                    tenant,
                    spec,
                    now,
                    &self.spec_limits,
                ) {
                    Err(v) => {
                        metrics::submit("invalid");
                        Item::Done(Err(GatewayError::Invalid(v)))
                    }
                    Ok(task) => Item::Run(task),
                }
            })
            .collect();

        // Repeats of a key within the batch: the first valid item with the key leads.
        let mut fingerprints: Vec<Option<Fingerprint>> = vec![None; n];
        let mut leader_of_key: HashMap<IdempotencyKey, usize> = HashMap::new();
        for i in 0..n {
            let Item::Run(task) = &items[i] else { continue };
            let Some(key) = task.idempotency_key.clone() else {
                continue;
            };
            let fp = Fingerprint::of(task);
            fingerprints[i] = Some(fp);
            match leader_of_key.get(&key) {
                None => {
                    leader_of_key.insert(key, i);
                }
                Some(&l) => {
                    let lead_fp = fingerprints[l].unwrap_or(fp);
                    let fields = lead_fp.diff(&fp);
                    items[i] = if fields.is_empty() {
                        Item::Follow(l)
                    } else {
                        metrics::submit("conflict");
                        Item::Done(Err(GatewayError::Conflict(Conflict {
                            task_id: task.task_id,
                            idempotency_key: key.to_string(),
                            fields,
                        })))
                    };
                }
            }
        }

        // Claim the leaders' keys together.
        let keyed_idx: Vec<usize> = (0..n)
            .filter(|&i| matches!(&items[i], Item::Run(t) if t.idempotency_key.is_some()))
            .collect();
        let mut claims: Vec<Option<Claim>> = (0..n).map(|_| None).collect();
        {
            let keyed: Vec<Keyed<'_>> = keyed_idx
                .iter()
                .filter_map(|&i| match &items[i] {
                    Item::Run(task) => Some(Keyed {
                        task,
                        fingerprint: fingerprints[i]?,
                    }),
                    _ => None,
                })
                .collect();
            let got = self.idempotency.claim_many(&keyed, deadline).await;
            for (&i, c) in keyed_idx.iter().zip(got) {
                claims[i] = Some(c);
            }
        }

        // Make every leader and unkeyed item durable, together.
        let mut results: Vec<Option<pb::submit_result::Outcome>> = (0..n).map(|_| None).collect();
        let mut followers = Vec::new();
        let mut ready = Vec::new();
        let mut records = Vec::new();
        let mut ready_idx = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Item::Done(r) => results[i] = Some(outcome(i, r)),
                Item::Follow(l) => followers.push((i, l)),
                Item::Run(task) => match self.ready(task, claims[i].take(), fingerprints[i], trace)
                {
                    Err(answer) => results[i] = Some(outcome(i, answer)),
                    Ok((r, record)) => {
                        ready.push(r);
                        records.push(record);
                        ready_idx.push(i);
                    }
                },
            }
        }
        if !ready.is_empty() {
            for (i, r) in ready_idx
                .into_iter()
                .zip(self.make_durable(ready, records, deadline).await)
            {
                results[i] = Some(outcome(i, r));
            }
        }
        for (i, l) in followers {
            let lead = results[l].clone();
            results[i] = lead.map(|o| follow(o, l, i));
        }
        results
            .into_iter()
            .enumerate()
            .map(|(i, o)| pb::SubmitResult {
                index: i as u32,
                outcome: o,
            })
            .collect()
    }

    /// Makes a cancel command durable on the task's own partition (so it is ordered after the
    /// submit): on Kafka, or in the outbox like a submit when Kafka is unavailable or the outbox
    /// still holds records (sticky routing), so it stays behind its submit either way. Finished
    /// tasks are left alone (`accepted = false`).
    ///
    /// A task the gateway can see in MySQL (`tasks`, the outbox, `idempotency_keys`) or in this
    /// instance's recent submits answers NOT_FOUND to another tenant, as GetTask does.
    ///
    /// # Errors
    /// INVALID_ARGUMENT, NOT_FOUND (unknown or another tenant's task), UNAVAILABLE.
    pub async fn cancel(
        &self,
        tenant: &Tenant,
        req: pb::CancelTaskRequest,
        trace: &TraceHeaders,
        deadline: Option<Instant>,
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
        let via = match self
            .durable
            .accept(rec, task_id, Kind::Cancel, deadline)
            .await?
        {
            Accepted::Kafka(_) => "kafka",
            Accepted::Outbox(_) => "outbox",
        };
        tracing::info!(task_id = %task_id, via, "cancel accepted");
        Ok(pb::CancelTaskResponse {
            task_id: task_id.to_string(),
            accepted: true,
            state: state.map_or(pb::TaskState::Unspecified, TaskState::to_proto) as i32,
        })
    }

    /// Route of a task the store does not know yet: a recent submit of this instance, its
    /// idempotency key's row, its outbox row, or the caller's business key (then on the default-priority topic: a cancel that
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
        match idempotency_keys::owner(&self.pool, task_id).await {
            Ok(Some(owner)) => {
                if owner.tenant != tenant.as_str() {
                    return Err(not_found());
                }
                let key = BusinessKey::parse(&owner.business_key)
                    .map_err(|e| GatewayError::Internal(format!("stored business key {e}")))?;
                return Ok((key, owner.priority));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "idempotency key lookup failed; routing the cancel without it")
            }
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

/// One item of a batch on its way.
enum Item {
    /// Answered already (invalid, or a conflicting repeat of an earlier item's key).
    Done(Result<pb::SubmitTaskResponse, GatewayError>),
    /// Gets the answer of the earlier item at this index (same key, same parameters).
    Follow(usize),
    /// To be made durable.
    Run(NewTask),
}

/// The outcome of item `i`.
fn outcome(
    i: usize,
    r: Result<pb::SubmitTaskResponse, GatewayError>,
) -> pb::submit_result::Outcome {
    match r {
        Ok(resp) => pb::submit_result::Outcome::Accepted(resp),
        Err(e) => pb::submit_result::Outcome::Error(item_error(i, e)),
    }
}

/// The answer of item `i`, which repeats item `lead`: the same task, marked duplicate, or the
/// same error with its field paths moved to `i`.
fn follow(o: pb::submit_result::Outcome, lead: usize, i: usize) -> pb::submit_result::Outcome {
    match o {
        pb::submit_result::Outcome::Accepted(mut resp) => {
            metrics::submit("duplicate");
            resp.duplicate = true;
            pb::submit_result::Outcome::Accepted(resp)
        }
        pb::submit_result::Outcome::Error(mut e) => {
            let (from, to) = (format!("tasks[{lead}]."), format!("tasks[{i}]."));
            for v in &mut e.violations {
                if let Some(rest) = v.field.strip_prefix(&from) {
                    v.field = format!("{to}{rest}");
                }
            }
            pb::submit_result::Outcome::Error(e)
        }
    }
}

fn item_error(i: usize, e: GatewayError) -> pb::ItemError {
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
        GatewayError::Conflict(c) => pb::ItemError {
            code,
            message: GatewayError::Conflict(c.clone()).to_string(),
            violations: c
                .fields
                .iter()
                .map(|f| pb::FieldViolation {
                    field: format!("tasks[{i}].{f}"),
                    description: "differs from the first submit with this idempotency key".into(),
                })
                .collect(),
        },
        // The same message the unary RPC would send: a dependency's own error text (Kafka,
        // sqlx) is logged by the conversion and never reaches the tenant.
        other => pb::ItemError {
            code,
            message: tonic::Status::from(other).message().to_owned(),
            violations: Vec::new(),
        },
    }
}

#[cfg(test)]
mod item_error_tests {
    use super::*;

    #[test]
    fn an_item_error_never_carries_a_dependencys_own_text() {
        let detail = "error returned from database: Access denied for user 'dispatch'@'10.0.0.7'";
        for e in [
            GatewayError::StoreUnavailable(detail.into()),
            GatewayError::Internal(detail.into()),
        ] {
            let code = e.code() as i32;
            let item = item_error(3, e);
            assert_eq!(item.code, code);
            assert!(!item.message.contains("10.0.0.7"), "{}", item.message);
            assert!(!item.message.is_empty());
        }
    }
}
