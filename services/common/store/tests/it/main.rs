//! The store's integration tests against the local stack's MariaDB, one binary (each test binary
//! is a link of the whole dependency graph: about 10 s of a cold test build).

mod idempotency_case;
mod outbox_purge;
mod retention;
mod retry_waits;
mod workflows;
