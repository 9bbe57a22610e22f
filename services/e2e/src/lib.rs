//! dispatch's cross-service tests: gateway, processor and reader in one process on the local
//! stack, driven as clients drive them (flows, security, TLS, tracing, limits, workflows).
//!
//! The harness they use is the one every crate's tests use: [`dispatch_testkit::stack`] (the
//! services, [`dispatch_testkit::stack::Stack`]) and [`dispatch_testkit::auth`] (the keys). The
//! tests themselves live in `tests/it/` (one binary) and `tests/logs.rs` (its own binary,
//! because it owns the process-wide log subscriber).
