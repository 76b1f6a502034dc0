//! What ctr passes for the process: entrypoints that are symlinks (out of
//! the root, into the host, in a loop), and argv and environment that are
//! not UTF-8 or are huge.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd, CtrOutput, RUNTIME};

use super::{assert_fails, assert_no_fifos, bad_dir, bad_mount, containerd, test_module};

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
