//! The runtime's integration tests, one binary. `logs.rs` stays a binary of its own: it installs
//! the process-wide tracing subscriber.

mod ratelimit;
mod tls_failures;
