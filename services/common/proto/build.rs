//! Compiles proto/dispatch/v1/*.proto with tonic-prost-build.
//!
//! The protos are parsed by protox, a pure-Rust protobuf compiler that ships the well-known types
//! (google/protobuf/timestamp.proto and friends), so the build needs no system protoc and no
//! include directory: `cargo build` works on any machine with a Rust toolchain.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../proto");
    let files = [
        "task", "workflow", "gateway", "query", "events", "admin", "schedule",
    ]
    .map(|name| root.join(format!("dispatch/v1/{name}.proto")));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(&files, [&root])?;
    std::fs::write(
        out_dir.join("dispatch_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
