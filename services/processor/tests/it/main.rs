//! Integration tests of the processor against the real local stack (one binary).

mod admin;
mod admin_harness;
mod cancel;
mod control;
mod crash;
mod failures;
mod flow;
mod hostile;
mod harness;
mod outbox_admin;
mod pauses;
mod scheduling;
