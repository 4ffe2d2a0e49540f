//! Compiles `attune/**/*.proto` into Rust with protox (pure Rust, so no system `protoc` is needed)
//! and writes the encoded descriptor set that gRPC server reflection serves.

use std::{env, fs, path::PathBuf};

const PROTO_ROOT: &str = ".";
const PROTO_FILES: &[&str] = &["attune/packs/v1/packs.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=attune");
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("attune_packs_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // serde on the API types lets the REST gateway and the CLI's --json speak the
        // same field names as gRPC; `default` makes absent JSON fields take proto defaults.
        .message_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
