//! Compiles every contract under this folder with protox (no system protoc),
//! generates the Rust types and gRPC stubs, and keeps the encoded descriptor set
//! for server reflection and for the edge's route table.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "rentalbook/book/v1/book.proto",
    "rentalbook/reserve/v1/reserve.proto",
    "rentalbook/rental/v1/rental.proto",
    "rentalbook/view/v1/view.proto",
    "rentalbook/notice/v1/notice.proto",
    "rentalbook/events/v1/events.proto",
    "rentalbook/errors/v1/errors.proto",
    "rentalbook/api/v1/field.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=rentalbook");
    println!("cargo:rerun-if-changed=google");

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    // protox's own encoding keeps custom options such as google.api.http,
    // which prost-types' messages would drop.
    std::fs::write(
        out.join("rentalbook_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
