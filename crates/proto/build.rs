//! Generates the gRPC code from `proto/weir.proto`. `protoc` comes from the vendored crate
//! unless `PROTOC` names another one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    // Read when the script runs, not when it is compiled: one compiled build script may serve
    // several checkouts that share a target directory.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let file = proto_dir.join("weir.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure().compile_protos(&[file], &[proto_dir])?;
    Ok(())
}
