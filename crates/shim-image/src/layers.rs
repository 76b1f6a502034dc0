//! Wasm carried as an image layer rather than as a file of the root.
//!
//! Users publish wasm in three shapes: a file in an ordinary (scratch) image
//! layer, which containerd unpacks and the entrypoint names; the CNCF wasm OCI
//! artifact (config `application/vnd.wasm.config.v0+json`, one
//! `application/wasm` layer, as `wkg` and `oras` push it); and the older
//! `application/vnd.wasm.content.layer.v1+wasm` and
//! `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` layers.
//! containerd does not unpack the last two kinds (they are not tar layers), so
//! the container's root comes up empty and the shim takes the wasm from the
//! image's manifest. This module decides which layer that is; fetching it
//! from containerd's content store is the shim's business.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

/// The layer media types that hold one wasm binary (module or component).
pub const WASM_LAYER_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// The annotation naming a layer's file (oras and wkg set it).
const TITLE: &str = "org.opencontainers.image.title";

/// Manifests and indexes bigger than this are not manifests.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerError {
    #[error("image {image}: its manifest cannot be read: {reason}")]
    BadManifest { image: String, reason: String },
    #[error(
        "image {image} has no wasm layer (its layers are {found}) and the container's root is \
         empty: nothing to run"
    )]
    NoWasmLayer { image: String, found: String },
    #[error(
        "image {image} has {count} wasm layers ({digests}): the shim runs exactly one, and which \
         one is ambiguous"
    )]
    ManyWasmLayers {
        image: String,
        count: usize,
        digests: String,
    },
    #[error("image {image}: its index lists no manifest for wasm or for this node's platform")]
    NoManifest { image: String },
}

/// Whether a descriptor's media type is an index (OCI or Docker's manifest list).
pub fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.index.v1+json"
            | "application/vnd.docker.distribution.manifest.list.v2+json"
    )
}

/// The manifests of an index in the order to try them: those for wasm
/// (architecture `wasm`, or OS `wasi*`) first, then this node's platform,
/// then (for an index of one) the only entry.
pub fn manifest_candidates(image: &str, index: &[u8]) -> Result<Vec<Descriptor>, LayerError> {
    let index: ImageIndex = serde_json::from_slice(index).map_err(|e| LayerError::BadManifest {
        image: image.to_string(),
        reason: e.to_string(),
    })?;
    let manifests = index.manifests();
    let rank = |d: &Descriptor| {
        let Some(platform) = d.platform() else {
            return if manifests.len() == 1 { Some(2) } else { None };
        };
        let arch = platform.architecture().to_string();
        let os = platform.os().to_string();
        if arch == "wasm" || os.starts_with("wasi") {
            Some(0)
        } else if os == "linux" && arch == std::env::consts::ARCH.replace("x86_64", "amd64") {
            Some(1)
        } else if manifests.len() == 1 {
            Some(2)
        } else {
            None
        }
    };
    let mut ranked: Vec<_> = manifests
        .iter()
        .filter_map(|d| rank(d).map(|r| (r, d.clone())))
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    if ranked.is_empty() {
        return Err(LayerError::NoManifest {
            image: image.to_string(),
        });
    }
    Ok(ranked.into_iter().map(|(_, d)| d).collect())
}

/// The one wasm layer of an image manifest.
pub fn wasm_layer(image: &str, manifest: &[u8]) -> Result<WasmLayer, LayerError> {
    let manifest: ImageManifest =
        serde_json::from_slice(manifest).map_err(|e| LayerError::BadManifest {
            image: image.to_string(),
            reason: e.to_string(),
        })?;
    let media_type = |d: &Descriptor| match d.media_type() {
        MediaType::Other(other) => other.clone(),
        known => known.to_string(),
    };
    let wasm: Vec<&Descriptor> = manifest
        .layers()
        .iter()
        .filter(|d| WASM_LAYER_TYPES.contains(&media_type(d).as_str()))
        .collect();
    match wasm[..] {
        [layer] => Ok(WasmLayer {
            digest: layer.digest().to_string(),
            size: layer.size(),
            media_type: media_type(layer),
            name: layer
                .annotations()
                .as_ref()
                .and_then(|a| a.get(TITLE))
                .filter(|t| !t.is_empty() && !t.contains('/'))
                .cloned()
                .unwrap_or_else(|| default_name(image)),
        }),
        [] => {
            let found: Vec<String> = manifest.layers().iter().map(media_type).collect();
            Err(LayerError::NoWasmLayer {
                image: image.to_string(),
                found: if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                },
            })
        }
        _ => Err(LayerError::ManyWasmLayers {
            image: image.to_string(),
            count: wasm.len(),
            digests: wasm
                .iter()
                .map(|d| d.digest().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A wasm layer of an image, as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmLayer {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// The guest's `argv[0]` when the container names no command: the layer's
    /// title annotation, else the image's repository name + `.wasm`.
    pub name: String,
}

/// `registry/ns/hello:v1` → `hello.wasm`.
fn default_name(image: &str) -> String {
    let path = image.split('@').next().unwrap_or(image);
    let last = path.rsplit('/').next().unwrap_or(path);
    let repository = match last.rsplit_once(':') {
        Some((name, _tag)) => name,
        None => last,
    };
    format!("{repository}.wasm")
}

/// Whether `digest` is a SHA-256 digest as containerd writes it, so it can
/// name a file without any escaping.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}
