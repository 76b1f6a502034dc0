//! An image's index or manifest as containerd's content store returns it
//! (the image's author wrote it): which manifests to try, which layer holds
//! the wasm, and whether a digest may name a file.
//!
//! Input: `image reference \n JSON`; the JSON is read both as an index and as
//! a manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use shim_image::layers::{
    is_index, is_sha256_digest, manifest_candidates, wasm_layer, LayerError, WASM_LAYER_TYPES,
};

fuzz_target!(|data: &[u8]| {
    let (image, json) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            &data[at + 1..],
        ),
        None => ("registry.example/ns/app:v1".to_string(), data),
    };
    let _ = is_index(&image);
    check_digest(&image);
    check_index(&image, json);
    check_manifest(&image, json);
});

/// `sha256:` and 64 lowercase hex digits, nothing else: such a digest names
/// a file of the layer store without escaping.
fn check_digest(digest: &str) {
    let want = digest.len() == 71
        && digest.starts_with("sha256:")
        && digest[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert_eq!(is_sha256_digest(digest), want, "{digest:?}");
    if want {
        assert!(!digest.contains('/') && !digest.contains(".."));
    }
}

fn is_wasm_platform(d: &Descriptor) -> bool {
    d.platform().as_ref().is_some_and(|p| {
        p.architecture().to_string() == "wasm" || p.os().to_string().starts_with("wasi")
    })
}

fn check_index(image: &str, json: &[u8]) {
    let parsed = serde_json::from_slice::<ImageIndex>(json);
    let result = manifest_candidates(image, json);
    let index = match (parsed, result) {
        (Err(_), Err(LayerError::BadManifest { image: shown, .. })) => {
            return assert_eq!(shown, image);
        }
        (Ok(index), Ok(candidates)) => {
            let manifests = index.manifests();
            assert!(!candidates.is_empty());
            assert!(candidates.len() <= manifests.len());
            // Each candidate comes from the index, at most as often as there.
            for c in &candidates {
                let listed = manifests.iter().filter(|m| *m == c).count();
                let offered = candidates.iter().filter(|m| *m == c).count();
                assert!(
                    offered <= listed,
                    "{c:?} offered {offered} times, listed {listed}"
                );
            }
            if manifests.len() == 1 {
                assert_eq!(candidates, *manifests, "the only entry");
            } else {
                assert!(candidates.iter().all(|c| c.platform().is_some()));
            }
            // wasm first: every wasm entry, before any other.
            let wasm = manifests.iter().filter(|m| is_wasm_platform(m)).count();
            assert!(candidates[..wasm].iter().all(is_wasm_platform));
            assert!(!candidates[wasm..].iter().any(is_wasm_platform));
            for c in &candidates {
                check_digest(c.digest().as_ref());
            }
            index
        }
        (Ok(index), Err(LayerError::NoManifest { image: shown })) => {
            assert_eq!(shown, image);
            index
        }
        (parsed, result) => panic!(
            "index parsed as {:?} but read as {result:?}",
            parsed.is_ok()
        ),
    };
    if manifest_candidates(image, json).is_err() {
        let manifests = index.manifests();
        assert_ne!(manifests.len(), 1, "an index of one has a candidate");
        assert!(
            !manifests.iter().any(is_wasm_platform),
            "a wasm entry was dropped"
        );
    }
}

fn media_type(d: &Descriptor) -> String {
    match d.media_type() {
        MediaType::Other(other) => other.clone(),
        known => known.to_string(),
    }
}

fn check_manifest(image: &str, json: &[u8]) {
    let parsed = serde_json::from_slice::<ImageManifest>(json);
    match (parsed, wasm_layer(image, json)) {
        (Err(_), Err(LayerError::BadManifest { image: shown, .. })) => assert_eq!(shown, image),
        (Ok(manifest), result) => {
            let wasm: Vec<&Descriptor> = manifest
                .layers()
                .iter()
                .filter(|d| WASM_LAYER_TYPES.contains(&media_type(d).as_str()))
                .collect();
            match result {
                Ok(layer) => {
                    assert_eq!(wasm.len(), 1);
                    assert_eq!(layer.digest, wasm[0].digest().to_string());
                    assert_eq!(layer.size, wasm[0].size());
                    assert!(WASM_LAYER_TYPES.contains(&layer.media_type.as_str()));
                    // The name becomes argv[0]: never empty, never a path.
                    assert!(!layer.name.is_empty(), "empty name");
                    assert!(!layer.name.contains('/'), "name {:?}", layer.name);
                    check_digest(&layer.digest);
                }
                Err(LayerError::NoWasmLayer { image: shown, .. }) => {
                    assert_eq!(shown, image);
                    assert!(wasm.is_empty());
                }
                Err(LayerError::ManyWasmLayers {
                    image: shown,
                    count,
                    ..
                }) => {
                    assert_eq!(shown, image);
                    assert_eq!(count, wasm.len());
                    assert!(count > 1);
                }
                Err(e) => panic!("a parsed manifest gave {e:?}"),
            }
        }
        (Err(_), result) => panic!("manifest does not parse but was read as {result:?}"),
    }
}
