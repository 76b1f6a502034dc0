//! The wasm of an image that containerd could not unpack into the root (a wasm
//! OCI artifact, or an older wasm layer type: see `shim_image::layers`),
//! taken from containerd's content store through its API.
//!
//! Only a container whose root is empty is looked up, so an ordinary image
//! costs one `readdir` and no call to containerd. The layer is stored once
//! per node, content-addressed and digest-verified, in a root-only directory
//! beside the code cache; every later container of that image reads it there.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, GetContainerRequest, GetImageRequest, ReadContentRequest,
};
use containerd_client::with_namespace;
use shim_container::request::sha256_digest;
use shim_container::rootfs::RootfsMount;
use shim_container::LayerFile;
use shim_image::layers::{self, LayerError, MAX_MANIFEST_BYTES};
use tonic::Request;

/// containerd's API, as the shim was told to reach it (`-address`, `-namespace`).
#[derive(Debug, Clone)]
pub struct ContainerdApi {
    pub address: String,
    pub namespace: String,
}

/// Whether the container's root will be empty: no rootfs mounts and an empty
/// root directory (the spec's `root.path`, usually the bundle's `rootfs`), or
/// a single bind mount of an empty directory (what the overlayfs and native
/// snapshotters give for an image with no tar layers).
pub fn root_is_empty(bundle: &Path, rootfs: &[RootfsMount]) -> bool {
    let empty = |dir: &Path| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    match rootfs {
        [] => empty(&spec_root(bundle)),
        [mount] if mount.kind == "bind" || mount.options.iter().any(|o| o.ends_with("bind")) => {
            empty(Path::new(&mount.source))
        }
        _ => false,
    }
}

/// The root directory the bundle's spec names: `root.path`, relative to the
/// bundle unless absolute (a spec given whole, as `ctr run --config` does,
/// may name any directory); `<bundle>/rootfs` when the spec says nothing.
fn spec_root(bundle: &Path) -> PathBuf {
    oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.root().as_ref().map(|root| bundle.join(root.path())))
        .unwrap_or_else(|| bundle.join("rootfs"))
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
        let stored = store.join(format!("{}.wasm", layer.digest.replace(':', "-")));
        if is_stored(&stored, layer.size, &layer.digest) {
            // Recently used: the last to be evicted.
            let _ = File::open(&stored).and_then(|f| f.set_modified(SystemTime::now()));
        } else {
            let limit = usize::try_from(layer.size).unwrap_or(usize::MAX);
            let bytes = read(layer.digest.clone(), limit).await?;
            save(store, &stored, &layer.digest, &bytes)
                .map_err(|e| format!("image {image}: cannot store its wasm layer: {e}"))?;
            log::info!(
                "image {image}: wasm layer {} ({}, {} bytes) stored at {}",
                layer.digest,
                layer.media_type,
                bytes.len(),
                stored.display()
            );
            evict(store, &stored, shim_engine::NodeConfig::get().limit);
        }
        Ok(LayerFile {
            path: stored,
            shown: format!("{image} ({} layer {})", layer.media_type, layer.digest),
            name: layer.name,
            digest: Some(layer.digest),
        })
    }
}

fn text(e: LayerError) -> String {
    e.to_string()
}

/// A stored layer is used when it is ours (owned by this user, not writable
/// by anyone else), whole, and still its digest's content; one changed since
/// it was stored is fetched again. (The create helper checks the digest once
/// more as it copies the layer for the container.)
fn is_stored(path: &Path, size: u64, digest: &str) -> bool {
    let ours = fs::symlink_metadata(path).is_ok_and(|m| {
        m.is_file()
            && m.uid() == nix::unistd::geteuid().as_raw()
            && m.mode() & 0o022 == 0
            && m.len() == size
    });
    if !ours {
        return false;
    }
    match File::open(path).and_then(sha256_digest) {
        Ok(found) if found == digest => true,
        Ok(found) => {
            log::warn!(
                "the stored wasm layer {} is {found}, not {digest}: fetching it again",
                path.display()
            );
            false
        }
        Err(_) => false,
    }
}

/// Verifies `bytes` against `digest` and writes them atomically to `path`.
fn save(store: &Path, path: &Path, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
    let actual = sha256_digest(bytes)?;
    if actual != digest {
        return Err(std::io::Error::other(format!(
            "content {actual} does not match the manifest's digest"
        )));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(store)?;
    let staged = store.join(format!(".{}.{}", std::process::id(), rand_suffix()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&staged)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&staged, path)?;
        File::open(store)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staged);
    }
    result
}

/// Removes the least recently used layers (and writes abandoned by a crash)
/// until the store holds at most `limit` bytes; `keep` stays. A container
/// that already opened a removed layer keeps reading it.
fn evict(store: &Path, keep: &Path, limit: u64) {
    let Ok(entries) = fs::read_dir(store) else {
        return;
    };
    let mut layers: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let staged = entry.file_name().to_string_lossy().starts_with('.');
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if staged {
            if stale {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if path != keep {
            layers.push((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
                path,
            ));
        }
    }
    let kept = fs::metadata(keep).map_or(0, |m| m.len());
    let mut total: u64 = kept + layers.iter().map(|(_, size, _)| size).sum::<u64>();
    layers.sort();
    for (_, size, path) in layers {
        if total <= limit {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            log::info!("layer store over {limit} bytes: removed {}", path.display());
            total -= size;
        }
    }
}

/// Distinguishes concurrent writers of one process (threads of the shim).
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
        fs::create_dir(bundle.join("rootfs")).unwrap();
        assert!(
            root_is_empty(bundle, &[]),
            "a prepared rootfs with nothing in it"
        );
        let snapshot = bundle.join("snapshot");
        fs::create_dir(&snapshot).unwrap();
        let bind = [mount("bind", &snapshot, &["rbind", "rw"])];
        assert!(
            root_is_empty(bundle, &bind),
            "overlayfs' mount of an image without tars"
        );
        fs::write(snapshot.join("app.wasm"), b"\0asm").unwrap();
        assert!(
            !root_is_empty(bundle, &bind),
            "the native snapshotter's full root"
        );
        let overlay = [mount("overlay", Path::new("overlay"), &["lowerdir=/a"])];
        assert!(!root_is_empty(bundle, &overlay), "an unpacked image");
        fs::write(bundle.join("rootfs/app.wasm"), b"\0asm").unwrap();
        assert!(!root_is_empty(bundle, &[]));
        // A spec given whole (`ctr run --config`) names its own root.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let root = oci_spec::runtime::RootBuilder::default()
            .path(&elsewhere)
            .build()
            .unwrap();
        let spec = oci_spec::runtime::SpecBuilder::default()
            .root(root)
            .build()
            .unwrap();
        spec.save(bundle.join("config.json")).unwrap();
        assert!(root_is_empty(bundle, &[]), "its root is empty");
        fs::write(elsewhere.join("app.wasm"), b"\0asm").unwrap();
        assert!(!root_is_empty(bundle, &[]), "its root holds the wasm");
    }

    #[test]
    fn a_layer_is_stored_only_when_it_matches_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("layers");
        let bytes = b"\0asm\x01\0\0\0";
        let digest = sha256_digest(&bytes[..]).unwrap();
        let path = store.join("a.wasm");
        save(&store, &path, &digest, bytes).unwrap();
        assert!(is_stored(&path, bytes.len() as u64, &digest));
        assert!(
            !is_stored(&path, 1, &digest),
            "a stored layer of another size is not it"
        );
        // Changed in place since it was stored (same size): not it either.
        let mut changed = fs::read(&path).unwrap();
        changed[7] ^= 1;
        fs::remove_file(&path).unwrap();
        fs::write(&path, &changed).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(!is_stored(&path, bytes.len() as u64, &digest));
        save(&store, &path, &digest, bytes).unwrap();
        assert_eq!(fs::metadata(&store).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o400);
        let other = store.join("b.wasm");
        let e = save(&store, &other, &digest, b"\0asm\x01\0\0\x01").unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(
            fs::read_dir(&store).unwrap().count(),
            1,
            "nothing left of it"
        );
    }

    #[test]
    fn the_store_drops_its_least_recently_used_layers_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path();
        let old = SystemTime::now() - std::time::Duration::from_secs(600);
        for (n, name) in ["a", "b", "c"].iter().enumerate() {
            let path = store.join(format!("{name}.wasm"));
            fs::write(&path, [0u8; 100]).unwrap();
            let at = old + std::time::Duration::from_secs(n as u64);
            File::open(&path).unwrap().set_modified(at).unwrap();
        }
        evict(store, &store.join("a.wasm"), 250);
        let mut left: Vec<_> = fs::read_dir(store)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a.wasm", "c.wasm"],
            "the oldest other than the new one went"
        );
    }
}
