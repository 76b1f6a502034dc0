//! The OCI image layout, written as one tar file: `oci-layout`, `index.json`
//! and content-addressed `blobs/sha256/<hex>`; and the tar layers inside it.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A content-addressed blob and its media type.
pub struct Blob {
    media_type: String,
    bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            bytes,
        }
    }

    pub fn json(media_type: &str, value: &Value) -> Result<Self> {
        Ok(Self::new(media_type, serde_json::to_vec(value)?))
    }

    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.bytes)))
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len() })
    }
}

pub struct ImageLayout {
    name: String,
    manifest: Blob,
    blobs: Vec<Blob>,
    platform: Option<(String, String)>,
}

impl ImageLayout {
    pub fn new(
        name: String,
        config: Blob,
        layers: Vec<Blob>,
        platform: Option<(&str, &str)>,
    ) -> Self {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::json("application/vnd.oci.image.manifest.v1+json", &manifest)
            .expect("a manifest serializes");
        let mut blobs = vec![config];
        blobs.extend(layers);
        Self {
            name,
            manifest,
            blobs,
            platform: platform.map(|(os, arch)| (os.to_string(), arch.to_string())),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let tag = self
            .name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        let mut descriptor = self.manifest.descriptor();
        descriptor["annotations"] = json!({
            "io.containerd.image.name": self.name,
            "org.opencontainers.image.ref.name": tag,
        });
        if let Some((os, arch)) = &self.platform {
            descriptor["platform"] = json!({ "os": os, "architecture": arch });
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor],
        });
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_string(), serde_json::to_vec(&index)?),
        ];
        for blob in self.blobs.iter().chain([&self.manifest]) {
            let hex = blob.digest().trim_start_matches("sha256:").to_string();
            files.push((format!("blobs/sha256/{hex}"), blob.bytes.clone()));
        }
        std::fs::write(path, tar(&files)?).with_context(|| format!("writing {}", path.display()))
    }
}

/// One entry of an image's layer.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A regular file with its permission bits.
    File {
        path: String,
        bytes: Vec<u8>,
        mode: u32,
    },
    /// A symbolic link to `target`, stored as given (absolute, relative or
    /// dangling): the kind of entry `wasm-oci image` never writes, and tests
    /// of what a container's root may hold do.
    Symlink { path: String, target: String },
}

impl Entry {
    /// A regular file of mode 0755, as `wasm-oci image --file` stores one.
    pub fn file(path: &str, bytes: Vec<u8>) -> Self {
        Self::File {
            path: path.to_string(),
            bytes,
            mode: 0o755,
        }
    }
}

/// A reproducible tar of `entries` (owner 0:0, mtime 0; no directory
/// entries: whoever unpacks it creates the parents). Leading `/` of the
/// paths are dropped.
pub fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            Entry::File { path, bytes, mode } => append_file(&mut builder, path, bytes, *mode)?,
            Entry::Symlink { path, target } => {
                let name = path.trim_start_matches('/');
                let mut header = header(tar::EntryType::Symlink, 0, 0o777);
                builder
                    .append_link(&mut header, name, target)
                    .with_context(|| format!("adding the symlink {name} to the tar"))?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// A reproducible tar of regular files (fixed owner, mode and mtime).
pub fn tar(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        append_file(&mut builder, name, bytes, 0o755)?;
    }
    Ok(builder.into_inner()?)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(kind);
    header
}

fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    let name = name.trim_start_matches('/');
    let mut header = header(tar::EntryType::Regular, bytes.len() as u64, mode);
    builder
        .append_data(&mut header, name, bytes)
        .with_context(|| format!("adding {name} to the tar"))
}

/// Unpacks an image layout tarball (what [`ImageLayout::write`] writes)
/// into the directory `dir`, for tools that read a layout from a directory
/// (`oras cp --from-oci-layout`).
pub fn unpack(tarball: &Path, dir: &Path) -> Result<()> {
    let file =
        std::fs::File::open(tarball).with_context(|| format!("opening {}", tarball.display()))?;
    tar::Archive::new(file)
        .unpack(dir)
        .with_context(|| format!("unpacking {} into {}", tarball.display(), dir.display()))
}

#[cfg(test)]
mod tests {
    use super::{layer_tar, Entry};

    #[test]
    fn a_layer_keeps_modes_and_symlinks_as_given() {
        let tar = layer_tar(&[
            Entry::File {
                path: "/data/secret".into(),
                bytes: b"x".to_vec(),
                mode: 0o400,
            },
            Entry::Symlink {
                path: "/data/up".into(),
                target: "../..".into(),
            },
            Entry::file("/app.wasm", b"\0asm".to_vec()),
        ])
        .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, tar::EntryType, u32, Option<String>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let header = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("data/secret".into(), tar::EntryType::Regular, 0o400, None),
                (
                    "data/up".into(),
                    tar::EntryType::Symlink,
                    0o777,
                    Some("../..".into())
                ),
                ("app.wasm".into(), tar::EntryType::Regular, 0o755, None),
            ]
        );
    }
}
