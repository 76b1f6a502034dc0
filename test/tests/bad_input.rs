//! End-to-end: bad input of every kind fails with an error that names the
//! container and the problem, surfaced to `ctr` (and, for a few cases, to
//! CRI's StartContainer), and leaves nothing behind: no mount, process,
//! cgroup, bundle or fifo. What test/tests/ctr.rs already covers (a missing
//! entrypoint, a text file, a truncated module, an unknown import, a missing
//! export, a directory) is not repeated here.
//!
//! The bad inputs are generated at test time into a host directory under the
//! test's containerd directory and bind-mounted read-only at `/bad`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::cri::CriNode;
use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd, CtrOutput, RUNTIME};

/// How long any bad input may take to be refused (a debug shim compiling a
/// big module included): a hang or a timeout is a failure.
const PATIENCE: Duration = Duration::from_secs(60);

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

// --- WebAssembly, encoded by hand: only what these inputs need -------------

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn name(text: &str, out: &mut Vec<u8>) {
    leb(text.len(), out);
    out.extend_from_slice(text.as_bytes());
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len(), out);
    out.extend_from_slice(body);
}

const HEADER: &[u8] = b"\0asm\x01\0\0\0";

/// A module importing `count` functions `env::f0..` and exporting `_start`.
fn module_with_imports(count: usize) -> Vec<u8> {
    let mut module = HEADER.to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // type 0: () -> ()
    let mut imports = Vec::new();
    leb(count, &mut imports);
    for n in 0..count {
        name("env", &mut imports);
        name(&format!("f{n}"), &mut imports);
        imports.extend_from_slice(&[0, 0]); // a function of type 0
    }
    section(2, &imports, &mut module);
    section(3, &[1, 0], &mut module); // one function of type 0
    let mut exports = vec![1];
    name("_start", &mut exports);
    exports.push(0);
    leb(count, &mut exports); // after the imports
    section(7, &exports, &mut module);
    section(10, &[1, 2, 0, 0x0b], &mut module); // its body: no locals, end
    module
}

/// A module whose `_start` returns at once, with an active data segment of
/// `size` bytes filling a memory of just the pages it needs.
fn module_with_data(size: usize) -> Vec<u8> {
    let mut module = HEADER.to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module);
    section(3, &[1, 0], &mut module);
    let mut memory = vec![1, 0];
    leb(size.div_ceil(65536), &mut memory);
    section(5, &memory, &mut module);
    let mut exports = vec![1];
    name("_start", &mut exports);
    exports.extend_from_slice(&[0, 0]);
    section(7, &exports, &mut module);
    section(10, &[1, 2, 0, 0x0b], &mut module);
    // One active segment for memory 0 at offset `i32.const 0`.
    let mut data = vec![1, 0, 0x41, 0, 0x0b];
    leb(size, &mut data);
    data.resize(data.len() + size, 0x5a);
    section(11, &data, &mut module);
    module
}

/// `module` with a custom section of `size` bytes appended (valid anywhere).
fn with_custom_section(mut module: Vec<u8>, size: usize) -> Vec<u8> {
    let mut body = Vec::new();
    name("padding", &mut body);
    body.resize(body.len() + size, 0);
    section(0, &body, &mut module);
    module
}

/// A component of no world the shim runs: it exports only an interface of
/// its own (no `wasi:cli/run`, no `wasi:http/incoming-handler`). From
/// component WAT, by the `wat` crate (what `wasm-oci wat` runs).
fn unsupported_component(dir: &Path) -> PathBuf {
    let wasm = wat::parse_str(
        r#"(component
  (core module $m (func (export "greet")))
  (core instance $i (instantiate $m))
  (func $greet (canon lift (core func $i "greet")))
  (instance $api (export "greet" (func $greet)))
  (export "example:custom/api" (instance $api)))
"#,
    )
    .expect("the component's WAT");
    let path = dir.join("custom-world.wasm");
    std::fs::write(&path, wasm).unwrap();
    path
}

fn test_module() -> Vec<u8> {
    std::fs::read(shim_tests::images::images_dir().join("wasitest.wasm"))
        .expect("target/images/wasitest.wasm (run `make images`)")
}

#[test]
fn bad_wasm_fails_naming_the_container_and_the_problem() {
    let c = containerd();
    let dir = bad_dir(&c);
    let mut corrupt = HEADER.to_vec();
    corrupt.extend(noise(4096));
    std::fs::write(dir.join("corrupt.wasm"), corrupt).unwrap();
    std::fs::write(dir.join("empty.wasm"), b"").unwrap();
    std::fs::write(dir.join("imports.wasm"), module_with_imports(10_000)).unwrap();
    unsupported_component(&dir);
    let mount = bad_mount(&dir);
    let flags = ["--mount", mount.as_str()];
    assert_fails(
        &c,
        "corrupt",
        &flags,
        &["/bad/corrupt.wasm"],
        &["/bad/corrupt.wasm is not valid WebAssembly"],
    );
    assert_fails(
        &c,
        "empty",
        &flags,
        &["/bad/empty.wasm"],
        &["/bad/empty.wasm is an empty file (0 bytes), not WebAssembly"],
    );
    // 10 000 imports: refused at once, naming the first one WASI lacks.
    assert_fails(
        &c,
        "imports",
        &flags,
        &["/bad/imports.wasm"],
        &[
            "/bad/imports.wasm cannot be linked against WASI",
            "unknown import: `env::f0`",
        ],
    );
    assert_fails(
        &c,
        "world",
        &flags,
        &["/bad/custom-world.wasm"],
        &[
            "the component exports neither `wasi:cli/run` (a command) nor \
             `wasi:http/incoming-handler` (an HTTP server)",
            "it exports [example:custom/api]",
        ],
    );
}

#[test]
fn entrypoint_symlinks_resolve_inside_the_root_only() {
    let c = containerd();
    let dir = bad_dir(&c);
    // A file only the host has: a link to it must never reach it.
    let host_wasm = c.dir().join("host-only.wasm");
    std::fs::write(&host_wasm, test_module()).unwrap();
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    link("loop-b.wasm", "loop-a.wasm");
    link("loop-a.wasm", "loop-b.wasm");
    link("/etc/passwd", "passwd.wasm");
    link(host_wasm.to_str().unwrap(), "host.wasm");
    let up = "../".repeat(16);
    link(&format!("{up}{}", host_wasm.display()), "up.wasm");
    link("/wasitest.wasm", "inside.wasm");
    let mount = bad_mount(&dir);
    let flags = ["--mount", mount.as_str()];

    assert_fails(
        &c,
        "symloop",
        &flags,
        &["/bad/loop-a.wasm"],
        &[
            "cannot read entrypoint /bad/loop-a.wasm",
            "Too many levels of symbolic links",
        ],
    );
    for (name, target) in [
        ("passwd", "/etc/passwd".to_string()),
        ("host", host_wasm.display().to_string()),
        ("up", format!("{up}{}", host_wasm.display())),
    ] {
        let entry = format!("/bad/{name}.wasm");
        assert_fails(
            &c,
            &format!("link-{name}"),
            &flags,
            &[&entry],
            &[&format!(
                "entrypoint \"{entry}\" not found in the container: {entry} is a symlink to \
                 {target}, which does not exist in the container's root"
            )],
        );
    }
    // A link within the root is followed there.
    let out = c.run(
        &unique_id("link-in"),
        WASM_TEST,
        &flags,
        &["/bad/inside.wasm"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
}

/// `ctr run` of the test image with `args`, some of them not UTF-8.
fn run_os_args(c: &Containerd, id: &str, extra: &[&OsStr], args: &[&OsStr]) -> CtrOutput {
    let mut command = c.ctr_command(&["run", "--rm", "--runtime", RUNTIME]);
    command.args(extra).arg(WASM_TEST).arg(id).args(args);
    command.output().expect("run ctr").into()
}

#[test]
fn odd_and_huge_argv_and_env_reach_the_guest() {
    let c = containerd();
    // Not UTF-8: ctr (Go) encodes the spec as JSON, which replaces each
    // invalid byte with U+FFFD before containerd or the shim see it.
    let arg = OsStr::from_bytes(b"a\xff\xfeb");
    let out = run_os_args(
        &c,
        &unique_id("argv-bytes"),
        &[],
        &["/wasitest.wasm".as_ref(), "args".as_ref(), arg],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("argv[2]=a\u{fffd}\u{fffd}b\n"),
        "{out:?}"
    );
    let env = OsStr::from_bytes(b"ODD=x\xffy");
    let out = run_os_args(
        &c,
        &unique_id("env-bytes"),
        &["--env".as_ref(), env],
        &["/wasitest.wasm".as_ref(), "env".as_ref(), "ODD".as_ref()],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "ODD=x\u{fffd}y\n"),
        "{out:?}"
    );

    // 1 MiB of argv through ctr: 16 arguments of 64 KiB (Linux caps one
    // argument of ctr's own execve at 128 KiB).
    let chunk = "a".repeat(64 << 10);
    let mut args = vec!["/wasitest.wasm", "args"];
    args.extend(std::iter::repeat_n(chunk.as_str(), 16));
    let out = c.run(&unique_id("argv-1m"), WASM_TEST, &[], &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for n in 2..18 {
        assert!(
            out.stdout.contains(&format!("argv[{n}]={chunk}\n")),
            "argv[{n}] did not come back whole ({} bytes of output)",
            out.stdout.len()
        );
    }

    // ctr treats `--env NAME` (no `=`) as "unset NAME": the guest sees none.
    let out = c.run(
        &unique_id("env-noeq"),
        WASM_TEST,
        &["--env", "NOEQUALS"],
        &["/wasitest.wasm", "env", "NOEQUALS"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "NOEQUALS=(unset)\n"),
        "{out:?}"
    );
    c.assert_clean(&[]);
    assert_no_fifos(&c);
}

// --- Whole runtime specs: `ctr run --config` ---------------------------------

/// A runtime spec for container `id` from `ctr oci spec` (this containerd's
/// defaults), rooted at a host directory holding the test module, running
/// `/wasitest.wasm hello`, in the cgroup containerd would give it.
fn spec(c: &Containerd, id: &str) -> serde_json::Value {
    let root = c.dir().join("spec-root");
    if !root.join("wasitest.wasm").exists() {
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("wasitest.wasm"), test_module()).unwrap();
    }
    let out = c.ctr(&["oci", "spec"]);
    assert_eq!(out.code, 0, "ctr oci spec: {out:?}");
    let mut spec: serde_json::Value = serde_json::from_str(&out.stdout).expect("a JSON spec");
    spec["root"] = serde_json::json!({"path": root, "readonly": true});
    spec["process"]["args"] = serde_json::json!(["/wasitest.wasm", "hello"]);
    spec["linux"]["cgroupsPath"] = format!("/{}/{id}", shim_tests::NAMESPACE).into();
    spec
}

/// `ctr run --config` of `spec` as container `id`; the time it took.
fn run_spec(c: &Containerd, id: &str, spec: &serde_json::Value) -> (CtrOutput, Duration) {
    let file = c.dir().join(format!("{id}.json"));
    std::fs::write(&file, spec.to_string()).unwrap();
    let began = Instant::now();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--config",
        file.to_str().unwrap(),
        id,
    ]);
    (out, began.elapsed())
}

#[test]
fn whole_runtime_specs_with_bad_process_or_linux_sections_fail_clearly() {
    let c = containerd();
    // The spec as generated runs: what follows fails for its one change.
    let id = unique_id("spec-ok");
    let (out, _) = run_spec(&c, &id, &spec(&c, &id));
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}\n{}",
        c.log()
    );
    c.assert_clean(&[&id]);

    type Change = fn(&mut serde_json::Value);
    let cases: [(&str, Change, &[&str]); 4] = [
        (
            "no-process",
            |s| {
                s.as_object_mut().unwrap().remove("process");
            },
            &["missing process in spec"],
        ),
        (
            "terminal",
            |s| s["process"]["terminal"] = true.into(),
            &["a terminal (tty) is not supported by the wasmtime shim"],
        ),
        (
            "namespace",
            |s| {
                s["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "bogus"}))
            },
            &[
                "its runtime spec (config.json) is not valid",
                "unknown variant `bogus`",
            ],
        ),
        (
            "env-noeq",
            |s| s["process"]["env"] = serde_json::json!(["PATH=/", "NOEQUALS"]),
            &["`process.env` entry \"NOEQUALS\" has no `=`"],
        ),
    ];
    for (name, change, expected) in cases {
        let id = unique_id(name);
        let mut spec = spec(&c, &id);
        change(&mut spec);
        let (out, took) = run_spec(&c, &id, &spec);
        assert_fails_clean(&c, &id, &out, took, expected);
    }

    // One argument or one environment value of 1 MiB: ctr's own argv could
    // not carry either, a spec can, and both reach the guest whole.
    let big = "b".repeat(1 << 20);
    let id = unique_id("spec-argv-1m");
    let mut with_arg = spec(&c, &id);
    with_arg["process"]["args"] = serde_json::json!(["/wasitest.wasm", "args", big]);
    let (out, _) = run_spec(&c, &id, &with_arg);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.ends_with(&format!("argv[2]={big}\n")),
        "{} bytes of output",
        out.stdout.len()
    );
    let id = unique_id("spec-env-1m");
    let mut with_env = spec(&c, &id);
    with_env["process"]["args"] = serde_json::json!(["/wasitest.wasm", "env", "BIG"]);
    with_env["process"]["env"] = serde_json::json!([format!("BIG={big}")]);
    let (out, _) = run_spec(&c, &id, &with_env);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout == format!("BIG={big}\n"),
        "{} bytes of output",
        out.stdout.len()
    );
    c.assert_clean(&[]);
}

#[test]
fn mounts_that_cannot_be_mounted_are_named() {
    let c = containerd();
    let missing = c.dir().join("no-such-dir");
    assert_fails(
        &c,
        "bind-missing",
        &[
            "--mount",
            &format!(
                "type=bind,src={},dst=/x,options=rbind:ro",
                missing.display()
            ),
        ],
        &["/wasitest.wasm"],
        &[
            "failed to prepare rootfs",
            &format!(
                "the bind mount at /x: its source {} does not exist on the host",
                missing.display()
            ),
        ],
    );
    assert_fails(
        &c,
        "fs-unknown",
        &["--mount", "type=nosuchfs,src=none,dst=/x,options=rw"],
        &["/wasitest.wasm"],
        &["the mount at /x: filesystem type \"nosuchfs\" is not supported by this kernel"],
    );
    // What the host cannot tell in advance is still pinned on the mounts.
    assert_fails(
        &c,
        "fs-option",
        &["--mount", "type=tmpfs,src=tmpfs,dst=/x,options=size=bogus"],
        &["/wasitest.wasm"],
        &["failed to prepare rootfs (one of the spec's mounts could not be set up)"],
    );
}

// --- 100 MB of WebAssembly ---------------------------------------------------

/// The container's peak memory use in bytes (cgroupfs: v1's memory
/// controller, or v2's memory.peak), while it exists.
fn peak_memory(id: &str) -> Option<u64> {
    let cgroup = Cgroup::container(shim_tests::NAMESPACE, id);
    ["memory.max_usage_in_bytes", "memory.peak"]
        .iter()
        .find_map(|file| cgroup.read("memory", file)?.trim().parse().ok())
}

/// What [`run_measured`] saw.
struct Measured {
    out: CtrOutput,
    took: Duration,
    /// The container's peak memory (its cgroup), in bytes.
    container_peak: Option<u64>,
    /// The shim server's peak resident set, in KiB.
    shim_peak_kib: u64,
}

/// `c.run`, sampling the container's cgroup and the shim server meanwhile.
fn run_measured(c: &Containerd, id: &str, extra: &[&str], args: &[&str]) -> Measured {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut container, mut shim) = (None, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                container = container.max(peak_memory(id));
                shim = c
                    .shims()
                    .keys()
                    .map(|pid| hwm_kib(*pid))
                    .fold(shim, u64::max);
                std::thread::sleep(Duration::from_millis(10));
            }
            (container, shim)
        });
        let began = Instant::now();
        let out = c.run(id, WASM_TEST, extra, args);
        let took = began.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (container_peak, shim_peak_kib) = sampler.join().expect("sampler");
        Measured {
            out,
            took,
            container_peak,
            shim_peak_kib,
        }
    })
}

#[test]
fn a_100_mb_module_runs_within_bounds_or_fails_clearly_under_a_small_limit() {
    const SIZE: usize = 100 << 20;
    let c = containerd();
    let dir = bad_dir(&c);
    // The test program with 100 MB of custom section: the engine skips it.
    std::fs::write(
        dir.join("big-custom.wasm"),
        with_custom_section(test_module(), SIZE),
    )
    .unwrap();
    // 100 MB of data segment: compiled into the module's image.
    std::fs::write(dir.join("big-data.wasm"), module_with_data(SIZE)).unwrap();
    let mount = bad_mount(&dir);
    let flags = ["--mount", mount.as_str()];
    let mib =
        |bytes: Option<u64>| bytes.map_or("unmeasured".into(), |b| format!("{} MiB", b >> 20));
    for (name, output) in [("big-custom", "hello from wasm\n"), ("big-data", "")] {
        let entry = format!("/bad/{name}.wasm");
        // Cold (compiled into the node's cache), then warm (mapped from it).
        for run in ["cold", "cached"] {
            let id = unique_id(&format!("{name}-{run}"));
            let m = run_measured(&c, &id, &flags, &[&entry]);
            eprintln!(
                "{entry} ({run}): exit {}, {:.1?}, container peak {}, shim server peak RSS {} MiB",
                m.out.code,
                m.took,
                mib(m.container_peak),
                m.shim_peak_kib >> 10
            );
            assert_eq!(
                (m.out.code, m.out.stdout.as_str()),
                (0, output),
                "{:?}",
                m.out
            );
            assert!(m.took < PATIENCE, "{entry} took {:?}", m.took);
            if let Some(peak) = m.container_peak {
                assert!(peak < 5 * SIZE as u64, "{entry}: peak {} MiB", peak >> 20);
            }
            // The shim server never holds the module.
            assert!(
                m.shim_peak_kib < 64 << 10,
                "shim server: {} KiB",
                m.shim_peak_kib
            );
            c.assert_clean(&[&id]);
        }
    }
    // Under a 64 MiB limit neither fits: the OOM killer ends the container's
    // process while it reads the module, and the error says so.
    for name in ["big-custom", "big-data"] {
        assert_fails(
            &c,
            &format!("{name}-64m"),
            &[
                "--memory-limit",
                &(64u64 << 20).to_string(),
                "--mount",
                &mount,
            ],
            &[&format!("/bad/{name}.wasm")],
            &[
                "the container's process died while it prepared the guest",
                "most likely by the OOM killer at the container's memory limit of 64 MiB",
            ],
        );
    }
}

/// A process's peak resident set size in KiB (`VmHWM`).
fn hwm_kib(pid: i32) -> u64 {
    shim_tests::procfs::status_kib(pid, "VmHWM").unwrap_or(0)
}

// --- Through CRI, as kubelet would see it ------------------------------------

#[test]
fn cri_start_container_reports_bad_input_and_huge_env_works() {
    let node = CriNode::start();
    let dir = node.dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let mut corrupt = HEADER.to_vec();
    corrupt.extend(noise(4096));
    std::fs::write(dir.join("corrupt.wasm"), corrupt).unwrap();
    let host_wasm = node.dir().join("host-only.wasm");
    std::fs::write(&host_wasm, test_module()).unwrap();
    std::os::unix::fs::symlink(&host_wasm, dir.join("host.wasm")).unwrap();
    let bad_volume = || k8s_cri::v1::Mount {
        container_path: "/bad".into(),
        host_path: dir.display().to_string(),
        readonly: true,
        ..Default::default()
    };
    let pod_config = node.pod_config("bad");
    let pod = node.run_pod(&pod_config);
    let mut ids = vec![pod.clone()];

    let mut corrupt = CriNode::container_config("corrupt", WASM_TEST, &["/bad/corrupt.wasm"]);
    corrupt.mounts = vec![bad_volume()];
    let mut link = CriNode::container_config("link", WASM_TEST, &["/bad/host.wasm"]);
    link.mounts = vec![bad_volume()];
    let mut tty = CriNode::container_config("tty", WASM_TEST, &["/wasitest.wasm", "hello"]);
    tty.tty = true;
    for (config, expected) in [
        (
            corrupt,
            "/bad/corrupt.wasm is not valid WebAssembly".to_string(),
        ),
        (
            link,
            format!(
                "/bad/host.wasm is a symlink to {}, which does not exist in the container's root",
                host_wasm.display()
            ),
        ),
        (tty, "a terminal (tty) is not supported".to_string()),
    ] {
        let began = Instant::now();
        let (id, started) = node.try_start_container(&pod, &pod_config, config);
        let took = began.elapsed();
        let status = started.expect_err("StartContainer must fail");
        let message = status.message();
        eprintln!("CRI {id} ({took:.1?}): {message}");
        assert!(took < PATIENCE, "took {took:?}");
        assert!(message.contains(&format!("container {id}")), "{message}");
        assert!(
            message.contains(&expected),
            "expected {expected:?} in: {message}"
        );
        ids.push(id);
    }

    // A 1 MiB environment value reaches the guest whole; the CRI log splits
    // the long line into partial (P) records, joined again here.
    let big = "e".repeat(1 << 20);
    let mut env = CriNode::container_config("env", WASM_TEST, &["/wasitest.wasm", "env", "BIG"]);
    env.envs = vec![k8s_cri::v1::KeyValue {
        key: "BIG".into(),
        value: big.clone(),
    }];
    let id = node.start_container(&pod, &pod_config, env);
    let status = node.wait_exited(&id);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let log = std::fs::read_to_string(node.dir().join("logs/bad/env.log")).unwrap();
    let stdout: String = log
        .lines()
        .filter_map(|l| {
            let mut fields = l.splitn(4, ' ');
            let (_, stream, tag, text) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next().unwrap_or(""),
            );
            (stream == "stdout").then(|| {
                if tag == "F" {
                    format!("{text}\n")
                } else {
                    text.to_string()
                }
            })
        })
        .collect();
    assert!(
        stdout == format!("BIG={big}\n"),
        "{} bytes came back",
        stdout.len()
    );
    ids.push(id);

    assert!(!node.log().contains("panicked"), "{}", node.log());
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&ids);
}
