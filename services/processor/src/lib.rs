//! dispatch-processor: consumes task records and drives every task to exactly one terminal state.
//!
//! At-least-once consumption, effectively-once state: a record's offset is stored only after
//! its effects (state row, retry or DLQ record, event) are durable, and every state write is fenced
//! by a version computed from what happened (`dispatch_core::state`), so replays, duplicates and
//! zombies never move a task backwards or re-run a task whose terminal state is committed.
//!
//! Map (a record's path through the crate, top to bottom):
//! - [`settings`]: `Settings` (`[consumer]`, `[writer]`, `[scheduler]`, `[workflows]`,
//!   `[handlers]`, `[retention]`, `[health]` + shared).
//! - [`consumer`]: a `BaseConsumer` polled on its own thread; offset tracking with contiguous
//!   watermarks ([`consumer::offsets`]), rebalance handling ([`consumer::context`]), pauses for
//!   backpressure, operator pauses and retry delays ([`consumer::poller`]).
//! - [`lanes`]: dispatch into per-key lanes: same key in offset order, different keys in parallel.
//! - [`slots`]: the `consumer.max_concurrency` execution slots, asked for only when a record is
//!   ready to run and granted by priority weight (6/3/1 by default), then round-robin across
//!   tenants; it acts exactly when there is a backlog and leaves pausing to backpressure.
//! - [`process`]: one record: gate, schedule, run the handler, retry/DLQ, cancel, poison.
//! - [`gate`]: batched `(state, version)` lookups that skip replays and finished tasks.
//! - [`handler`]: the [`Handler`] trait, the registry and the built-ins (`noop`, `simulate`, `http`).
//! - [`writer`]: the batch writer (coalesced, fenced, one transaction per batch, then events).
//! - [`produce`]: the producer wrapper (retry, DLQ, events, scheduler records).
//! - [`schedules`]: the schedule loop: fires due schedules as `scheduled` tasks.
//! - [`scheduler`]: publishes due `scheduled` tasks (`FOR UPDATE SKIP LOCKED`).
//! - [`workflows`]: the workflow advancer: releases WAITING nodes once their dependencies
//!   finish, cancels them when one fails or the workflow is cancelled.
//! - [`retention`]: the leader's purge of finished tasks after each tenant's retention.
//! - [`control`]: [`Control`], the pause/resume/stats hooks for AdminService.
//! - [`admin`]: AdminService (DLQ list/inspect/purge/redrive, pause/resume, stats), admin key only.
//! - [`lag`]: consumer lag gauges.
//! - [`metrics`]: the metric catalogue's processor section, each metric recorded through one
//!   function.
//! - [`readiness`]: readiness (`/readyz`, gRPC health) from run-time TLS failures of MySQL and
//!   Kafka.
//! - `pipeline`: the consumption pipeline (writer, gate, processor, dispatcher, poll thread,
//!   background loops) with its start order and the processor's shutdown order.
//! - here: [`App`] (build, run) and [`AppBuilder`] (custom handlers).

pub mod admin;
pub mod coalesce;
pub mod consumer;
pub mod control;
pub mod gate;
pub mod handler;
pub mod lag;
pub mod lanes;
pub mod metrics;
pub mod process;
pub mod produce;
pub mod readiness;
pub mod retention;
pub mod scheduler;
pub mod schedules;
pub mod settings;
pub mod slots;
pub mod stall;
pub mod workflows;
pub mod writer;

mod app;
mod pipeline;

pub use app::{App, AppBuilder};
pub use control::{Control, Paused, Stats, Target};
pub use handler::{Handler, HandlerContext, HandlerError, Outcome};
pub use settings::Settings;
