//! Generates the Raft transport's gRPC code with a protoc bundled as a crate, so a fresh machine
//! builds with nothing installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/raft.proto"], &["proto"])?;
    Ok(())
}
