//! What the node does around guests under `ctr run`: a clear error and no
//! leftovers for a bad entrypoint, twenty containers at once, thirty tasks
//! through one pod's shim, the OOM killer and its event, the node's code
//! cache, and an image of platform wasi/wasm.

use shim_tests::events::Events;
use shim_tests::images::{HELLO_WASI, WASM_TEST};
use shim_tests::{unique_id, Containerd};

use super::containerd;

/// `ctr run` of `args` fails naming the container and `expected`, and
/// leaves nothing.
fn assert_create_fails(c: &Containerd, name: &str, args: &[&str], expected: &str) {
    let id = unique_id(name);
    let out = c.run(&id, WASM_TEST, &[], args);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains(&format!("container {id}")),
        "the error names the container: {out:?}"
    );
    assert!(
        out.stderr.contains(expected),
        "expected {expected:?} in: {}",
        out.stderr
    );
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);
}

#[test]
fn bad_input_gives_a_clear_error_and_leaves_nothing() {
    let c = containerd();
    assert_create_fails(
        &c,
        "missing",
        &["/nope.wasm"],
        "entrypoint \"/nope.wasm\" not found",
    );
    assert_create_fails(
        &c,
        "notwasm",
        &["/notwasm.wasm"],
        "/notwasm.wasm is neither WebAssembly nor a native executable",
    );
    assert_create_fails(
        &c,
        "corrupt",
        &["/corrupt.wasm"],
        "/corrupt.wasm is not valid WebAssembly",
    );
    assert_create_fails(&c, "import", &["/unknown-import.wasm"], "env::mystery");
    assert_create_fails(
        &c,
        "export",
        &["/exports.wasm#nope"],
        "no exported function `nope`",
    );
    assert_create_fails(&c, "dir", &["/data"], "cannot read entrypoint /data");
}

#[test]
fn twenty_containers_in_parallel() {
    let c = containerd();
    let ids: Vec<String> = (0..20).map(|n| unique_id(&format!("par{n}"))).collect();
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(|| c.run(id, WASM_TEST, &[], &["/wasitest.wasm", "args", id])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (id, out) in ids.iter().zip(&outputs) {
        assert_eq!(out.code, 0, "{id}: {out:?}");
        assert!(
            out.stdout.contains(&format!("argv[2]={id}")),
            "{id}: {out:?}"
        );
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.assert_clean(&ids);
}

#[test]
fn tasks_of_one_pod_come_and_go_through_its_running_shim() {
    // As under kubelet: a sandbox holds the pod's shim; containers of the pod
    // (same sandbox-id annotation) start, exit and are removed through it.
    let c = containerd();
    let (annotation, sandbox) = c.start_pod();
    let mut ids = vec![sandbox.clone()];
    for n in 0..30 {
        let id = unique_id(&format!("task{n}"));
        let out = c.run(
            &id,
            WASM_TEST,
            &["--annotation", &annotation],
            &["/wasitest.wasm", "hello"],
        );
        assert_eq!(out.code, 0, "task {n}: {out:?}");
        assert_eq!(c.shims().len(), 1, "task {n}: one shim for the pod");
        ids.push(id);
    }
    c.remove(&sandbox);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.assert_clean(&ids);
}

#[test]
fn a_guest_past_its_memory_limit_is_oom_killed_and_reported() {
    let c = containerd();
    let events = Events::watch(&c);
    let id = unique_id("oom");
    // 64 MiB limit, 300 MiB allocated and touched.
    let limit = (64u64 << 20).to_string();
    let out = c.run(
        &id,
        WASM_TEST,
        &["--memory-limit", &limit],
        &["/wasitest.wasm", "alloc", "300"],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(out.code, 137, "killed, not finished: {out:?}");
    assert!(!out.stdout.contains("allocated 300"), "{out:?}");
    assert!(
        events.has("/tasks/oom", &id),
        "TaskOOM for {id} in:\n{}",
        events.text()
    );
    drop(events);
    c.assert_clean(&[&id]);

    // Within the limit the same guest finishes.
    let out = c.run(
        &unique_id("fits"),
        WASM_TEST,
        &["--memory-limit", &limit],
        &["/wasitest.wasm", "alloc", "16"],
    );
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn the_node_cache_compiles_a_guest_once_and_never_loads_a_changed_artifact() {
    let c = containerd();
    let count = |needle: &str| c.log().matches(needle).count();
    for (guest, output) in [
        ("/wasitest.wasm", "hello from wasm\n"),
        // A component's code is mapped through /proc/self/fd inside the container.
        ("/wasitest.component.wasm", "hello from wasm\n"),
    ] {
        for _ in 0..2 {
            let out = c.run(&unique_id("cache"), WASM_TEST, &[], &[guest]);
            assert_eq!((out.code, out.stdout.as_str()), (0, output), "{out:?}");
        }
        let compiled = format!("{guest}: compiled into the node's cache");
        let mapped = format!("{guest}: code mapped from the node's cache");
        assert_eq!((count(&compiled), count(&mapped)), (1, 1), "{}", c.log());
    }
    // The cache is the shim's alone: root's, written once, read-only.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let code = c.dir().join("cache/code");
    let dir = std::fs::metadata(&code).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o700));
    let artifacts: Vec<_> = std::fs::read_dir(&code)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 2, "{artifacts:?}");
    for artifact in &artifacts {
        let meta = std::fs::metadata(artifact).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o400));
        // Someone changes the native code: it must never run.
        let mut bytes = std::fs::read(artifact).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::remove_file(artifact).unwrap();
        std::fs::write(artifact, &bytes).unwrap();
    }
    let out = c.run(&unique_id("cache"), WASM_TEST, &[], &["/wasitest.wasm"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    assert_eq!(count("refusing"), 1, "{}", c.log());
    assert_eq!(count("/wasitest.wasm: compiled into the node's cache"), 2);
}

#[test]
fn an_image_of_platform_wasi_wasm_runs_once_imported_for_that_platform() {
    // What `docker buildx --platform wasi/wasm` publishes: the image index
    // names platform wasi/wasm, not the node's linux/amd64.
    let c = Containerd::start();
    let image = HELLO_WASI;
    // `ctr images import` keeps only the node's platform unless told otherwise.
    let out = c.try_import("hello-wasi.tar", &[]);
    assert!(
        out.code != 0 && out.stderr.contains("image might be filtered out"),
        "{out:?}"
    );
    assert!(!c.ctr(&["images", "ls", "-q"]).stdout.contains(image));
    for (flags, n) in [
        (&["--platform", "wasi/wasm"][..], 0),
        (&["--all-platforms"], 1),
    ] {
        c.ctr(&["images", "rm", image]);
        let out = c.try_import("hello-wasi.tar", flags);
        assert_eq!(out.code, 0, "{flags:?}: {out:?}");
        for platform in [&["--platform", "wasi/wasm"][..], &[]] {
            let id = unique_id(&format!("wasi{n}"));
            let out = c.run(&id, image, platform, &[]);
            assert_eq!(
                (out.code, out.stdout.lines().next()),
                (
                    0,
                    Some("Hello from WebAssembly! Running in wasmtime under containerd.")
                ),
                "import {flags:?}, run {platform:?}: {out:?}"
            );
            c.assert_clean(&[&id]);
        }
    }
}

/// A handler's `CacheDir` (here from `ctr run --runtime-config-path`) moves
/// the node's stores for its containers, and only for theirs: `shim start`
/// hands the root to the shim it starts.
#[test]
fn a_handlers_cache_dir_moves_the_code_cache_of_its_containers() {
    let c = containerd();
    let artifacts = |root: &std::path::Path| {
        std::fs::read_dir(root.join("code")).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                .count()
        })
    };
    let elsewhere = c.dir().join("elsewhere");
    let options = c.dir().join("cache-dir.toml");
    std::fs::write(
        &options,
        format!("CacheDir = {:?}\n", elsewhere.display().to_string()),
    )
    .unwrap();
    let flag = format!("--runtime-config-path={}", options.display());
    let out = c.run(
        &unique_id("cachedir"),
        WASM_TEST,
        &[&flag],
        &["/wasitest.wasm"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    assert_eq!(artifacts(&elsewhere), 1, "{}", c.log());
    assert_eq!(artifacts(&c.dir().join("cache")), 0, "{}", c.log());
    let out = c.run(&unique_id("default"), WASM_TEST, &[], &["/wasitest.wasm"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(artifacts(&c.dir().join("cache")), 1, "{}", c.log());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&elsewhere).unwrap().mode() & 0o777, 0o700);
}
