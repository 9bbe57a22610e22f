//! Compiles proto/dispatch/v1/*.proto with tonic-prost-build.
//!
//! protoc comes from `PROTOC` when set, else from PATH (Debian's protobuf-compiler, installed by
//! deploy/local/stack.sh install).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../proto");
    let files = ["task", "gateway", "query", "events", "admin"]
        .map(|name| root.join(format!("dispatch/v1/{name}.proto")));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("dispatch_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
