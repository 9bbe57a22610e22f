//! Load shedding: a global bound on requests in flight (`grpc.max_concurrent_requests`). A request
//! over the bound is answered UNAVAILABLE at once (never queued), so overload turns into fast
//! rejections the client can retry with backoff rather than a latency cliff; health and
//! reflection are exempt, so probes keep working under overload.
//!
//! The bound is the one every dispatch server has: `dispatch_runtime::server::layer` (the
//! reasons it is not tonic's `load_shed` + `concurrency_limit_per_connection` are there). The
//! gateway also counts what it sheds in `dispatch_load_shed_total` ([`crate::app::GRPC`],
//! [`crate::metrics::load_shed`]).

pub use dispatch_runtime::server::layer::{RpcLayer, SHED_MESSAGE};
