//! The node's containerd config (TOML the node's operator or distribution
//! wrote) as the node installer reads and edits it.
//!
//! Input: one flags byte, then the config text. Flags: bit 0 picks the CRI
//! plugin layout (version 2 or 3), bit 1 runc's SystemdCgroup, bit 2 whether
//! runc is to be added, bits 3-4 the import path added.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use node_installer::config::{
    add_import, set_wasmtime_runtime, Config, Runc, Runtime, Version, ANNOTATIONS, HANDLER,
    RUNTIME_TYPE,
};
use toml_edit::Item;

const IMPORTS: [&str; 4] = [
    "/etc/containerd/conf.d/99-wasmtime.toml",
    "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.d/wasmtime.toml",
    "conf.d/*.toml",
    "/odd \"quoted\" \\ path\n.toml",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    // The installer reads the file as a string: not UTF-8 is an I/O error.
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let path = Path::new("/etc/containerd/config.toml");
    let Ok(config) = Config::parse(path, text) else {
        return;
    };
    // Unedited, the text comes back with the same meaning, and is then a
    // fixed point. Not byte for byte: toml_edit writes CRLF as LF, ends the
    // last line and groups interleaved dotted keys of one table.
    let unedited = config.to_text();
    if unedited != text {
        // (Compared as Debug text: NaN is not equal to itself.)
        let meaning = |t: &str| format!("{:?}", toml::from_str::<toml::Table>(t).ok());
        assert_eq!(
            meaning(&unedited),
            meaning(text),
            "parse + to_text changed the meaning"
        );
        let stable = reparse(path, &unedited, "to_text").to_text();
        assert_eq!(stable, unedited, "to_text is not a fixed point");
    }
    let _ = (config.version(), config.imports(), config.grpc_address());
    let version = if flags & 1 == 0 {
        Version::V2
    } else {
        Version::V3
    };
    let want = (flags & 4 != 0).then_some(Runc {
        systemd_cgroup: flags & 2 != 0,
    });
    check_runtime(path, &config, version, want);
    check_import(path, &config, IMPORTS[usize::from(flags >> 3) & 3]);
});

fn reparse(path: &Path, text: &str, what: &str) -> Config {
    Config::parse(path, text)
        .unwrap_or_else(|e| panic!("{what} wrote TOML it cannot read back: {e}\n---\n{text}"))
}

/// `set_wasmtime_runtime`: the output parses, says what was asked (the
/// handler with no `SystemdCgroup`, runc where asked), keeps the runtimes and
/// keys that were there, and is a fixed point (the function's documented
/// idempotence).
fn check_runtime(path: &Path, config: &Config, version: Version, want: Option<Runc>) {
    let mut edited = config.clone();
    set_wasmtime_runtime(&mut edited.doc, version, want);
    let text = edited.to_text();
    let again = reparse(path, &text, "set_wasmtime_runtime");
    assert_eq!(
        again.runtime(version, HANDLER),
        Some(Runtime {
            runtime_type: Some(RUNTIME_TYPE.to_string()),
            systemd_cgroup: None,
        }),
        "{text}"
    );
    let runtimes = again
        .doc
        .get("plugins")
        .and_then(|p| p.get(version.cri_plugin()))
        .and_then(|p| p.get("containerd"))
        .and_then(|c| c.get("runtimes"))
        .and_then(Item::as_table_like)
        .expect("a runtimes table");
    let wasmtime = runtimes.get(HANDLER).expect("wasmtime");
    for key in ["pod_annotations", "container_annotations"] {
        let listed = wasmtime.get(key).and_then(Item::as_array).expect(key);
        assert!(
            listed.iter().any(|v| v.as_str() == Some(ANNOTATIONS)),
            "{key}: {text}"
        );
    }
    if let Some(runc) = want {
        let added = again.runtime(version, "runc");
        assert!(added.is_some(), "no runc: {text}");
        if config.runtime(version, "runc").is_none() {
            assert_eq!(
                added.and_then(|r| r.systemd_cgroup),
                Some(runc.systemd_cgroup),
                "{text}"
            );
        }
    }
    // What was configured stays: other runtimes, the default, the top-level keys.
    if let Some(before) = config.runtime(version, "runc") {
        assert_eq!(again.runtime(version, "runc"), Some(before), "{text}");
    }
    if let Some(before) = config.default_runtime_name(version) {
        assert_eq!(again.default_runtime_name(version), Some(before), "{text}");
    }
    assert_eq!(again.version_number().ok(), config.version_number().ok());
    assert_eq!(again.imports(), config.imports());
    assert_eq!(again.grpc_address(), config.grpc_address());
    // Idempotent: on the edited document and on the file read back.
    let mut twice = edited.clone();
    set_wasmtime_runtime(&mut twice.doc, version, want);
    assert_eq!(
        twice.to_text(),
        text,
        "a second edit (in memory) changed the text"
    );
    let mut reread = again;
    set_wasmtime_runtime(&mut reread.doc, version, want);
    assert_eq!(
        reread.to_text(),
        text,
        "a second edit (of the file) changed the text"
    );
}

/// `add_import`: the path is listed once, after the imports already there,
/// nothing else changes, and a second call changes nothing.
fn check_import(path: &Path, config: &Config, import: &str) {
    let mut edited = config.clone();
    add_import(&mut edited.doc, import);
    let text = edited.to_text();
    let again = reparse(path, &text, "add_import");
    let mut want = config.imports();
    if !want.iter().any(|i| i == import) {
        want.push(import.to_string());
    }
    assert_eq!(again.imports(), want, "{text}");
    assert_eq!(again.version_number().ok(), config.version_number().ok());
    assert_eq!(again.grpc_address(), config.grpc_address());
    for version in [Version::V2, Version::V3] {
        assert_eq!(
            again.runtime(version, "runc"),
            config.runtime(version, "runc")
        );
        assert_eq!(
            again.runtime(version, HANDLER),
            config.runtime(version, HANDLER)
        );
    }
    let mut twice = edited.clone();
    add_import(&mut twice.doc, import);
    assert_eq!(
        twice.to_text(),
        text,
        "a second add_import changed the text"
    );
    let mut reread = again;
    add_import(&mut reread.doc, import);
    assert_eq!(
        reread.to_text(),
        text,
        "a second add_import (of the file) changed the text"
    );
}
