//! Whole runtime specs (`ctr run --config`) with a bad process or linux
//! section, and mounts that cannot be mounted.

use std::time::{Duration, Instant};

use shim_tests::{unique_id, Containerd, CtrOutput, RUNTIME};

use super::{assert_fails, assert_fails_clean, containerd, test_module};

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
    // A spec that asks for a terminal gets one, though ctr did not: the
    // guest writes to a pty (its newlines become CRLF) copied to stdout.
    let id = unique_id("spec-tty");
    let mut with_terminal = spec(&c, &id);
    with_terminal["process"]["terminal"] = true.into();
    let (out, _) = run_spec(&c, &id, &with_terminal);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\r\n"),
        "{out:?}\n{}",
        c.log()
    );
    c.assert_clean(&[&id]);

    let cases: [(&str, Change, &[&str]); 3] = [
        (
            "no-process",
            |s| {
                s.as_object_mut().unwrap().remove("process");
            },
            &["missing process in spec"],
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
