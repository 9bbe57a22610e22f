//! Gateway integration tests: each test starts its own gateway on port 0 over an isolated
//! `TestEnv` (own database, topic prefix, Redis prefix) on the shared local stack.

mod api;
mod cancel;
mod cancel_outbox;
mod catalogue;
mod cli;
mod conflicts;
mod harness;
mod idempotency;
mod outage;
mod outbox;
mod relay;
mod schedules;
mod submit;
mod tls_readiness;
mod wedge;
mod workflows;
