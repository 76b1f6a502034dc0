//! What the tests run against, and where it is: the workspace, the built
//! images, the shim binary under test, the containerd under test (the
//! machine's, or `CONTAINERD_DIR`'s) and its version, the cgroup driver its
//! nodes use (`CGROUP_DRIVER`); and the check that the tests may start a
//! containerd at all (root, binaries present), which fails loudly rather
//! than letting a CI without root pass silently.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The directory holding the shim binary under test.
pub(crate) fn shim_dir() -> PathBuf {
    let dir = std::env::var_os("SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug"));
    assert!(
        dir.join("containerd-shim-wasmtime-v1").is_file(),
        "no containerd-shim-wasmtime-v1 in {} (run `make build`, or set SHIM_DIR)",
        dir.display()
    );
    dir
}

/// The shim binary under test (`containerd-shim-wasmtime-v1` in `SHIM_DIR`,
/// else `target/debug`).
pub fn shim_binary() -> PathBuf {
    shim_dir().join("containerd-shim-wasmtime-v1")
}

/// Fails the test, saying what is missing, unless it runs as root with the
/// containerd under test at hand; says once which containerd that is.
pub(crate) fn require_root_and_containerd() {
    assert!(
        is_root(),
        "these tests start containerd and need root (CI runs them as root)"
    );
    match containerd_dir() {
        Some(dir) => assert!(
            ["containerd", "ctr", "containerd-shim-runc-v2"]
                .iter()
                .all(|b| dir.join(b).is_file()),
            "CONTAINERD_DIR={} must hold containerd, ctr and containerd-shim-runc-v2",
            dir.display()
        ),
        None => assert!(
            which("containerd") && which("ctr"),
            "these tests need containerd and ctr on PATH (`make deps`)"
        ),
    }
    let driver = cgroup_driver();
    // Once per test binary: which containerd this run is against.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "containerd under test: {}, cgroup driver {driver:?}",
            containerd_version()
        )
    });
}

/// How a node's containers get their cgroups: as kubelet's `cgroupDriver`
/// and containerd's `SystemdCgroup` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    /// cgroupfs paths (`/k8s.io/<id>`, `/default/<id>`), written directly.
    Cgroupfs,
    /// systemd units: CRI pods get kubelet's `*.slice` parent and
    /// runc `SystemdCgroup = true` (the shim follows the path), so each
    /// container is a `cri-containerd-<id>.scope`;
    /// ctr's containers get `--cgroup system.slice:wasmtime-test:<id>`.
    Systemd,
}

/// `CGROUP_DRIVER`: `systemd`, or `cgroupfs` (the default). The systemd
/// driver needs systemd as PID 1 (the guest of test/vm/): asking for it
/// elsewhere fails the test rather than testing cgroupfs under its name.
pub fn cgroup_driver() -> CgroupDriver {
    match std::env::var("CGROUP_DRIVER").as_deref() {
        Err(_) | Ok("") | Ok("cgroupfs") => CgroupDriver::Cgroupfs,
        Ok("systemd") => {
            assert!(
                systemd_booted(),
                "CGROUP_DRIVER=systemd needs systemd as PID 1 (run the suites in test/vm/)"
            );
            CgroupDriver::Systemd
        }
        Ok(other) => panic!("CGROUP_DRIVER={other}: expected cgroupfs or systemd"),
    }
}

/// Whether systemd is PID 1 (what `sd_booted()` checks).
pub fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `CONTAINERD_DIR`: the directory of the containerd under test, if not the
/// machine's.
pub fn containerd_dir() -> Option<PathBuf> {
    std::env::var_os("CONTAINERD_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// The `containerd` binary under test.
pub fn containerd_binary() -> PathBuf {
    containerd_dir()
        .map(|d| d.join("containerd"))
        .unwrap_or_else(|| PathBuf::from("containerd"))
}

/// The `ctr` binary of the containerd under test.
pub fn ctr_binary() -> PathBuf {
    containerd_dir()
        .map(|d| d.join("ctr"))
        .unwrap_or_else(|| PathBuf::from("ctr"))
}

/// The version of the containerd under test, from `containerd --version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
    /// As containerd prints it, e.g. `1.7.24~ds1` or `2.1.9+unknown`.
    pub text: String,
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.text, containerd_binary().display())
    }
}

impl ContainerdVersion {
    /// From `containerd --version`'s output:
    /// `containerd github.com/containerd/containerd/v2 2.1.9+unknown <revision>`.
    pub fn parse(output: &str) -> Option<Self> {
        let text = output.split_whitespace().nth(2)?.trim_start_matches('v');
        let mut numbers = text
            .split(|c: char| !c.is_ascii_digit())
            .map(str::parse::<u32>);
        Some(Self {
            major: numbers.next()?.ok()?,
            minor: numbers.next()?.ok()?,
            text: text.to_string(),
        })
    }

    /// containerd 2.x: config `version = 3`, CRI split into
    /// `io.containerd.cri.v1.{runtime,images}`.
    pub fn is_v2(&self) -> bool {
        self.major >= 2
    }
}

/// The version of the containerd under test (asked once per test binary).
pub fn containerd_version() -> &'static ContainerdVersion {
    static VERSION: std::sync::OnceLock<ContainerdVersion> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let out = Command::new(containerd_binary())
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{} --version: {e}", containerd_binary().display()));
        let text = String::from_utf8_lossy(&out.stdout);
        ContainerdVersion::parse(&text)
            .unwrap_or_else(|| panic!("cannot read the version in {text:?}"))
    })
}

/// Whether this process runs as uid 0.
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `binary` is on `PATH`.
fn which(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false)
}

/// How much slower than these machines the node under test runs:
/// `TEST_SLOWNESS` (default 1; the cgroup v2 guest of test/vm/, emulated,
/// sets 16). Upper bounds on how long something may take are multiplied by
/// it ([`slow`]); what a test checks stays the same.
pub fn slowness() -> u32 {
    std::env::var("TEST_SLOWNESS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// `bound` on this node: multiplied by [`slowness`].
pub fn slow(bound: std::time::Duration) -> std::time::Duration {
    bound * slowness()
}

/// A count from the environment variable `var`, else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether files under `dir` can be given through idmapped mounts (what a
/// pod with its own user namespace needs of containerd's directories): not
/// on tmpfs before Linux 6.3 (the cgroup v2 guest's /tmp, on 6.1).
pub fn idmapped_mounts_under(dir: &Path) -> bool {
    let filesystem = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let kernel = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    filesystem != "tmpfs" || kernel >= (6, 3)
}

#[cfg(test)]
mod tests {
    use super::ContainerdVersion;

    #[test]
    fn reads_the_versions_debian_packages_print() {
        for (output, major, minor, v2) in [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                1,
                6,
                false,
            ),
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
                1,
                7,
                false,
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown ",
                2,
                1,
                true,
            ),
            ("containerd containerd.io v2.0.0 207ad711", 2, 0, true),
        ] {
            let v = ContainerdVersion::parse(output).expect(output);
            assert_eq!(
                (v.major, v.minor, v.is_v2()),
                (major, minor, v2),
                "{output}"
            );
        }
        assert_eq!(ContainerdVersion::parse("containerd"), None);
    }
}
