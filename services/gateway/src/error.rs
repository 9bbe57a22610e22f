//! The gateway's one error type and its one mapping to `tonic::Status`. What only the operator
//! should read (Kafka and MySQL error text, internal failures) is logged and replaced by a generic
//! message (`dispatch_runtime::server::status`).

use std::collections::HashMap;

use dispatch_core::Violations;
use dispatch_runtime::server::status;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::durable::{Refused, Unavailable};
use crate::idempotency::Conflict;
use crate::limits::Limited;

/// `google.rpc.ErrorInfo.reason` of a reused idempotency key; its metadata names the first
/// differing field (`field`), all of them (`fields`, comma-separated), the `task_id` and the
/// `idempotency_key`. A workflow's reused key: `field` is `nodes`, with `workflow_id` and
/// `idempotency_key`.
pub const CONFLICT_REASON: &str = "IDEMPOTENCY_KEY_REUSED";
/// `google.rpc.ErrorInfo.domain` of the gateway's errors.
pub const ERROR_DOMAIN: &str = "dispatch.v1.TaskService";

/// What a caller reads when neither Kafka nor the outbox took a record.
pub const UNAVAILABLE_MESSAGE: &str =
    "kafka and the outbox are both unavailable: nothing was accepted; retry with backoff";

/// What a caller reads when the store the gateway needs for a request (idempotency keys, task
/// lookups) cannot answer.
pub const STORE_UNAVAILABLE_MESSAGE: &str =
    "the store behind idempotency keys and task lookups is unavailable; retry shortly";

/// Why a TaskService call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed (field violations).
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// A rate limit was hit.
    #[error("rate limited ({})", .0.scope)]
    Limited(Limited),
    /// Kafka and the outbox both failed: nothing was accepted.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The caller's deadline came before the task was durable: nothing was accepted.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The store could not answer and nothing else could route the request.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Unknown task (or another tenant's: indistinguishable on purpose).
    #[error("{0}")]
    NotFound(String),
    /// The idempotency key was first used with other parameters.
    #[error(
        "idempotency key {:?} was first used with a different {} (task {}); \
         resubmit with the same parameters, or use a new key",
        .0.idempotency_key,
        .0.fields.join(", "),
        .0.task_id
    )]
    Conflict(Conflict),
    /// A workflow's idempotency key was first used with other nodes.
    #[error(
        "idempotency key {idempotency_key:?} belongs to workflow {workflow_id}, which has other \
         nodes; resubmit the same nodes, or use a new key"
    )]
    WorkflowConflict {
        /// The workflow the key names.
        workflow_id: dispatch_core::TaskId,
        /// The key.
        idempotency_key: String,
    },
    /// A bug or a panic in a request task.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The gRPC code (also used for per-item batch errors).
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Limited(_) => Code::ResourceExhausted,
            Self::Unavailable(_) | Self::StoreUnavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::NotFound(_) => Code::NotFound,
            Self::Conflict(_) | Self::WorkflowConflict { .. } => Code::AlreadyExists,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<Refused> for GatewayError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Unavailable(u) => Self::Unavailable(u),
            Refused::DeadlineExceeded(why) => Self::DeadlineExceeded(why),
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Invalid(v) => v.to_status(),
            GatewayError::Limited(l) => l.to_status(),
            GatewayError::Conflict(c) => {
                let message = GatewayError::Conflict(c.clone()).to_string();
                let metadata = HashMap::from([
                    (
                        "field".to_owned(),
                        c.fields.first().copied().unwrap_or("").to_owned(),
                    ),
                    ("fields".to_owned(), c.fields.join(",")),
                    ("task_id".to_owned(), c.task_id.to_string()),
                    ("idempotency_key".to_owned(), c.idempotency_key.clone()),
                ]);
                Status::with_error_details(
                    Code::AlreadyExists,
                    message,
                    ErrorDetails::with_error_info(CONFLICT_REASON, ERROR_DOMAIN, metadata),
                )
            }
            GatewayError::WorkflowConflict {
                workflow_id,
                idempotency_key,
            } => {
                let message = GatewayError::WorkflowConflict {
                    workflow_id,
                    idempotency_key: idempotency_key.clone(),
                }
                .to_string();
                let metadata = HashMap::from([
                    ("field".to_owned(), "nodes".to_owned()),
                    ("workflow_id".to_owned(), workflow_id.to_string()),
                    ("idempotency_key".to_owned(), idempotency_key),
                ]);
                Status::with_error_details(
                    Code::AlreadyExists,
                    message,
                    ErrorDetails::with_error_info(CONFLICT_REASON, ERROR_DOMAIN, metadata),
                )
            }
            GatewayError::Unavailable(u) => {
                status::hidden(Code::Unavailable, UNAVAILABLE_MESSAGE, &u)
            }
            GatewayError::StoreUnavailable(detail) => {
                status::hidden(Code::Unavailable, STORE_UNAVAILABLE_MESSAGE, &detail)
            }
            GatewayError::Internal(detail) => status::internal(&detail),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_limits_carry_a_retry_hint() {
        let s: Status = GatewayError::Limited(Limited {
            scope: "tenant",
            retry_after: Duration::from_micros(1500),
            too_large: false,
        })
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            dispatch_runtime::ratelimit::retry_after_ms(&s),
            Some(2),
            "rounded up"
        );
    }

    #[test]
    fn a_reused_key_is_already_exists_with_error_info_naming_the_field() {
        let task_id = dispatch_core::TaskId::new();
        let s: Status = GatewayError::Conflict(Conflict {
            task_id,
            idempotency_key: "k-1".into(),
            fields: vec!["payload", "priority"],
        })
        .into();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert!(
            s.message().contains("different payload, priority"),
            "{}",
            s.message()
        );
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, CONFLICT_REASON);
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["field"], "payload");
        assert_eq!(info.metadata["fields"], "payload,priority");
        assert_eq!(info.metadata["task_id"], task_id.to_string());
    }

    #[test]
    fn unavailable_maps_to_unavailable() {
        let s: Status = GatewayError::Unavailable(Unavailable {
            kafka: "down".into(),
            outbox: "down".into(),
        })
        .into();
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[test]
    fn store_and_internal_detail_never_reaches_the_caller() {
        let sqlx = "error returned from database: 1045 (28000): Access denied for user \
                    'dispatch'@'10.0.0.7' (using password: YES)";
        for (e, code, message) in [
            (
                GatewayError::Unavailable(Unavailable {
                    kafka: "Message production error: MessageTimedOut".into(),
                    outbox: sqlx.into(),
                }),
                Code::Unavailable,
                UNAVAILABLE_MESSAGE,
            ),
            (
                GatewayError::StoreUnavailable(sqlx.into()),
                Code::Unavailable,
                STORE_UNAVAILABLE_MESSAGE,
            ),
            (
                GatewayError::Internal(format!("request task failed: {sqlx}")),
                Code::Internal,
                status::INTERNAL,
            ),
        ] {
            let s: Status = e.into();
            assert_eq!((s.code(), s.message()), (code, message));
            assert!(!format!("{s:?}").contains("Access denied"), "{s:?}");
        }
    }
}
