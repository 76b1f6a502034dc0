//! The shim binary's CLI contract, as containerd exercises it.

use std::process::Command;

fn shim() -> Command {
    Command::new(shim_tests::shim_binary())
}

/// Reads field 1 (`name`, a short string) of a RuntimeInfo protobuf.
fn decode_runtime_name(bytes: &[u8]) -> Option<String> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let name = rest.get(..len as usize)?;
    (tag == 0x0a).then(|| String::from_utf8_lossy(name).into_owned())
}

#[test]
fn version_flag_prints_the_version() {
    for flag in ["-v", "--version"] {
        let out = shim().arg(flag).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("containerd-shim-wasmtime-v1 "), "{text}");
        assert!(text.contains("io.containerd.wasmtime.v1"), "{text}");
    }
}

#[test]
fn info_flag_answers_with_runtime_info() {
    // containerd 2.x asks `-info` (and pipes runtime options on stdin).
    let out = shim()
        .arg("-info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        decode_runtime_name(&out.stdout).as_deref(),
        Some("io.containerd.wasmtime.v1")
    );
}

#[test]
fn unknown_flags_fail_cleanly_without_a_panic() {
    let out = shim().arg("-no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flag provided but not defined: -no-such-flag"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn containerd_2_reads_the_runtime_info_through_the_shim() {
    // containerd 2.x asks a runtime for its info by running `shim -info`
    // (the introspection API; `ctr plugins inspect-runtime`). containerd 1.x
    // has no such call, so on 1.x there is nothing to check.
    let version = shim_tests::containerd_version();
    if !version.is_v2() {
        eprintln!("containerd {version} has no runtime introspection (`-info`): nothing to check");
        return;
    }
    let c = shim_tests::Containerd::start();
    let out = c.ctr(&[
        "plugins",
        "inspect-runtime",
        "--runtime",
        shim_tests::RUNTIME,
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
    assert!(
        out.stdout
            .contains(r#""Name": "io.containerd.wasmtime.v1""#),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!(r#""Version": "{}""#, env!("CARGO_PKG_VERSION"))),
        "{out:?}"
    );
}
