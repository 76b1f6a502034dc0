//! The OCI image layout, written as one tar file: `oci-layout`, `index.json`
//! and content-addressed `blobs/sha256/<hex>`.

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

/// A reproducible tar of regular files (fixed owner, mode and mtime).
pub fn tar(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .with_context(|| format!("adding {name} to the tar"))?;
    }
    Ok(builder.into_inner()?)
}
