//! The reader's error boundary and its one mapping to `tonic::Status` (a store failure's detail is
//! logged, the caller reads `dispatch_runtime::server::status::STORE_UNAVAILABLE`).

use dispatch_core::{Version, Violations};
use dispatch_runtime::server::status;
use tonic::{Code, Status};

/// Why a lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The request is malformed (field violations).
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// No such task for this tenant (another tenant's task looks exactly like a missing one).
    #[error("task not found")]
    NotFound,
    /// No such workflow for this tenant (another tenant's workflow looks exactly like a missing
    /// one).
    #[error("workflow not found")]
    WorkflowNotFound,
    /// No such task for this tenant, and retention has purged the tenant's tasks that finished
    /// before the id was made: NOT_FOUND with this message (see `dispatch_store::retention`).
    #[error("{0}")]
    Purged(String),
    /// The caller holds a newer version than anything visible within the wait.
    #[error("version {wanted} not visible yet (have {have})")]
    NotVisible {
        /// The `min_version` asked for.
        wanted: Version,
        /// The newest version seen (0: the task is not visible at all).
        have: Version,
    },
    /// MySQL failed and no cached copy could answer.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bound of this instance is reached (the message names it).
    #[error("{0}")]
    Exhausted(String),
}

impl ReadError {
    /// A single field violation.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        let mut v = Violations::default();
        v.add(field, description);
        Self::Invalid(v)
    }
}

impl From<ReadError> for Status {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Invalid(v) => v.to_status(),
            ReadError::NotFound => Status::not_found("task not found"),
            ReadError::WorkflowNotFound => Status::not_found("workflow not found"),
            ReadError::Purged(m) => Status::not_found(m),
            ReadError::NotVisible { wanted, .. } => Status::failed_precondition(format!(
                "version {wanted} not visible yet; retry shortly"
            )),
            ReadError::Unavailable(detail) => {
                status::hidden(Code::Unavailable, status::STORE_UNAVAILABLE, &detail)
            }
            ReadError::Exhausted(m) => Status::resource_exhausted(m),
        }
    }
}

/// A store failure (MySQL error, closed pool or the concurrency queue timing out).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreFailure(pub String);

impl From<StoreFailure> for ReadError {
    fn from(e: StoreFailure) -> Self {
        Self::Unavailable(e.0)
    }
}
