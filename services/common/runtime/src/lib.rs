//! Service plumbing shared by every dispatch binary.
//!
//! - [`settings`]: layered typed settings (defaults < TOML file < `DISPATCH_SECTION__KEY` env) that
//!   reject unknown keys, and the sections every service shares.
//! - [`cli`]: the flags every service binary takes (`--config`, `--print-config`, `--help`,
//!   `--version`).
//! - [`telemetry`]: JSON logs through `tracing` and, when an endpoint is set, OTLP traces with a
//!   parent-based ratio sampler; W3C context propagation helpers for gRPC metadata and Kafka headers.
//! - [`metrics`]: the process-wide Prometheus registry.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`) and [`admin::Health`].
//! - [`shutdown`]: the root [`shutdown::Shutdown`] (CancellationToken + TaskTracker) and signals.
//! - [`kafka`]: rdkafka producer/consumer configs and idempotent topic bootstrap.
//! - [`redis_client`]: Redis connection manager (`rediss://` with a CA).
//! - [`tls`]: certificate files checked at start-up, the dependencies' TLS/SASL start-up check,
//!   and the gRPC server's TLS with certificates reloaded on change.
//! - [`server`]: the gRPC server skeleton (TLS, accept with `TCP_NODELAY`, health, reflection,
//!   HTTP/2 limits), its per-request layer (load shedding, RPC spans, metrics, timeout), the
//!   store-error-to-status rule and API-key authentication.
//! - [`breaker`]: the circuit breaker every service uses, with its metric.
//! - [`retry`]: jittered exponential retries of what must eventually succeed.
//! - [`tls_failures`]: run-time TLS and authentication failures of the dependencies, counted
//!   (`dispatch_tls_errors_total`) and turned into readiness.

pub mod admin;
pub mod breaker;
pub mod cli;
pub mod kafka;
pub mod metrics;
pub mod producer;
pub mod ratelimit;
pub mod redis_client;
pub mod retry;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod tls_failures;

pub use settings::{SettingsError, load};
pub use shutdown::Shutdown;
