//! The dispatch gateway: durable, idempotent, rate-limited task submission over gRPC
//! (`dispatch.v1.TaskService`).
//!
//! # Map
//! - [`settings`]: `Settings` (shared runtime sections + `[limits]`, `[outbox]`, `[idempotency]`,
//!   `[cancel]`, `[health]`).
//! - [`app`]: [`App`]: build, the one place the gRPC server is assembled, ordered shutdown.
//! - [`service`]: TaskService handlers, thin adapters (auth, rate limit, parse) into [`tasks`].
//! - [`tasks`]: the task domain: submit, submit many, cancel.
//! - [`idempotency`]: one key, one task, same parameters: Redis SET NX fast path, the key's
//!   [`fingerprint`] bound in MySQL, the store as fallback.
//! - [`durable`]: Kafka-or-outbox, with sticky routing that keeps per-key order.
//! - [`producer`]: the idempotent producer, its circuit breaker and produce timeout.
//! - [`relay`]: the outbox relay (leader by MySQL named lock) and the sticky-routing watcher.
//! - [`limits`]: per-tenant and global token buckets. (The in-flight bound is the runtime's,
//!   `dispatch_runtime::server::layer`; the gateway also counts what it sheds in
//!   `dispatch_load_shed_total`.)
//! - [`probe`]: dependency probes behind gRPC health and `/readyz`.
//! - [`recent`]: recent submits, so a cancel can route before the task is stored.
//! - [`schedules`]: ScheduleService: a tenant's schedules (the processors fire them).
//! - [`workflows`]: SubmitWorkflow and CancelWorkflow: a workflow's graph and node specs
//!   validated, then stored in one MySQL transaction (no Kafka: the processor releases nodes).
//! - [`metrics`], [`error`]: the metric catalogue (circuit breakers: `dispatch_runtime::breaker`), the one
//!   error-to-status mapping.
//!
//! # A submit, step by step
//! 1. Authenticate (bearer API key -> tenant), rate-limit (tenant bucket, then global; a batch
//!    costs one token per item; RESOURCE_EXHAUSTED with `retry-after-ms`), validate into a
//!    `NewTask` (INVALID_ARGUMENT with BadRequest field violations).
//! 2. Idempotency: a task id derived from (tenant, idempotency key); Redis `SET NX` answers
//!    duplicates without a second Kafka write; without Redis, MySQL (`tasks`, outbox) is asked;
//!    if neither knows, the record is produced and the processor dedupes it by task id.
//! 3. Durability: produce (key = business key, murmur2 partitioner, value = envelope, headers =
//!    envelope headers + W3C trace context) and answer only after the delivery report. When the
//!    Kafka breaker is open, or the produce fails or times out, write the record to the MySQL
//!    outbox and answer `accepted_via = OUTBOX`. Both failing => UNAVAILABLE; never OK without
//!    durability.
//! 4. Order: once the outbox holds anything, submits stay on the outbox until the relay has
//!    drained it (see [`durable`]); the relay never lets a key overtake its own older rows.
//!
//! # Overload and deadlines
//! The server honours `grpc-timeout` (capped by `grpc.request_timeout_ms`); a request over the
//! in-flight bound is answered UNAVAILABLE at once (`dispatch_runtime::server::layer`). Handlers
//! run the domain call on their own task, so a client that gives up cannot leave a submit half
//! done.
//!
//! # Cancel
//! A cancel record goes to the task's own partition (its business key and priority, from the
//! store, this instance's recent submits, the task's idempotency key row, its outbox row, or the
//! caller's `business_key`), so it is ordered after the submit, and takes the submit's route:
//! Kafka, or the outbox while Kafka is unavailable or the outbox holds records. Another tenant's
//! task is NOT_FOUND, like an unknown one.

pub mod app;
pub mod durable;
pub mod error;
pub mod fingerprint;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod probe;
pub mod producer;
pub mod recent;
pub mod relay;
pub mod schedules;
pub mod service;
pub mod settings;
mod sticky;
pub mod tasks;
pub mod workflows;

pub use app::App;
pub use error::GatewayError;
pub use settings::Settings;
