//! Integration tests of the processor against the real local stack (one binary).

mod admin;
mod cancel;
mod control;
mod crash;
mod failures;
mod flow;
mod harness;
mod pauses;
mod scheduling;
