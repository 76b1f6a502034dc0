//! The wasm of an image that containerd could not unpack into the root (a wasm
//! OCI artifact, or an older wasm layer type: see `shim_image::layers`),
//! taken from containerd's content store through its API.
//!
//! Only a container whose root is empty is looked up, so an ordinary image
//! costs one `readdir` and no call to containerd. The layer is kept once per
//! node in the wasm-layer store, a `shim_engine::store::Store` beside the
//! code cache, and checked against its digest every time it is reused
//! (docs/images.md, "How a wasm layer runs"; docs/architecture.md,
//! "Node-local state").

use std::fs;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::with_namespace;
use shim_container::request::sha256_digest;
use shim_container::rootfs::RootfsMount;
use shim_container::LayerFile;
use shim_engine::store::Store;
use shim_engine::NodeConfig;
use shim_image::layers::{self, LayerError, MAX_MANIFEST_BYTES};
use tonic::Request;

/// containerd's API, as the shim was told to reach it (`-address`, `-namespace`).
#[derive(Debug, Clone)]
pub struct ContainerdApi {
    pub address: String,
    pub namespace: String,
}

/// Whether the container's root will be empty: no rootfs mounts and an empty
/// root directory (the spec's, `shim_container::Bundle::root`), or a single
/// bind mount of an empty directory (what the overlayfs and native
/// snapshotters give for an image with no tar layers).
pub fn root_is_empty(root: &Path, rootfs: &[RootfsMount]) -> bool {
    let empty = |dir: &Path| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    match rootfs {
        [] => empty(root),
        [mount] if mount.kind == "bind" || mount.options.iter().any(|o| o.ends_with("bind")) => {
            empty(Path::new(&mount.source))
        }
        _ => false,
    }
}

impl ContainerdApi {
    /// The wasm layer of container `id`'s image, stored under `store`.
    pub fn wasm_layer(&self, id: &str, store: &Path) -> Result<LayerFile, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an I/O runtime: {e}"))?;
        runtime.block_on(self.fetch(id, store))
    }

    async fn fetch(&self, id: &str, store: &Path) -> Result<LayerFile, String> {
        let path = self
            .address
            .strip_prefix("unix://")
            .unwrap_or(&self.address);
        let channel = containerd_client::connect(path)
            .await
            .map_err(|e| format!("cannot reach containerd at {path}: {e}"))?;
        let ns = self.namespace.as_str();
        let container = ContainersClient::new(channel.clone())
            .get(with_namespace!(GetContainerRequest { id: id.into() }, ns))
            .await
            .map_err(|e| {
                format!(
                    "cannot look the container up in containerd: {}",
                    e.message()
                )
            })?
            .into_inner()
            .container
            .unwrap_or_default();
        let image = container.image;
        if image.is_empty() {
            return Err(
                "the container's root is empty and it has no image to take wasm from".to_string(),
            );
        }
        let target = ImagesClient::new(channel.clone())
            .get(with_namespace!(
                GetImageRequest {
                    name: image.clone()
                },
                ns
            ))
            .await
            .map_err(|e| format!("image {image}: {}", e.message()))?
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| format!("image {image}: containerd has no target for it"))?;
        let content = ContentClient::new(channel);
        let read = |digest: String, limit: usize| {
            let image = image.clone();
            let mut client = content.clone();
            let request = with_namespace!(
                ReadContentRequest {
                    digest: digest.clone(),
                    offset: 0,
                    size: 0
                },
                ns
            );
            async move {
                let mut stream = client
                    .read(request)
                    .await
                    .map_err(|e| format!("image {image}: cannot read {digest}: {}", e.message()))?
                    .into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream
                    .message()
                    .await
                    .map_err(|e| format!("image {image}: cannot read {digest}: {}", e.message()))?
                {
                    bytes.extend_from_slice(&chunk.data);
                    if bytes.len() > limit {
                        return Err(format!("image {image}: {digest} is over {limit} bytes"));
                    }
                }
                Ok(bytes)
            }
        };
        let manifest = if layers::is_index(&target.media_type) {
            let index = read(target.digest.clone(), MAX_MANIFEST_BYTES).await?;
            let mut found = None;
            for candidate in layers::manifest_candidates(&image, &index).map_err(text)? {
                // containerd fetched only the platforms it pulled.
                if let Ok(bytes) = read(candidate.digest().to_string(), MAX_MANIFEST_BYTES).await {
                    found = Some(bytes);
                    break;
                }
            }
            found.ok_or_else(|| {
                text(LayerError::NoManifest {
                    image: image.clone(),
                })
            })?
        } else {
            read(target.digest.clone(), MAX_MANIFEST_BYTES).await?
        };
        let layer = layers::wasm_layer(&image, &manifest).map_err(text)?;
        if !layers::is_sha256_digest(&layer.digest) {
            return Err(format!(
                "image {image}: wasm layer digest {} is not a sha256 digest",
                layer.digest
            ));
        }
        let name = format!("{}.wasm", layer.digest.replace(':', "-"));
        let store = Store::open(store, NodeConfig::get().limit, "layer store")
            .map_err(|e| format!("image {image}: cannot open the wasm-layer store: {e}"))?;
        if !is_stored(&store, &name, layer.size, &layer.digest) {
            let limit = usize::try_from(layer.size).unwrap_or(usize::MAX);
            let bytes = read(layer.digest.clone(), limit).await?;
            save(&store, &name, &layer.digest, &bytes)
                .map_err(|e| format!("image {image}: cannot store its wasm layer: {e}"))?;
            log::info!(
                "image {image}: wasm layer {} ({}, {} bytes) stored at {}",
                layer.digest,
                layer.media_type,
                bytes.len(),
                store.path().join(&name).display()
            );
            store.evict(&name);
        }
        Ok(LayerFile {
            path: store.path().join(&name),
            shown: format!("{image} ({} layer {})", layer.media_type, layer.digest),
            name: layer.name,
            digest: Some(layer.digest),
        })
    }
}

fn text(e: LayerError) -> String {
    e.to_string()
}

/// A stored layer is used when it is the store's to hand out (the shim's
/// own, whole) and still its digest's content, and is then marked used; one
/// changed since it was stored, or not the shim's, is fetched again over it.
/// (The create helper checks the digest once more as it copies the layer
/// for the container.)
fn is_stored(store: &Store, name: &str, size: u64, digest: &str) -> bool {
    let shown = || store.path().join(name).display().to_string();
    let file = match store.open_file(name) {
        Ok(Some(file)) => file,
        Ok(None) => return false,
        Err(e) => {
            log::warn!("the stored wasm layer {}: {e}; fetching it again", shown());
            return false;
        }
    };
    if file.metadata().map_or(true, |m| m.len() != size) {
        return false;
    }
    match sha256_digest(&file) {
        Ok(found) if found == digest => {
            store.touch(&file);
            true
        }
        Ok(found) => {
            log::warn!(
                "the stored wasm layer {} is {found}, not {digest}: fetching it again",
                shown()
            );
            false
        }
        Err(_) => false,
    }
}

/// Verifies `bytes` against `digest` and stores them as `name`.
fn save(store: &Store, name: &str, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
    let actual = sha256_digest(bytes)?;
    if actual != digest {
        return Err(std::io::Error::other(format!(
            "content {actual} does not match the manifest's digest"
        )));
    }
    store.write(&mut [(name, &mut &bytes[..])])
}

/// Where wasm layers are stored: `layers/` beside the node's code cache, or
/// the bundle when the cache is off.
pub fn store_dir(bundle: &Path) -> PathBuf {
    shim_engine::NodeConfig::get().layers_dir(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &Path, options: &[&str]) -> RootfsMount {
        RootfsMount {
            kind: kind.into(),
            source: source.display().to_string(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn only_an_empty_root_is_looked_up_in_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        let root = bundle.join("rootfs");
        fs::create_dir(&root).unwrap();
        assert!(
            root_is_empty(&root, &[]),
            "a prepared rootfs with nothing in it"
        );
        let snapshot = bundle.join("snapshot");
        fs::create_dir(&snapshot).unwrap();
        let bind = [mount("bind", &snapshot, &["rbind", "rw"])];
        assert!(
            root_is_empty(&root, &bind),
            "overlayfs' mount of an image without tars"
        );
        fs::write(snapshot.join("app.wasm"), b"\0asm").unwrap();
        assert!(
            !root_is_empty(&root, &bind),
            "the native snapshotter's full root"
        );
        let overlay = [mount("overlay", Path::new("overlay"), &["lowerdir=/a"])];
        assert!(!root_is_empty(&root, &overlay), "an unpacked image");
        fs::write(root.join("app.wasm"), b"\0asm").unwrap();
        assert!(!root_is_empty(&root, &[]));
    }

    #[test]
    fn a_layer_is_stored_only_when_it_matches_its_digest() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layers");
        let store = Store::open(&root, 1 << 20, "layer store").unwrap();
        let bytes = b"\0asm\x01\0\0\0";
        let digest = sha256_digest(&bytes[..]).unwrap();
        let name = "sha256-a.wasm";
        save(&store, name, &digest, bytes).unwrap();
        assert!(is_stored(&store, name, bytes.len() as u64, &digest));
        assert!(
            !is_stored(&store, name, 1, &digest),
            "a stored layer of another size is not it"
        );
        // Changed in place since it was stored (same size): not it either.
        let path = root.join(name);
        let mut changed = fs::read(&path).unwrap();
        changed[7] ^= 1;
        fs::remove_file(&path).unwrap();
        fs::write(&path, &changed).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(!is_stored(&store, name, bytes.len() as u64, &digest));
        // Nor one others could write, though it is the content.
        save(&store, name, &digest, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(!is_stored(&store, name, bytes.len() as u64, &digest));
        save(&store, name, &digest, bytes).unwrap();
        assert!(is_stored(&store, name, bytes.len() as u64, &digest));
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
        let e = save(&store, "sha256-b.wasm", &digest, b"\0asm\x01\0\0\x01").unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "nothing left of it"
        );
    }
}
