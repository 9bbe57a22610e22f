//! The dispatch domain, shared by every service.
//!
//! - [`ids`]: [`TaskId`] (UUIDv7, or a deterministic id derived from an idempotency key).
//! - [`task`]: validated newtypes ([`BusinessKey`], [`TaskType`], [`Payload`], ...) and [`NewTask`].
//! - [`state`]: the [`TaskState`] machine and the version scheme that fences writes.
//! - [`validate`]: "parse, don't validate": proto [`TaskSpec`](dispatch_proto::v1::TaskSpec) into
//!   [`NewTask`], collecting every field violation.
//! - [`envelope`]: [`Envelope`] and its Kafka record codec (protobuf value + headers).
//! - [`topics`]: topic names (with an optional prefix, so tests can share one broker).
//! - [`partition`]: Kafka's Java-compatible murmur2 partitioner.
//! - [`retry`]: exponential backoff with jitter for the retry ladder.
//! - [`schedule`]: schedules' fire times (cron with seconds in a time zone, or an interval),
//!   catch-up after downtime, and the fire ids derived from (schedule, fire time).
//! - [`dead_letter`]: why a task was dead-lettered ([`ErrorClass`]).
//! - [`error`]: field violations and the single mapping to `tonic::Status`.
//! - [`instance`]: this process's `<hostname>:<pid>`, where other processes read who did what.

pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod ids;
pub mod instance;
pub mod partition;
pub mod retry;
pub mod schedule;
pub mod state;
pub mod task;
pub mod time;
pub mod topics;
pub mod validate;
pub mod version;
pub mod workflow;

pub use dead_letter::ErrorClass;
pub use envelope::{AttemptTimeout, Envelope, EnvelopeError, EnvelopeKind, Headers, TimeoutBound};
pub use error::{FieldViolation, Violations};
pub use ids::{TaskId, TaskIdError};
pub use retry::RetryPolicy;
pub use state::{TaskState, Version};
pub use task::{BusinessKey, IdempotencyKey, NewTask, Payload, Priority, TaskType, Tenant};
pub use topics::Topics;
