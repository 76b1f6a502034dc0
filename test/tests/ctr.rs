//! End-to-end: wasm containers through a real containerd with `ctr run`.
//! Each test starts its own containerd (see the harness in src/lib.rs).

use shim_tests::images::{HELLO_WASI, WASM_TEST};
use shim_tests::{unique_id, Containerd};

fn containerd() -> Containerd {
    let containerd = Containerd::start();
    containerd.import("wasm-test.tar");
    containerd
}

#[test]
fn hello_output_comes_back_through_containerd() {
    let c = containerd();
    let id = unique_id("hello");
    let out = c.run(&id, WASM_TEST, &[], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hello from wasm\n");
    c.assert_clean(&[&id]);
}

#[test]
fn args_and_env_reach_the_guest_through_wasi() {
    let c = containerd();
    let id = unique_id("args");
    let out = c.run(
        &id,
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "args", "one", "two words"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "argv[0]=/wasitest.wasm\nargv[1]=args\nargv[2]=one\nargv[3]=two words\n"
    );

    let id = unique_id("env");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--env", "GREETING=hi there"],
        &["/wasitest.wasm", "env", "GREETING"],
    );
    assert_eq!(out.stdout, "GREETING=hi there\n", "{out:?}");
    // The shim's own environment is not the guest's.
    let out = c.run(
        &unique_id("env"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "env", "TTRPC_ADDRESS"],
    );
    assert_eq!(out.stdout, "TTRPC_ADDRESS=(unset)\n", "{out:?}");
}

#[test]
fn entrypoint_resolves_against_path_and_cwd() {
    let c = containerd();
    // The image sets PATH=/bin; /bin/wasitest-on-path.wasm is found by name.
    let out = c.run(
        &unique_id("path"),
        WASM_TEST,
        &[],
        &["wasitest-on-path.wasm", "hello"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    let out = c.run(
        &unique_id("cwd"),
        WASM_TEST,
        &["--cwd", "/bin"],
        &["./wasitest-on-path.wasm", "hello"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
}

#[test]
fn files_from_the_image_and_from_a_bind_mount_are_readable() {
    let c = containerd();
    let out = c.run(
        &unique_id("cat"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "cat", "/data/hello.txt"],
    );
    assert_eq!(out.stdout, "hello from a file in the image\n", "{out:?}");

    let volume = c.dir().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("note.txt"), "from the host volume\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/mnt,options=rbind:ro",
        volume.display()
    );
    let out = c.run(
        &unique_id("mount"),
        WASM_TEST,
        &["--mount", &mount],
        &["/wasitest.wasm", "cat", "/mnt/note.txt"],
    );
    assert_eq!(out.stdout, "from the host volume\n", "{out:?}");
}

#[test]
fn a_native_executable_runs_as_a_linux_container_in_the_same_shim() {
    let c = containerd();
    let out = c.run(
        &unique_id("native"),
        WASM_TEST,
        &[],
        &["/native-hello", "x"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from a native binary (2 args)\n"),
        "{out:?}"
    );
    assert!(
        c.log().contains("/native-hello: a native executable"),
        "the log says which path"
    );
}

#[test]
fn the_guest_cannot_reach_outside_its_root() {
    let c = containerd();
    let secret = c.dir().join("host-secret.txt");
    std::fs::write(&secret, "host only\n").unwrap();
    let escape = format!("/../../../..{}", secret.display());
    let out = c.run(
        &unique_id("escape"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "cat", &escape],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stdout.contains("host only"), "{out:?}");
    let out = c.run(
        &unique_id("escape"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "cat", secret.to_str().unwrap()],
    );
    assert!(out.stdout.starts_with("error:"), "{out:?}");
}

#[test]
fn read_only_root_and_mounts_refuse_writes() {
    let c = containerd();
    // Writable by default.
    let out = c.run(
        &unique_id("rw"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "write", "/new.txt"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "wrote /new.txt\n"),
        "{out:?}"
    );

    let out = c.run(
        &unique_id("ro"),
        WASM_TEST,
        &["--read-only"],
        &["/wasitest.wasm", "write", "/new.txt"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("Operation not permitted"), "{out:?}");

    let volume = c.dir().join("ro-volume");
    std::fs::create_dir(&volume).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/mnt,options=rbind:ro",
        volume.display()
    );
    let out = c.run(
        &unique_id("romount"),
        WASM_TEST,
        &["--mount", &mount],
        &["/wasitest.wasm", "write", "/mnt/x"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("Operation not permitted"), "{out:?}");
    assert!(!volume.join("x").exists());

    // A writable volume stays writable inside a read-only root.
    let rw = c.dir().join("rw-volume");
    std::fs::create_dir(&rw).unwrap();
    let mount = format!("type=bind,src={},dst=/mnt,options=rbind:rw", rw.display());
    let out = c.run(
        &unique_id("rwmount"),
        WASM_TEST,
        &["--read-only", "--mount", &mount],
        &["/wasitest.wasm", "write", "/mnt/x"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "wrote /mnt/x\n"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("x")).unwrap(),
        "written by wasitest\n"
    );
}

#[test]
fn custom_export_entrypoint_runs_that_export() {
    let c = containerd();
    let out = c.run(&unique_id("start"), WASM_TEST, &[], &["/exports.wasm"]);
    assert_eq!(out.stdout, "default _start\n", "{out:?}");
    let out = c.run(
        &unique_id("greet"),
        WASM_TEST,
        &[],
        &["/exports.wasm#greet"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "custom export greet\n"),
        "{out:?}"
    );
}

#[test]
fn exit_codes_and_traps() {
    let c = containerd();
    let out = c.run(
        &unique_id("exit0"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "exit", "0"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = c.run(
        &unique_id("exit42"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "exit", "42"],
    );
    assert_eq!(out.code, 42, "{out:?}");
    assert_eq!(out.stdout, "exiting with 42\n");

    let out = c.run(&unique_id("trap"), WASM_TEST, &[], &["/trap.wasm"]);
    assert_eq!(out.code, 134, "{out:?}");
    assert!(
        out.stderr.contains("unreachable"),
        "the trap is on stderr: {out:?}"
    );
    // The shim log has the status; the container's process stopped writing
    // it before the guest ran (it holds none of containerd's files).
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains("exited with status 134") && l.contains("trap-")),
        "and in the shim log: {log}"
    );
}

#[test]
fn output_written_just_before_exit_is_not_lost() {
    let c = containerd();
    for n in 0..5 {
        let out = c.run(
            &unique_id(&format!("tail{n}")),
            WASM_TEST,
            &[],
            &["/wasitest.wasm", "tail"],
        );
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (3, "last words"),
            "{out:?}"
        );
    }
}

#[test]
fn a_component_runs_with_wasi_cli() {
    let c = containerd();
    let out = c.run(
        &unique_id("component"),
        WASM_TEST,
        &[],
        &["/wasitest.component.wasm", "hello"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    // wasi:cli/exit in WASI 0.2 carries only ok/err: any non-zero status is 1.
    let out = c.run(
        &unique_id("component42"),
        WASM_TEST,
        &[],
        &["/wasitest.component.wasm", "exit", "42"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        c.log()
            .contains("component; running its wasi:cli/run export"),
        "the log says which path"
    );
}

#[test]
fn stdin_reaches_the_guest() {
    let c = containerd();
    let out = c.run_with_stdin(
        &unique_id("stdin"),
        WASM_TEST,
        &["/wasitest.wasm", "echo", "2"],
        "first\nsecond\n",
    );
    assert_eq!(out.stdout, "echo: first\necho: second\n", "{out:?}");
}

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
    let mut events = c
        .ctr_command(&["events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr events");
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
    let _ = events.kill();
    let events = events.wait_with_output().expect("events output");
    let events = String::from_utf8_lossy(&events.stdout);
    assert_eq!(out.code, 137, "killed, not finished: {out:?}");
    assert!(!out.stdout.contains("allocated 300"), "{out:?}");
    assert!(
        events
            .lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&id)),
        "TaskOOM for {id} in:\n{events}"
    );
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
