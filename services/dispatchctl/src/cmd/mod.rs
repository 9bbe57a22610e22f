//! One module per command group.

pub mod dlq;
pub mod migrate;
pub mod ops;
pub mod outbox;
pub mod schedule;
pub mod submit;
pub mod tasks;
pub mod topics;
pub mod workflow;
