//! [`Envelope`]: the command carried by every task record, and its Kafka codec.
//!
//! A record is `key = business key`, `value = protobuf TaskEnvelope`, plus headers that repeat the
//! routing fields ([`header`]) so operators and tools (kcat, the DLQ browser) can filter without
//! decoding, and that carry what is about the *delivery* rather than the task: trace context,
//! `not-before` on retry topics, DLQ provenance.
//!
//! Over 400 lines because of its tests, which start near line 425: the header names, the typed
//! [`Envelope`] and its codec in both directions must agree field by field; the attempt timeout
//! ([`AttemptTimeout`]) would move out first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch_proto::v1 as pb;
use prost::Message;

use crate::ids::TaskId;
use crate::retry::RetryPolicy;
use crate::task::{BusinessKey, NewTask, Priority, TaskType, Tenant};
use crate::time;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Header names.
pub mod header {
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Task id (text).
    pub const TASK_ID: &str = "dispatch-task-id";
    /// Tenant.
    pub const TENANT: &str = "dispatch-tenant";
    /// Task type.
    pub const TASK_TYPE: &str = "dispatch-task-type";
    /// Attempt number (decimal).
    pub const ATTEMPT: &str = "dispatch-attempt";
    /// `submit` or `cancel`.
    pub const KIND: &str = "dispatch-kind";
    /// Envelope schema version (decimal).
    pub const SCHEMA_VERSION: &str = "dispatch-schema-version";
    /// Epoch milliseconds before which a retry record must not be processed.
    pub const NOT_BEFORE: &str = "dispatch-not-before";
    /// DLQ provenance: where the record was consumed from when it died.
    pub const ORIGINAL_TOPIC: &str = "dispatch-original-topic";
    /// DLQ provenance.
    pub const ORIGINAL_PARTITION: &str = "dispatch-original-partition";
    /// DLQ provenance.
    pub const ORIGINAL_OFFSET: &str = "dispatch-original-offset";
    /// DLQ provenance: `permanent`, `exhausted`, `deadline`, `poison`, `unknown_type`.
    pub const ERROR_CLASS: &str = "dispatch-error-class";
    /// DLQ provenance: the error text (truncated to 1 KiB).
    pub const ERROR: &str = "dispatch-error";
    /// DLQ provenance: epoch milliseconds when the task died.
    pub const DEAD_AT: &str = "dispatch-dead-at";
    /// Redrive lineage: the redrive that moved this record.
    pub const REDRIVE_ID: &str = "dispatch-redrive-id";
    /// Redrive lineage: DLQ partition of the dead letter.
    pub const DLQ_PARTITION: &str = "dispatch-dlq-partition";
    /// Redrive lineage: DLQ offset of the dead letter.
    pub const DLQ_OFFSET: &str = "dispatch-dlq-offset";
}

/// Record headers as owned name/value pairs (kept free of any Kafka client type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

impl Headers {
    /// Sets `name`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `name` as UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of `name` parsed as a decimal integer.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.get_str(name).and_then(|s| s.parse().ok())
    }

    /// Iterates over name/value pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

/// What the record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// Run an attempt.
    Submit,
    /// Cancel the task.
    Cancel,
}

/// A decoded, validated task record.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Submit or cancel.
    pub kind: EnvelopeKind,
    /// The task.
    pub task_id: TaskId,
    /// Owner.
    pub tenant: Tenant,
    /// Record key.
    pub business_key: BusinessKey,
    /// Handler selector (for a cancel: the task's type if known, else `cancel`).
    pub task_type: TaskType,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// First-attempt topic.
    pub priority: Priority,
    /// Dedupe key, if any.
    pub idempotency_key: Option<String>,
    /// When the gateway accepted it.
    pub submitted_at: DateTime<Utc>,
    /// Not before.
    pub run_at: Option<DateTime<Utc>>,
    /// No attempt starts after this.
    pub deadline: Option<DateTime<Utc>>,
    /// Effective retry policy.
    pub retry: RetryPolicy,
    /// 1-based attempt this record asks for.
    pub attempt: u32,
    /// Redrive generation (0 = original run).
    pub generation: u32,
    /// Error of the previous attempt.
    pub last_error: String,
    /// Reason of a cancel.
    pub cancel_reason: String,
    /// The task's own attempt timeout in milliseconds (None: only the type's timeout applies;
    /// also every envelope written before the field existed).
    pub timeout_ms: Option<u32>,
    /// The workflow the task is a node of, if any: its outcome may release other nodes.
    pub workflow_id: Option<TaskId>,
}

/// Which bound an attempt's run time is limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutBound {
    /// The task's own `timeout_ms`.
    Task,
    /// Its task type's timeout (the processor's `handlers` settings).
    TaskType,
}

/// The run-time limit of one attempt: the shorter of the task's and its type's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout {
    /// How long the handler may run.
    pub limit: Duration,
    /// Whose limit it is.
    pub bound: TimeoutBound,
}

impl AttemptTimeout {
    /// The attempt's error when the handler ran out of time, naming the bound that fired.
    pub fn error(&self) -> String {
        let whose = match self.bound {
            TimeoutBound::Task => "the task's timeout_ms",
            TimeoutBound::TaskType => "its task type's timeout",
        };
        format!(
            "handler timed out after {} ms ({whose})",
            self.limit.as_millis()
        )
    }
}

/// Why a record could not be decoded. Such a record is poison: it goes to the DLQ as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not a protobuf TaskEnvelope.
    #[error("record value is not a TaskEnvelope: {0}")]
    Decode(String),
    /// Written by an incompatible producer.
    #[error("unsupported envelope schema version {0} (this build reads {SCHEMA_VERSION})")]
    SchemaVersion(u32),
    /// A field is invalid.
    #[error("invalid envelope field {field}: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn field<T>(name: &'static str, r: Result<T, String>) -> Result<T, EnvelopeError> {
    r.map_err(|reason| EnvelopeError::Field {
        field: name,
        reason,
    })
}

impl Envelope {
    /// The first-attempt envelope of an accepted task.
    pub fn submit(task: NewTask) -> Self {
        Self {
            kind: EnvelopeKind::Submit,
            task_id: task.task_id,
            tenant: task.tenant,
            business_key: task.business_key,
            task_type: task.task_type,
            payload: task.payload.into_inner(),
            priority: task.priority,
            idempotency_key: task.idempotency_key.map(|k| k.into_inner()),
            submitted_at: task.submitted_at,
            run_at: task.run_at,
            deadline: task.deadline,
            retry: task.retry,
            attempt: 1,
            generation: 0,
            last_error: String::new(),
            cancel_reason: String::new(),
            timeout_ms: task.timeout_ms,
            workflow_id: None,
        }
    }

    /// A cancel command for a task, routed by its business key.
    pub fn cancel(
        task_id: TaskId,
        tenant: Tenant,
        business_key: BusinessKey,
        priority: Priority,
        reason: String,
    ) -> Self {
        Self {
            kind: EnvelopeKind::Cancel,
            task_id,
            tenant,
            business_key,
            // A cancel runs no handler; the type only documents the record.
            task_type: TaskType::parse("cancel")
                .unwrap_or_else(|_| unreachable!("static type is valid")),
            payload: Vec::new(),
            priority,
            idempotency_key: None,
            submitted_at: Utc::now(),
            run_at: None,
            deadline: None,
            retry: RetryPolicy::DEFAULT,
            attempt: 0,
            generation: 0,
            last_error: String::new(),
            cancel_reason: reason,
            timeout_ms: None,
            workflow_id: None,
        }
    }

    /// The run-time limit of an attempt of this task whose type allows `type_timeout`: the task's
    /// own timeout when it is shorter, else the type's.
    pub fn attempt_timeout(&self, type_timeout: Duration) -> AttemptTimeout {
        match self
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)))
        {
            Some(t) if t < type_timeout => AttemptTimeout {
                limit: t,
                bound: TimeoutBound::Task,
            },
            _ => AttemptTimeout {
                limit: type_timeout,
                bound: TimeoutBound::TaskType,
            },
        }
    }

    /// The Kafka record key.
    pub fn key(&self) -> &[u8] {
        self.business_key.as_str().as_bytes()
    }

    /// The routing headers of this envelope (trace and delivery headers are added by callers).
    pub fn headers(&self) -> Headers {
        let mut h = Headers::default();
        h.set(header::TASK_ID, self.task_id.to_string());
        h.set(header::TENANT, self.tenant.as_str());
        h.set(header::TASK_TYPE, self.task_type.as_str());
        h.set(header::ATTEMPT, self.attempt.to_string());
        h.set(
            header::KIND,
            if self.kind == EnvelopeKind::Cancel {
                "cancel"
            } else {
                "submit"
            },
        );
        h.set(header::SCHEMA_VERSION, SCHEMA_VERSION.to_string());
        h
    }

    /// To the protobuf message.
    pub fn to_proto(&self) -> pb::TaskEnvelope {
        pb::TaskEnvelope {
            schema_version: SCHEMA_VERSION,
            kind: match self.kind {
                EnvelopeKind::Submit => pb::EnvelopeKind::Submit,
                EnvelopeKind::Cancel => pb::EnvelopeKind::Cancel,
            } as i32,
            task_id: self.task_id.to_string(),
            tenant: self.tenant.to_string(),
            business_key: self.business_key.to_string(),
            task_type: self.task_type.to_string(),
            payload: self.payload.clone(),
            priority: self.priority.to_proto() as i32,
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            submitted_at: Some(time::to_proto(self.submitted_at)),
            run_at: self.run_at.map(time::to_proto),
            deadline: self.deadline.map(time::to_proto),
            retry_policy: Some(pb::RetryPolicy {
                max_attempts: self.retry.max_attempts,
                initial_backoff_ms: self.retry.initial_backoff_ms,
                max_backoff_ms: self.retry.max_backoff_ms,
            }),
            attempt: self.attempt,
            last_error: self.last_error.clone(),
            cancel_reason: self.cancel_reason.clone(),
            generation: self.generation,
            timeout_ms: self.timeout_ms.unwrap_or(0),
            workflow_id: self.workflow_id.map(|w| w.to_string()).unwrap_or_default(),
        }
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Decodes and validates a record value.
    ///
    /// # Errors
    /// [`EnvelopeError`] for anything that is not a valid envelope; never panics on any input.
    pub fn decode(value: &[u8]) -> Result<Self, EnvelopeError> {
        let p =
            pb::TaskEnvelope::decode(value).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        Self::from_proto(p)
    }

    /// Validates a protobuf envelope.
    ///
    /// # Errors
    /// [`EnvelopeError`] naming the first invalid field.
    pub fn from_proto(p: pb::TaskEnvelope) -> Result<Self, EnvelopeError> {
        if p.schema_version != SCHEMA_VERSION {
            return Err(EnvelopeError::SchemaVersion(p.schema_version));
        }
        let kind = match pb::EnvelopeKind::try_from(p.kind) {
            Ok(pb::EnvelopeKind::Submit) => EnvelopeKind::Submit,
            Ok(pb::EnvelopeKind::Cancel) => EnvelopeKind::Cancel,
            _ => return field("kind", Err(format!("unknown kind {}", p.kind))),
        };
        let task_id = field(
            "task_id",
            TaskId::parse(&p.task_id).map_err(|e| e.to_string()),
        )?;
        let tenant = field("tenant", Tenant::parse(&p.tenant))?;
        let business_key = field("business_key", BusinessKey::parse(&p.business_key))?;
        let task_type = field("task_type", TaskType::parse(&p.task_type))?;
        let priority = field("priority", Priority::from_proto_i32(p.priority))?;
        let ts =
            |name: &'static str, t: Option<prost_types::Timestamp>| -> Result<_, EnvelopeError> {
                t.map(|t| {
                    time::from_proto(&t).ok_or(EnvelopeError::Field {
                        field: name,
                        reason: "out of range".into(),
                    })
                })
                .transpose()
            };
        let submitted_at = ts("submitted_at", p.submitted_at)?.unwrap_or_else(Utc::now);
        let run_at = ts("run_at", p.run_at)?;
        let deadline = ts("deadline", p.deadline)?;
        let retry = match p.retry_policy {
            None => RetryPolicy::DEFAULT,
            Some(r) if r.max_attempts == 0 || r.max_attempts > RetryPolicy::MAX_ATTEMPTS_LIMIT => {
                return field(
                    "retry_policy.max_attempts",
                    Err(format!("{} out of range", r.max_attempts)),
                );
            }
            Some(r) => RetryPolicy {
                max_attempts: r.max_attempts,
                initial_backoff_ms: r.initial_backoff_ms,
                max_backoff_ms: r.max_backoff_ms,
            },
        };
        let workflow_id = if p.workflow_id.is_empty() {
            None
        } else {
            Some(field(
                "workflow_id",
                TaskId::parse(&p.workflow_id).map_err(|e| e.to_string()),
            )?)
        };
        if kind == EnvelopeKind::Submit && p.attempt == 0 {
            return field("attempt", Err("must be at least 1".into()));
        }
        Ok(Self {
            kind,
            task_id,
            tenant,
            business_key,
            task_type,
            payload: p.payload,
            priority,
            idempotency_key: (!p.idempotency_key.is_empty()).then_some(p.idempotency_key),
            submitted_at,
            run_at,
            deadline,
            retry,
            attempt: p.attempt,
            generation: p.generation,
            last_error: p.last_error,
            cancel_reason: p.cancel_reason,
            timeout_ms: (p.timeout_ms > 0).then_some(p.timeout_ms),
            workflow_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Payload, Tenant};
    use proptest::prelude::*;

    fn sample() -> Envelope {
        Envelope::submit(NewTask {
            task_id: TaskId::new(),
            tenant: Tenant::parse("acme").expect("tenant"),
            business_key: BusinessKey::parse("order-1").expect("key"),
            task_type: TaskType::parse("email.send").expect("type"),
            payload: Payload::parse(b"hello".to_vec()).expect("payload"),
            priority: Priority::Critical,
            idempotency_key: None,
            run_at: None,
            deadline: Some(Utc::now() + chrono::Duration::hours(1)),
            retry: RetryPolicy::DEFAULT,
            timeout_ms: None,
            submitted_at: Utc::now(),
        })
    }

    #[test]
    fn the_per_task_timeout_travels_and_old_envelopes_have_none() {
        let mut e = sample();
        e.timeout_ms = Some(300);
        let back = Envelope::decode(&e.encode()).expect("decode");
        assert_eq!(back.timeout_ms, Some(300));
        // An envelope written before the field existed decodes as one without (proto3 omits a
        // zero field, so both are the same bytes).
        let mut old = sample().to_proto();
        old.timeout_ms = 0;
        assert_eq!(
            Envelope::decode(&old.encode_to_vec())
                .expect("decode")
                .timeout_ms,
            None
        );
    }

    #[test]
    fn an_attempt_runs_under_the_shorter_timeout_and_its_error_names_it() {
        let mut e = sample();
        let ty = Duration::from_secs(30);
        let t = e.attempt_timeout(ty);
        assert_eq!((t.limit, t.bound), (ty, TimeoutBound::TaskType));
        assert!(t.error().contains("30000 ms (its task type's timeout)"));
        e.timeout_ms = Some(300);
        let t = e.attempt_timeout(ty);
        assert_eq!(
            (t.limit, t.bound),
            (Duration::from_millis(300), TimeoutBound::Task)
        );
        assert_eq!(
            t.error(),
            "handler timed out after 300 ms (the task's timeout_ms)"
        );
        e.timeout_ms = Some(60_000);
        assert_eq!(e.attempt_timeout(ty).bound, TimeoutBound::TaskType);
    }

    #[test]
    fn round_trips_value_and_headers() {
        let e = sample();
        let back = Envelope::decode(&e.encode()).expect("decode");
        assert_eq!(back, e);
        let h = e.headers();
        assert_eq!(
            h.get_str(header::TASK_ID),
            Some(e.task_id.to_string().as_str())
        );
        assert_eq!(h.get_str(header::TENANT), Some("acme"));
        assert_eq!(h.get_i64(header::ATTEMPT), Some(1));
        assert_eq!(h.get_str(header::KIND), Some("submit"));
        assert_eq!(e.key(), b"order-1");
    }

    #[test]
    fn cancel_round_trips() {
        let s = sample();
        let c = Envelope::cancel(
            s.task_id,
            s.tenant,
            s.business_key,
            s.priority,
            "user asked".into(),
        );
        let back = Envelope::decode(&c.encode()).expect("decode");
        assert_eq!(back.kind, EnvelopeKind::Cancel);
        assert_eq!(back.cancel_reason, "user asked");
    }

    #[test]
    fn rejects_garbage_and_wrong_schema() {
        assert!(matches!(
            Envelope::decode(b"\xff\xff\xff garbage"),
            Err(EnvelopeError::Decode(_))
        ));
        let mut p = sample().to_proto();
        p.schema_version = 2;
        assert_eq!(
            Envelope::from_proto(p),
            Err(EnvelopeError::SchemaVersion(2))
        );
        let mut p = sample().to_proto();
        p.task_id = "x".into();
        assert!(matches!(
            Envelope::from_proto(p),
            Err(EnvelopeError::Field {
                field: "task_id",
                ..
            })
        ));
        // An empty value decodes to defaults, which fail validation.
        assert!(Envelope::decode(b"").is_err());
    }

    #[test]
    fn headers_set_replaces() {
        let mut h = Headers::default();
        h.set("a", "1");
        h.set("a", "2");
        assert_eq!(h.0.len(), 1);
        assert_eq!(h.get_i64("a"), Some(2));
        assert_eq!(h.get("b"), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn valid_envelopes_round_trip(
            key in "[a-zA-Z0-9:/_-]{1,64}",
            ty in "[a-z0-9._-]{1,32}",
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            attempt in 1u32..25,
        ) {
            let mut e = sample();
            e.business_key = BusinessKey::parse(&key).expect("key");
            e.task_type = TaskType::parse(&ty).expect("type");
            e.payload = payload;
            e.attempt = attempt;
            prop_assert_eq!(Envelope::decode(&e.encode()).expect("decode"), e);
        }
    }
}
