//! Hostile guests: a wasm program (images/wasitest/wasitest.c) that tries to
//! leave its root, write where it may not, exhaust memory, stack, CPU and
//! file descriptors, or flood its output; and native code posing as a guest,
//! shipped in an image or planted in the node's code cache. Each must fail
//! inside the guest or end the container, and never hurt the shim or the node.
//!
//! - `escape`: symlinks, links and renames out of the root or into a
//!   read-only file;
//! - `exhaustion`: memory, stack and CPU;
//! - `flood`: a gigabyte of output, thousands of open files;
//! - `native`: precompiled or native code in an image, artifacts planted in
//!   the node's cache.
//!
//! Here: running many checks in one container (`wasitest do`), and the
//! suite's own image, built at test time.
//!
//! What other suites already cover is not repeated here: `..` out of the root
//! and plain writes to a read-only root or mount (tests/ctr), a guest touching
//! memory past its cgroup limit being OOM-killed (tests/ctr, tests/cri.rs), SIGTERM
//! under a CPU quota (tests/cri.rs), SIGKILL latency without one (tests/kill_latency.rs),
//! a changed cache artifact (tests/ctr) and the cache's unit tests.
//!
//! The figures (throughput, RSS, fd counts) are printed on stderr: run with
//! `-- --nocapture` to see them.

mod escape;
mod exhaustion;
mod flood;
mod native;

use shim_tests::images::{self, images_dir, Entry, Image};
use shim_tests::{unique_id, Containerd};

/// The suite's own image (see [`import_hostile_image`]).
const HOSTILE: &str = "localhost/wasmtime-shim/hostile:latest";
/// What a file planted on the host holds: no guest output may show it.
const SECRET: &str = "host only: 5e3c0d1f";

/// A private containerd with the test image imported.
fn containerd() -> Containerd {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    c
}

/// `/wasitest.wasm do STEP -- STEP -- ...`: several checks in one container.
fn each(steps: &[&[&str]]) -> Vec<String> {
    let mut argv = vec!["/wasitest.wasm".to_string(), "do".to_string()];
    for (n, step) in steps.iter().enumerate() {
        if n > 0 {
            argv.push("--".into());
        }
        argv.extend(step.iter().map(|s| s.to_string()));
    }
    argv
}

/// Each step's output and status, from the "=> STATUS" line `do` prints
/// after it.
fn results(stdout: &str) -> Vec<(String, i32)> {
    let mut results = Vec::new();
    let mut output = String::new();
    for line in stdout.lines() {
        match line.strip_prefix("=> ") {
            Some(status) => {
                results.push((std::mem::take(&mut output), status.parse().unwrap()));
            }
            None => {
                output.push_str(line);
                output.push('\n');
            }
        }
    }
    results
}

/// Runs `steps` in one container and checks each against its expectation:
/// `Ok(text)`, it succeeds and prints `text`; `Err(text)`, it fails with
/// `text` (an errno's message) in its output. Returns the outputs.
fn run_steps(
    c: &Containerd,
    name: &str,
    image: &str,
    flags: &[&str],
    steps: &[(&[&str], Result<&str, &str>)],
) -> Vec<String> {
    let argv = each(&steps.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    let id = unique_id(name);
    let out = c.run(
        &id,
        image,
        flags,
        &argv.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let got = results(&out.stdout);
    assert_eq!(got.len(), steps.len(), "{out:?}");
    for ((step, expected), (output, status)) in steps.iter().zip(&got) {
        eprintln!(
            "  {name}: {} -> {status}: {}",
            step.join(" "),
            output.trim()
        );
        match expected {
            Ok(text) => assert!(
                *status == 0 && output.contains(text),
                "{step:?} should succeed with {text:?}: {output:?}"
            ),
            Err(text) => assert!(
                *status != 0 && output.contains(text),
                "{step:?} should fail with {text:?}: {output:?}"
            ),
        }
    }
    assert!(!out.stdout.contains(SECRET), "the secret leaked: {out:?}");
    c.assert_clean(&[&id]);
    got.into_iter().map(|(o, _)| o).collect()
}

/// The errno messages the guest prints.
const EPERM: &str = "Operation not permitted";
const ENOENT: &str = "No such file or directory";

// --- the suite's own image: symlinks, modes, precompiled code ---------------

/// A regular file of the hostile image.
fn file(path: &str, bytes: Vec<u8>, mode: u32) -> Entry {
    Entry::File {
        path: path.into(),
        bytes,
        mode,
    }
}

/// A symlink of the hostile image, to `target` as given.
fn symlink(path: &str, target: impl Into<String>) -> Entry {
    Entry::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

/// Builds the image `HOSTILE` (one layer of `entries`, run as `entrypoint`)
/// with wasm-image-builder, which unlike `make images` stores symlinks and
/// file modes as given, and imports it.
fn import_hostile_image(c: &Containerd, entrypoint: &str, entries: Vec<Entry>) {
    let mut image = Image::new(HOSTILE);
    image.entrypoint = vec![entrypoint.to_string()];
    image.entries = entries;
    let tarball = c.dir().join("hostile.tar");
    images::write(&image, &tarball);
    let out = c.ctr(&["images", "import", tarball.to_str().unwrap()]);
    assert_eq!(out.code, 0, "import {HOSTILE}: {out:?}");
}

/// The test program, as bytes for an image of its own.
fn wasitest() -> Vec<u8> {
    std::fs::read(images_dir().join("wasitest.wasm")).expect("run `make images`")
}
