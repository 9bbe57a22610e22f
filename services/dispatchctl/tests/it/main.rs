//! dispatchctl against the real services (in-process, on the local stack), driven through its
//! binary: output snapshots, bulk submit counts, exit codes, task views.

mod bulk;
mod exit_codes;
mod harness;
mod help;
mod outbox;
mod schedule;
mod snapshots;
mod stats;
mod tls;
mod view;
mod workflow;
