//! The dispatch reader: TaskQueryService (GetTask, BatchGetTasks, ListTasks, WatchTask) served
//! from an in-process moka L1, a Redis L2 and MySQL, kept fresh by the events topic; GetWorkflow
//! straight from MySQL.
//!
//! Request path, top to bottom:
//! - [`service`]: the gRPC adapter (auth, parse, call); the server around it (load shedding, RPC
//!   spans and metrics, the request timeout) is `dispatch_runtime::server`'s, assembled in
//!   [`app`].
//! - [`lookup`]: GetTask's lookup path L1 → L2 → MySQL, read-your-writes (`min_version`),
//!   stale answers when MySQL fails, and how events are applied; [`batch`] and [`list`] are
//!   BatchGetTasks and ListTasks; [`watch`] streams WatchTask; [`workflows`] is GetWorkflow.
//! - Tiers: [`l1`] (moka: weighted size bound, per-entry jittered expiry, singleflight loads,
//!   version-checked writes, last-known copies), [`xfetch`] (probabilistic early refresh),
//!   [`l2`] (Redis: protobuf values, Lua compare-and-set on version, negative entries) behind
//!   the Redis breaker (`dispatch_runtime::breaker`), and [`store`] (MySQL behind a concurrency limit).
//! - Freshness: [`events`] consumes the events topic on every instance; [`notify`] fans applied
//!   events out per task id to read-your-writes waiters and watchers.
//! - Plumbing: [`settings`], [`metrics`], [`error`], and [`app`] (`App`: build, run, shutdown,
//!   health probes).

pub mod app;
pub mod batch;
pub mod error;
pub mod events;
pub mod l1;
pub mod l2;
pub mod limits;
pub mod list;
pub mod lookup;
pub mod metrics;
pub mod notify;
pub mod service;
pub mod settings;
pub mod store;
pub mod watch;
pub mod workflows;
pub mod xfetch;

pub use app::{App, ReaderHandle};
pub use settings::Settings;
