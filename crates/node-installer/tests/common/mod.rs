//! A fake node for the installer: a host root in a temp dir, a stand-in
//! shim binary, and a restart command that only records that it ran (the
//! real-containerd tests add a containerd that it really restarts).

#![allow(dead_code)] // each test file uses its own part of the harness

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const INSTALLER: &str = env!("CARGO_BIN_EXE_containerd-wasmtime-installer");

pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file and directory under a host root with its mode and bytes, to
/// compare a node before install and after uninstall.
pub type Snapshot = BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>;

pub struct Node {
    pub dir: tempfile::TempDir,
    /// Extra arguments for every run (e.g. --cri-socket).
    pub extra: Vec<String>,
    /// The restart command; by default it only records.
    pub restart: String,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wasmtime-installer-")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("host")).unwrap();
        fs::create_dir(dir.path().join("image")).unwrap();
        fs::write(
            dir.path().join("image/containerd-shim-wasmtime-v1"),
            b"\x7fELF stand-in shim v1",
        )
        .unwrap();
        let restart = format!(
            "echo \"$UNIT\" >> {}",
            dir.path().join("restarts").display()
        );
        Self {
            dir,
            extra: Vec::new(),
            restart,
        }
    }

    pub fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    /// Writes a file on the fake host (a host path, e.g. /etc/containerd/config.toml).
    pub fn put(&self, host_path: &str, text: &str) {
        let path = self.host().join(host_path.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    pub fn read(&self, host_path: &str) -> Option<String> {
        fs::read_to_string(self.host().join(host_path.trim_start_matches('/'))).ok()
    }

    pub fn set_shim(&self, bytes: &[u8]) {
        fs::write(
            self.dir.path().join("image/containerd-shim-wasmtime-v1"),
            bytes,
        )
        .unwrap();
    }

    /// The units the restart command was called for, in order.
    pub fn restarts(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("restarts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn run(&self, command: &str, args: &[&str]) -> Output {
        let out = Command::new(INSTALLER)
            .arg(command)
            .arg("--host-root")
            .arg(self.host())
            .arg("--shim")
            .arg(self.dir.path().join("image/containerd-shim-wasmtime-v1"))
            .arg("--restart-command")
            .arg(&self.restart)
            .args(&self.extra)
            .args(args)
            // Not in a cluster: labelling is skipped (and says so).
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run the installer");
        eprintln!(
            "--- installer {command}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts success; returns the log.
    pub fn ok(&self, command: &str, args: &[&str]) -> String {
        let out = self.run(command, args);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "installer {command} failed:\n{log}");
        log
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut files = Snapshot::new();
        walk(&self.host(), &self.host(), &mut files);
        files
    }
}

fn walk(root: &Path, dir: &Path, files: &mut Snapshot) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let mode = meta.permissions().mode();
        if meta.is_dir() {
            files.insert(rel, (mode, None));
            walk(root, &path, files);
        } else {
            files.insert(rel, (mode, Some(fs::read(&path).unwrap())));
        }
    }
}

/// Asserts two snapshots are equal, naming the first path that differs.
pub fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    for (path, entry) in before {
        match after.get(path) {
            None => panic!("{what}: {} is gone", path.display()),
            Some(other) => assert!(
                other == entry,
                "{what}: {} differs (mode or bytes)",
                path.display()
            ),
        }
    }
    for path in after.keys() {
        assert!(
            before.contains_key(path),
            "{what}: {} was left behind",
            path.display()
        );
    }
}
