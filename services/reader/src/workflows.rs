//! GetWorkflow: a workflow and its nodes' states, read straight from MySQL on every call (no L1,
//! no L2: the view joins several tables and changes with every node's state, which the events
//! topic does not describe as a whole).
//!
//! Ownership is checked on the answer: another tenant's workflow is reported exactly like a
//! missing one.

use dispatch_core::{TaskId, Tenant};
use dispatch_proto::v1 as pb;

use crate::error::ReadError;
use crate::lookup::Reader;

impl Reader {
    /// The workflow `id` of `tenant`.
    ///
    /// # Errors
    /// WorkflowNotFound (missing or another tenant's), Unavailable (MySQL failed or a stored row
    /// does not decode).
    pub async fn workflow(&self, tenant: &Tenant, id: TaskId) -> Result<pb::Workflow, ReadError> {
        match self.store.workflow(id).await? {
            Some(w) if w.tenant == tenant.as_str() => Ok(w),
            _ => Err(ReadError::WorkflowNotFound),
        }
    }
}
