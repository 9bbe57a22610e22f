//! The gRPC names other crates have always imported from here; the code lives in
//! [`crate::server`] ([`auth`](crate::server::auth), [`metrics`](crate::server::metrics), the
//! server skeleton).

pub use crate::server::auth::*;
pub use crate::server::metrics::{code_name, init_rpc_metrics};
pub use crate::server::{incoming, reflection_services};
