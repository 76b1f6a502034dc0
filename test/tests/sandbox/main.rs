//! The sandbox holds: a guest that tries everything reaches nothing but what
//! the spec grants.
//!
//! Attackers built from C in images/: `escape.wasm` (images/escape/escape.c),
//! a wasm guest that tries /proc, /sys, /dev, `..` walks towards a file planted
//! on the host, and links to /proc/self/mem; `probe` (images/native/probe.c), a
//! native sidecar that attacks its pod's wasm containers through /proc in a
//! pod sharing its PID namespace. Both print `REACHED <what>` for every attempt
//! that got somewhere; here there must be none. And from the host: what the
//! container's process holds (descriptors, the code cache's key in its
//! memory), and that execs run under the container's seccomp filter with its
//! capabilities.
//!
//! - `escape`: `escape.wasm` under every kind of root and mount;
//! - `holdings`: the container's process seen from the host;
//! - `execs`: execs under the container's confinement;
//! - `sidecar`: `probe` against the wasm container of its pod.
//!
//! What reached and what was denied is printed on stderr: run with
//! `-- --nocapture` to see it.

mod escape;
mod execs;
mod holdings;
mod sidecar;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use shim_tests::images::WASM_TEST;
use shim_tests::{Containerd, RUNTIME};

/// A private containerd with the test image imported.
fn containerd() -> Containerd {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    c
}

/// A marker no file of the machine holds by chance.
fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{what}-marker-{}-{nanos:x}", std::process::id())
}

/// The `REACHED` lines of an attacker's output.
fn reached(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("REACHED"))
        .map(str::to_string)
        .collect()
}

/// Prints an attacker's results: what it reached, and how much was denied.
fn show(name: &str, output: &str) {
    let denied = output.lines().filter(|l| l.starts_with("denied")).count();
    let reached = reached(output);
    eprintln!(
        "  {name}: {} attempts reached, {denied} denied",
        reached.len()
    );
    for line in reached {
        eprintln!("    {line}");
    }
}

/// `Seccomp`, `NoNewPrivs`, `CapEff` and `CapBnd` of a `/proc/PID/status`
/// text.
fn security_fields(status: &str) -> BTreeMap<String, String> {
    status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            ["Seccomp", "NoNewPrivs", "CapEff", "CapBnd"]
                .contains(&key)
                .then(|| (key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// How an exec's confinement (`of_exec`) differs from its container
/// init's, which must be under a seccomp filter.
fn unlike_its_init(
    exec: &str,
    of_exec: &BTreeMap<String, String>,
    init: &str,
    of_init: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if of_init["Seccomp"] != "2" {
        problems.push(format!("{init} has Seccomp {}", of_init["Seccomp"]));
    }
    for (field, value) in of_init {
        if of_exec[field] != *value {
            problems.push(format!(
                "{exec} has {field} {}, {init} {value}",
                of_exec[field]
            ));
        }
    }
    problems
}

/// [`security_fields`] of a running process.
fn security_of(pid: i32) -> BTreeMap<String, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let fields = security_fields(&status);
    assert_eq!(fields.len(), 4, "/proc/{pid}/status: {status}");
    fields
}

/// `ctr run -d` with `extra` flags (e.g. `--seccomp`) before the image.
fn run_detached_with(c: &Containerd, id: &str, extra: &[&str], args: &[&str]) {
    let mut argv = vec!["run", "-d", "--runtime", RUNTIME];
    argv.extend(extra);
    argv.extend([WASM_TEST, id]);
    argv.extend(args);
    let out = c.ctr(&argv);
    assert_eq!(out.code, 0, "ctr run -d {id}: {out:?}");
}

/// (st_dev, st_ino) of `path`, if it exists.
fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}
