//! Generated code for the `dispatch.v1` protobuf package (proto/dispatch/v1), and the encoded
//! file descriptor set that gRPC server reflection serves, and conversions that only fill in
//! fields. Nothing else lives here: domain logic is in `dispatch-core`.

#![allow(clippy::all, missing_docs)]

/// The `dispatch.v1` package: messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("dispatch.v1");
}

/// Encoded `FileDescriptorSet` of every dispatch proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dispatch_descriptor");

pub use prost_types::Timestamp;

/// A dependency on the node named `name`, with the default failure policy (`on_failure` unset).
impl From<&str> for v1::WorkflowDependency {
    fn from(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            on_failure: 0,
        }
    }
}
