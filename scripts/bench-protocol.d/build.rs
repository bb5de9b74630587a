//! Generates the protobuf messages and the ttrpc client and server of proto/agent.proto,
//! in pure Rust: ttrpc-codegen parses the .proto itself, no `protoc` needed.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .run()?;
    // Our own mod.rs: the generated one opens with an inner attribute, which `include!`
    // refuses.
    std::fs::write(out.join("mod.rs"), "pub mod agent;\npub mod agent_ttrpc;\n")
}
