//! End-to-end: bad input of every kind fails with an error that names the
//! container and the problem, surfaced to `ctr` (and, for a few cases, to
//! CRI's StartContainer), and leaves nothing behind: no mount, process,
//! cgroup, bundle or fifo. What test/tests/ctr/ already covers (a missing
//! entrypoint, a text file, a truncated module, an unknown import, a missing
//! export, a directory) is not repeated here.
//!
//! The bad inputs are generated at test time into a host directory under the
//! test's containerd directory and bind-mounted read-only at `/bad`.
//!
//! - `wasm`: bad and huge WebAssembly;
//! - `process`: entrypoint symlinks, argv and environment;
//! - `specs`: whole runtime specs and mounts;
//! - `cri`: the same kinds of input through CRI.

mod cri;
mod process;
mod specs;
mod wasm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd, CtrOutput};

/// How long any bad input may take to be refused (a debug shim compiling a
/// big module included): a hang or a timeout is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// A private containerd with the test image imported.
fn containerd() -> Containerd {
    let containerd = Containerd::start();
    containerd.import("wasm-test.tar");
    containerd
}

/// The host directory of generated inputs, seen by the guest at `/bad`.
fn bad_dir(c: &Containerd) -> PathBuf {
    let dir = c.dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `ctr run --mount` of `dir` at `/bad`, read-only.
fn bad_mount(dir: &Path) -> String {
    format!("type=bind,src={},dst=/bad,options=rbind:ro", dir.display())
}

/// Runs `args` in a new container with `extra` flags; asserts it fails
/// within [`PATIENCE`] with an error on ctr's stderr naming the container
/// and containing every `expected` text, that the shim did not panic, and
/// that nothing of the container is left.
fn assert_fails(c: &Containerd, name: &str, extra: &[&str], args: &[&str], expected: &[&str]) {
    let id = unique_id(name);
    let began = Instant::now();
    let out = c.run(&id, WASM_TEST, extra, args);
    let took = began.elapsed();
    assert_fails_clean(c, &id, &out, took, expected);
}

/// [`assert_fails`] of a container `ctr` has already run, for `took`.
fn assert_fails_clean(
    c: &Containerd,
    id: &str,
    out: &CtrOutput,
    took: Duration,
    expected: &[&str],
) {
    assert_ne!(out.code, 0, "{id} should have failed: {out:?}");
    assert!(took < PATIENCE, "{id} took {took:?} to fail");
    let error = out.stderr.trim();
    assert!(
        error.contains(&format!("container {id}")),
        "the error names the container: {error}"
    );
    for text in expected {
        assert!(error.contains(text), "expected {text:?} in: {error}");
    }
    assert!(
        !c.log().contains("panicked"),
        "the shim panicked:\n{}",
        c.log()
    );
    eprintln!("{id} ({took:.1?}): {error}");
    c.ctr(&["containers", "rm", id]);
    c.assert_clean(&[id]);
    assert_no_fifos(c);
}

/// ctr's stdio fifos (`--fifo-dir`, see the harness) are gone.
fn assert_no_fifos(c: &Containerd) {
    let left: Vec<_> = std::fs::read_dir(c.dir().join("fifo"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "fifos left behind: {left:?}");
}

/// `n` bytes that are the same on every run (xorshift).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The first bytes of every core module: the magic and version 1.
const HEADER: &[u8] = b"\0asm\x01\0\0\0";

/// The test program's bytes, for inputs made from it.
fn test_module() -> Vec<u8> {
    std::fs::read(shim_tests::images::images_dir().join("wasitest.wasm"))
        .expect("target/images/wasitest.wasm (run `make images`)")
}
