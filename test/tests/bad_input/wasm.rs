//! Bad and huge WebAssembly: corrupt, empty, 10 000 imports, a component
//! of a world the shim does not run, and 100 MB modules (with and without
//! a memory limit). The modules are encoded by hand, with only what these
//! inputs need.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd, CtrOutput};

use super::{assert_fails, bad_dir, bad_mount, containerd, noise, test_module, HEADER, PATIENCE};

/// `n` as unsigned LEB128.
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

/// A name: its length, then its bytes.
fn name(text: &str, out: &mut Vec<u8>) {
    leb(text.len(), out);
    out.extend_from_slice(text.as_bytes());
}

/// Section `id` with `body`.
fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len(), out);
    out.extend_from_slice(body);
}

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

/// A process's peak resident set size in KiB (`VmHWM`).
fn hwm_kib(pid: i32) -> u64 {
    shim_tests::procfs::status_kib(pid, "VmHWM").unwrap_or(0)
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
