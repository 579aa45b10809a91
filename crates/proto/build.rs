//! Generates the prost messages from `proto/syncnode.proto` with protox, so no system `protoc`
//! is needed. Every `bytes` field becomes `bytes::Bytes`, so decoding a frame copies no payload.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/syncnode.proto");
    let descriptors = protox::compile(["syncnode.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
