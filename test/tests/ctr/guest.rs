//! What a guest sees and does under `ctr run`: its output, arguments and
//! environment, the image's files and a bind mount (and nothing outside its
//! root), its entrypoint (by path, by `PATH`, an export), exit codes and
//! traps, a component's run, stdin.

use shim_tests::images::WASM_TEST;
use shim_tests::unique_id;

use super::containerd;

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
