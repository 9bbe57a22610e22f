//! dispatchctl against the real services (in-process, on the local stack), driven through its
//! binary: output snapshots, bulk submit counts, exit codes.

mod bulk;
mod exit_codes;
mod harness;
mod help;
mod outbox;
mod schedule;
mod snapshots;
mod stats;
mod tls;
