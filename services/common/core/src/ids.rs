//! Task identifiers.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A task's identity: a UUIDv7 (time-ordered, so inserts into the clustered primary key stay
/// local), or, when the client sends an idempotency key, a UUIDv8 derived from
/// `(tenant, idempotency key)` so that every gateway instance computes the same id without
/// coordination: the store's primary key then makes a duplicate submit collapse into one task
/// even when Redis (the fast dedupe path) is down.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

/// A string that is not a task id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a task id (expected a UUID such as 01890a5d-ac96-774b-bcce-b302099a8057)")]
pub struct TaskIdError;

impl TaskId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The deterministic id of `(tenant, idempotency_key)`.
    pub fn from_idempotency_key(tenant: &str, idempotency_key: &str) -> Self {
        Self::derived(
            b"dispatch.v1/idempotency\0",
            tenant.as_bytes(),
            idempotency_key,
        )
    }

    /// The deterministic id of a workflow submitted with `(tenant, idempotency_key)`; another
    /// namespace than [`TaskId::from_idempotency_key`], so the two never meet.
    pub fn workflow_from_idempotency_key(tenant: &str, idempotency_key: &str) -> Self {
        Self::derived(
            b"dispatch.v1/workflow\0",
            tenant.as_bytes(),
            idempotency_key,
        )
    }

    /// The deterministic id of the node `name` of workflow `workflow`: a repeated submit of one
    /// workflow writes the same node rows, which its primary keys then collapse.
    pub fn workflow_node(workflow: TaskId, name: &str) -> Self {
        Self::derived(b"dispatch.v1/workflow-node\0", workflow.as_bytes(), name)
    }

    fn derived(namespace: &[u8], owner: &[u8], name: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(namespace);
        hasher.update(owner);
        hasher.update([0u8]);
        hasher.update(name.as_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// Parses the canonical text form.
    ///
    /// # Errors
    /// [`TaskIdError`] when `s` is not a UUID.
    pub fn parse(s: &str) -> Result<Self, TaskIdError> {
        Uuid::try_parse(s.trim()).map(Self).map_err(|_| TaskIdError)
    }

    /// From the 16 bytes stored in MySQL (`BINARY(16)`).
    ///
    /// # Errors
    /// [`TaskIdError`] when the slice is not 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TaskIdError> {
        Uuid::from_slice(bytes).map(Self).map_err(|_| TaskIdError)
    }

    /// The 16 bytes stored in MySQL.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The underlying UUID.
    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for TaskId {
    type Err = TaskIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_v7_and_time_ordered() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert_eq!(a.uuid().get_version_num(), 7);
        assert!(a < b, "v7 ids must sort by creation");
    }

    #[test]
    fn workflow_ids_are_deterministic_and_apart_from_task_ids() {
        let w = TaskId::workflow_from_idempotency_key("acme", "nightly-1");
        assert_eq!(
            w,
            TaskId::workflow_from_idempotency_key("acme", "nightly-1")
        );
        assert_ne!(w, TaskId::from_idempotency_key("acme", "nightly-1"));
        assert_ne!(
            w,
            TaskId::workflow_from_idempotency_key("globex", "nightly-1")
        );
        let n = TaskId::workflow_node(w, "extract");
        assert_eq!(n, TaskId::workflow_node(w, "extract"));
        assert_ne!(n, TaskId::workflow_node(w, "load"));
        assert_ne!(n, TaskId::workflow_node(TaskId::new(), "extract"));
    }

    #[test]
    fn idempotent_ids_are_deterministic_and_tenant_scoped() {
        let a = TaskId::from_idempotency_key("acme", "order-1");
        assert_eq!(a, TaskId::from_idempotency_key("acme", "order-1"));
        assert_ne!(a, TaskId::from_idempotency_key("globex", "order-1"));
        assert_ne!(a, TaskId::from_idempotency_key("acme", "order-2"));
        // No ambiguity from concatenation.
        assert_ne!(
            TaskId::from_idempotency_key("ab", "c"),
            TaskId::from_idempotency_key("a", "bc")
        );
        assert_eq!(a.uuid().get_version_num(), 8);
    }

    #[test]
    fn round_trips_text_and_bytes() {
        let id = TaskId::new();
        assert_eq!(TaskId::parse(&id.to_string()), Ok(id));
        assert_eq!(TaskId::from_slice(id.as_bytes()), Ok(id));
        assert_eq!(TaskId::parse("nope"), Err(TaskIdError));
        assert_eq!(TaskId::from_slice(&[1, 2, 3]), Err(TaskIdError));
    }
}
