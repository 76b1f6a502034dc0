//! End-to-end: wasm containers through a real containerd with `ctr run`.
//! Each test starts its own containerd (see the harness, src/harness.rs).
//!
//! - `guest`: what a guest sees and does: output, args, environment, files,
//!   mounts, entrypoints, exit codes and traps, components, stdin;
//! - `node`: what the node does around guests: clear errors for bad
//!   entrypoints, many containers at once or in one pod, the OOM killer,
//!   the code cache, images of platform wasi/wasm;
//! - `task`: task verbs beyond run and kill (pause, resume).

mod guest;
mod node;
mod task;

use shim_tests::Containerd;

/// A private containerd with the test image imported.
fn containerd() -> Containerd {
    let containerd = Containerd::start();
    containerd.import("wasm-test.tar");
    containerd
}
