//! The test images: the names `make images` gives them (one constant each,
//! so that no suite spells an image's name itself), the directory their
//! tarballs are in, and images built at test time with the workspace's
//! `wasm-image-builder` (the library behind `wasm-oci`).

use std::path::{Path, PathBuf};

pub use wasm_image_builder::{Entry, Image};

use crate::environment::workspace;

/// `wasm-test.tar`: the test guests (images/wasitest, images/wat, the
/// attackers of images/escape and images/native) with `PATH=/bin`; its
/// entrypoint is `/wasitest.wasm`.
pub const WASM_TEST: &str = "localhost/wasmtime-shim/wasm-test:latest";
/// `hello.tar`: the demo's hello program.
pub const HELLO: &str = "localhost/wasmtime-shim/hello:latest";
/// `hello-wasi.tar`: the same program as an image of platform wasi/wasm.
pub const HELLO_WASI: &str = "localhost/wasmtime-shim/hello-wasi:latest";
/// `hello-http.tar`: a wasi:http component answering on port 8080.
pub const HELLO_HTTP: &str = "localhost/wasmtime-shim/hello-http:latest";
/// `python-http.tar` (`make bench` only): a wasi:http component with
/// CPython inside.
pub const PYTHON_HTTP: &str = "localhost/wasmtime-shim/python-http:latest";
/// `pause.tar`: a static native `pause`, the pods' sandbox image.
pub const PAUSE: &str = "localhost/wasmtime-shim/pause:latest";

/// Where `make images` puts image tarballs and wasm files.
pub fn images_dir() -> PathBuf {
    workspace().join("target/images")
}

/// Writes `image` to `path` as an OCI layout tarball, which
/// `ctr images import` reads.
pub fn write(image: &Image, path: &Path) {
    image
        .layout()
        .and_then(|layout| layout.write(path))
        .unwrap_or_else(|e| panic!("building {} into {}: {e:#}", image.name, path.display()));
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", sha2::Sha256::digest(bytes))
}
