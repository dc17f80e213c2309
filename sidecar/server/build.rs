//! Generates the KServe v2 / Triton gRPC messages and service from
//! `proto/*.proto` (see `src/grpc/`). The files are compiled by protox, a
//! protobuf compiler in Rust, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: [&str; 2] = ["proto/grpc_service.proto", "proto/model_config.proto"];
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
