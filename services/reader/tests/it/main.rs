//! Reader integration tests against the real local stack (Kafka, MariaDB, Redis). Each test gets
//! its own database, topic prefix and Redis key prefix from `dispatch_testkit::TestEnv`, writes
//! the tasks and events it needs itself (as the processor would), and talks gRPC to the app.

mod common;

mod catalogue;
mod cli;
mod degradation;
mod events;
mod invalid;
mod limits;
mod list;
mod lookups;
mod read_your_writes;
mod retention;
mod tenancy;
mod tls_readiness;
mod views;
mod watch;
mod workflows;
