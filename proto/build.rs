//! Generates the gRPC code and the file descriptor set used for reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "upshift/graph/v1/graph.proto",
    "upshift/policy/v1/policy.proto",
    "upshift/lock/v1/lock.proto",
    "upshift/telemetry/v1/telemetry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // An explicit PROTOC wins; otherwise the vendored binary, so a machine
    // with only Rust can build.
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let well_known = protoc_bin_vendored::include_path()?;
    let well_known = well_known.to_str().ok_or("non-UTF-8 protoc include path")?;
    let includes = [".", well_known];

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::CompactCodec")
        .file_descriptor_set_path(out_dir.join("upshift_descriptor.bin"))
        .compile_with_config(config, PROTOS, &includes)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
