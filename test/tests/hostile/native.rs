//! Native code posing as a guest: a precompiled wasmtime artifact or a
//! foreign ELF file as an image's entrypoint, and artifacts planted in the
//! node's code cache. None is ever loaded or run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd};

use super::{containerd, file, import_hostile_image, wasitest, HOSTILE};

/// The node cache's artifact for `/wasitest.wasm`, after a run: (its path,
/// its tag's path).
fn cached_artifact(c: &Containerd) -> (PathBuf, PathBuf) {
    let code = c.dir().join("cache/code");
    let artifacts: Vec<PathBuf> = std::fs::read_dir(&code)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let artifact = artifacts[0].clone();
    let tag = artifact.with_extension("tag");
    (artifact, tag)
}

/// The header of a 64-bit little-endian executable for aarch64 (EM_AARCH64).
fn arm64_elf() -> Vec<u8> {
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.resize(64, 0);
    elf[16] = 2; // ET_EXEC
    elf[18] = 183; // EM_AARCH64
    elf
}

/// A `.cwasm` (wasmtime's precompiled native code; here a genuine one, which
/// this very engine would accept) as an image's entrypoint is refused at
/// create, saying what it is, whatever its mode: never deserialized, never
/// executed.
#[test]
fn a_precompiled_artifact_in_an_image_is_refused() {
    let c = containerd();
    let out = c.run(&unique_id("compile"), WASM_TEST, &[], &["/wasitest.wasm"]);
    assert_eq!(out.code, 0, "{out:?}");
    let (artifact, _) = cached_artifact(&c);
    let cwasm = std::fs::read(&artifact).unwrap();
    assert!(cwasm.starts_with(b"\x7fELF"));
    import_hostile_image(
        &c,
        "/app.cwasm",
        vec![
            file("/app.cwasm", cwasm.clone(), 0o755),
            file("/app.wasm", cwasm.clone(), 0o644),
            file("/wasitest.wasm", wasitest(), 0o755),
            file(
                "/fake-elf",
                b"\x7fELF\x02\x01\x01\0not a program".to_vec(),
                0o755,
            ),
            file("/arm64-elf", arm64_elf(), 0o755),
        ],
    );
    for (name, args) in [
        ("cwasm", &[][..]),
        ("cwasm644", &["/app.wasm", "hello"][..]),
    ] {
        let id = unique_id(name);
        let out = c.run(&id, HOSTILE, &[], args);
        let shown = args.first().unwrap_or(&"/app.cwasm");
        eprintln!("  {shown}: exit {}: {}", out.code, out.stderr.trim());
        assert_ne!(out.code, 0, "{out:?}");
        for needle in [
            format!("container {id}"),
            format!("{shown} is a precompiled wasmtime artifact (.cwasm)"),
            "never loaded".to_string(),
        ] {
            assert!(out.stderr.contains(&needle), "{needle:?} not in {out:?}");
        }
        assert!(!c.log().contains(&format!("{shown}: a native executable")));
        assert!(!c.log().contains(&format!("{shown}: code mapped")));
        c.ctr(&["containers", "rm", &id]);
        c.assert_clean(&[&id]);
    }
    // Any other ELF is a native program, run as a Linux container; one the
    // kernel would not execute is refused at create, saying why.
    for (name, path, reason) in [
        ("fakeelf", "/fake-elf", "is not an executable"),
        ("arm64", "/arm64-elf", "built for ELF machine 183"),
    ] {
        let id = unique_id(name);
        let out = c.run(&id, HOSTILE, &[], &[path]);
        eprintln!("  {path}: exit {}: {}", out.code, out.stderr.trim());
        assert_ne!(out.code, 0, "{out:?}");
        let expected = format!("{path} is an ELF file this node cannot run");
        assert!(out.stderr.contains(&expected), "{out:?}");
        assert!(out.stderr.contains(reason), "{out:?}");
        c.ctr(&["containers", "rm", &id]);
        c.assert_clean(&[&id]);
    }
    // The same image's wasm runs.
    let out = c.run(&unique_id("wasm"), HOSTILE, &[], &["/wasitest.wasm"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello from wasm\n"));
}

/// Files planted in the node's cache by someone other than this node's shim
/// (tests/ctr covers an artifact changed in place): a genuine artifact and tag
/// of another node, for other code under this guest's name; an artifact
/// without a tag; a symlink; a file of another owner. None is loaded: the
/// guest always runs its own code.
#[test]
fn artifacts_planted_in_the_node_cache_are_never_loaded() {
    let c = containerd();
    let hello = |c: &Containerd| {
        let out = c.run(&unique_id("planted"), WASM_TEST, &[], &["/wasitest.wasm"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "hello from wasm\n"),
            "{out:?}"
        );
    };
    hello(&c);
    let (artifact, tag) = cached_artifact(&c);
    // Another node (its own key) compiles other code: a guest that traps.
    let other = containerd();
    let out = other.run(&unique_id("other"), WASM_TEST, &[], &["/trap.wasm"]);
    assert_eq!(out.code, 134, "{out:?}");
    let (foreign, foreign_tag) = cached_artifact(&other);
    let foreign = std::fs::read(foreign).unwrap();
    let foreign_tag = std::fs::read(foreign_tag).unwrap();
    drop(other);
    let count = |needle: &str| c.log().matches(needle).count();
    let replace = |with: Option<&[u8]>, path: &Path| {
        let _ = std::fs::remove_file(path);
        if let Some(bytes) = with {
            std::fs::write(path, bytes).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
    };
    let refused = count("refusing");
    let degraded = count("compiling without it");

    // Another node's genuine artifact and tag, under this guest's name.
    replace(Some(&foreign), &artifact);
    replace(Some(&foreign_tag), &tag);
    hello(&c);
    assert_eq!(count("refusing"), refused + 1, "{}", c.log());
    assert!(c.log().contains("its tag does not match"));
    // The same artifact without a tag.
    replace(Some(&foreign), &artifact);
    replace(None, &tag);
    hello(&c);
    assert_eq!(count("refusing"), refused + 2, "{}", c.log());
    assert!(c.log().contains("(no tag)"));

    // A symlink to it, with a tag: never followed.
    let elsewhere = c.dir().join("elsewhere.cwasm");
    std::fs::write(&elsewhere, &foreign).unwrap();
    replace(None, &artifact);
    replace(Some(&foreign_tag), &tag);
    std::os::unix::fs::symlink(&elsewhere, &artifact).unwrap();
    hello(&c);
    assert_eq!(count("compiling without it"), degraded + 1, "{}", c.log());
    // Another user's file: not the shim's, not loaded.
    replace(Some(&foreign), &artifact);
    let chown = Command::new("chown")
        .args(["65534:65534", artifact.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    hello(&c);
    assert_eq!(count("compiling without it"), degraded + 2, "{}", c.log());
    assert!(c.log().contains("is owned by uid 65534"));
    eprintln!(
        "  planted: {} refused by their tag, {} runs without the cache",
        count("refusing") - refused,
        count("compiling without it") - degraded
    );
    // Cleared by root, the cache works again.
    replace(None, &artifact);
    replace(None, &tag);
    let mapped = count("/wasitest.wasm: code mapped from the node's cache");
    hello(&c);
    hello(&c);
    assert_eq!(
        count("/wasitest.wasm: code mapped from the node's cache"),
        mapped + 1
    );
}
