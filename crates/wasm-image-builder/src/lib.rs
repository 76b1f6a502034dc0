//! OCI image layouts that `ctr images import` reads, built in memory.
//!
//! The library behind the `wasm-oci` tool (src/main.rs, which `make images`
//! runs), and what the end-to-end tests (test/) use to build images at test
//! time, such as one holding symlinks or a stand-in for an upstream image,
//! without shelling out to `tar` and `sha256sum`. Output is byte-for-byte
//! reproducible.

pub mod layout;

use anyhow::{bail, Result};
use serde_json::json;

pub use layout::{layer_tar, unpack, Blob, Entry, ImageLayout};

/// "wasm in a scratch image" (or any files in one): `entries` in one tar
/// layer, the entrypoint and environment in the image config.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image's reference, `localhost/x/y:tag`.
    pub name: String,
    /// `(os, architecture)`: `("linux", "amd64")`, or `("wasi", "wasm")` as
    /// `docker buildx --platform wasi/wasm` publishes.
    pub platform: (String, String),
    pub entrypoint: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    pub entries: Vec<Entry>,
}

impl Image {
    /// An image of platform linux/amd64 with no entrypoint, environment or
    /// files yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            platform: ("linux".into(), "amd64".into()),
            entrypoint: Vec::new(),
            env: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// The image's layout: its layer, config and manifest.
    pub fn layout(&self) -> Result<ImageLayout> {
        if self.entries.is_empty() {
            bail!("an image needs at least one file");
        }
        let (os, arch) = (&self.platform.0, &self.platform.1);
        let layer = Blob::new(
            "application/vnd.oci.image.layer.v1.tar",
            layer_tar(&self.entries)?,
        );
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {
                "Entrypoint": self.entrypoint,
                "Env": self.env,
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [layer.digest()] },
        });
        let config = Blob::json("application/vnd.oci.image.config.v1+json", &config)?;
        Ok(ImageLayout::new(
            self.name.clone(),
            config,
            vec![layer],
            Some((os, arch)),
        ))
    }
}

/// The CNCF TAG-Runtime wasm OCI artifact: config
/// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer.
pub fn artifact(name: &str, wasm: Vec<u8>) -> Result<ImageLayout> {
    let layer = Blob::new("application/wasm", wasm);
    let config = json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer.digest()],
    });
    let config = Blob::json("application/vnd.wasm.config.v0+json", &config)?;
    Ok(ImageLayout::new(
        name.to_string(),
        config,
        vec![layer],
        None,
    ))
}
