//! Integration tests of the processor against the real local stack (one binary).

mod admin;
mod admin_harness;
mod cancel;
mod catalogue;
mod cli;
mod control;
mod crash;
mod failures;
mod flow;
mod frozen;
mod harness;
mod hostile;
mod outbox_admin;
mod pauses;
mod priorities;
mod retention;
mod schedules;
mod scheduling;
mod timeouts;
mod tls_readiness;
mod wedge;
mod workflows;
mod writer;
