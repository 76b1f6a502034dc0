//! A wasm guest that tries every way out of its container (`escape.wasm
//! probe`): /proc, /sys, /dev, `..` walks towards a file planted on the
//! host, links to /proc/self/mem, under a writable or read-only root and
//! with a bind mount. It reaches nothing, and changes nothing on the host.

use std::fs;

use shim_tests::images::{sha256_file, WASM_TEST};
use shim_tests::leaks::dir_names;
use shim_tests::{shim_binary, unique_id};

use super::{containerd, identity, marker, reached, show};

/// `escape.wasm probe` in a container with a writable root, a read-only
/// root, and a writable bind mount of a host directory (under either root).
/// A file with a unique marker is planted on the host next to containerd's
/// root, outside every rootfs. The guest reaches nothing: no REACHED line,
/// the marker never in its output, and afterwards the planted file, the
/// volume, the test directory and the shim binary are as they were. A
/// control run first shows that the guest does find the marker where its
/// grant holds a copy.
#[test]
fn a_guest_that_tries_everything_reaches_nothing() {
    let c = containerd();
    // Once first, so that what a run creates in the test directory (the fifo
    // directory, the code cache) exists before it is listed.
    let out = c.run(
        &unique_id("warm"),
        WASM_TEST,
        &[],
        &["/wasitest.wasm", "hello"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let marker = marker("escape");
    // In the test directory itself: 5 levels of `..` above each rootfs
    // (<dir>/state/io.containerd.runtime.v2.task/default/<id>/rootfs) and one
    // above the volume.
    let planted = c.dir().join("planted-escape.txt");
    fs::write(&planted, &marker).unwrap();
    let planted_arg = planted
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let volume = c.dir().join("volume");
    fs::create_dir(&volume).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        volume.display()
    );
    // A volume that holds a copy of the planted file: the control.
    let control = c.dir().join("control");
    fs::create_dir_all(control.join("sub")).unwrap();
    fs::write(control.join("planted-escape.txt"), &marker).unwrap();
    let shim = shim_binary();
    let shim_before = (sha256_file(&shim), identity(&shim));
    let listing_before = dir_names(c.dir());

    // The control: where the grant does hold the file (`..` from a
    // directory of the volume), the guest's walk finds the marker and says
    // so; everywhere else below, the same walk must find nothing.
    let id = unique_id("control");
    let control_mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        control.display()
    );
    let out = c.run(
        &id,
        WASM_TEST,
        &["--mount", &control_mount],
        &[
            "/escape.wasm",
            "probe",
            &planted_arg,
            &marker,
            "--",
            "/data/sub",
        ],
    );
    let walks: Vec<String> = reached(&out.stdout)
        .into_iter()
        .filter(|l| l.starts_with("REACHED walk"))
        .collect();
    assert_eq!(
        walks,
        ["REACHED walk /data/sub/../planted-escape.txt"],
        "the control: {out:?}"
    );
    assert!(!out.stdout.contains(&marker), "{out:?}");
    c.assert_clean(&[&id]);

    let variants: [(&str, Vec<&str>, Vec<&str>); 4] = [
        ("writable-root", vec![], vec![]),
        ("read-only-root", vec!["--read-only"], vec![]),
        ("bind-mount", vec!["--mount", &mount], vec!["/data"]),
        (
            "read-only-root-bind-mount",
            vec!["--read-only", "--mount", &mount],
            vec!["/data"],
        ),
    ];
    let mut problems = Vec::new();
    for (name, flags, dirs) in &variants {
        let id = unique_id(name);
        let mut args = vec!["/escape.wasm", "probe", &planted_arg, &marker, "--"];
        args.extend(dirs);
        let out = c.run(&id, WASM_TEST, flags, &args);
        show(name, &out.stdout);
        if out.code != 0 || !out.stdout.lines().any(|l| l == "probe done") {
            problems.push(format!("{name}: the probe did not finish: {out:?}"));
        }
        for line in reached(&out.stdout) {
            problems.push(format!("{name}: {line}"));
        }
        if out.stdout.contains(&marker) || out.stderr.contains(&marker) {
            problems.push(format!("{name}: the planted marker is in the output"));
        }
        c.assert_clean(&[&id]);
    }
    assert_eq!(
        fs::read_to_string(&planted).unwrap(),
        marker,
        "the planted file changed"
    );
    assert_eq!(
        dir_names(&volume),
        Vec::<String>::new(),
        "the guest left files in the volume"
    );
    assert_eq!(
        dir_names(c.dir()),
        listing_before,
        "something new appeared in the test directory"
    );
    // A rebuild replaces the binary (a new inode); a write into it keeps it.
    if identity(&shim) == shim_before.1 {
        assert_eq!(sha256_file(&shim), shim_before.0, "the shim binary changed");
    } else {
        eprintln!(
            "  {} was replaced (rebuilt?) during the test",
            shim.display()
        );
    }
    assert!(
        problems.is_empty(),
        "the guest got out of its sandbox:\n{}",
        problems.join("\n")
    );
}
