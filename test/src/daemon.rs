//! Starting and stopping a private containerd process, shared by the two
//! ways the tests drive one: [`crate::Containerd`] (with `ctr`) and
//! [`crate::cri::CriNode`] (through the CRI). Each gets a fresh temporary
//! directory; on the way out everything that names it is killed and
//! everything mounted under it unmounted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::environment::{containerd_binary, containerd_dir, shim_dir};
use crate::procfs::{kill, mounts_under, processes_naming};

/// A fresh directory for one node, `wasmtime-shim-test-<pid>-<n>` in the
/// temporary directory.
pub(crate) fn tempdir() -> PathBuf {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("wasmtime-shim-test-{}-{n}", std::process::id()));
        if fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    panic!("cannot create a temporary directory in {}", base.display());
}

/// Starts `containerd --config <dir>/config.toml` with the shim under test
/// first on its `PATH` (then `CONTAINERD_DIR`, so containerd finds that
/// version's runc shim), appending to `<dir>/containerd.log`; inside the network
/// namespace `netns` if given (with `nsenter --net`: `ip netns exec` would
/// remount /sys and hide the cgroups).
///
/// containerd runs under `tini -s`, a child subreaper that reaps orphans, as
/// PID 1 does on a real node. PID 1 of the build machines reaps nothing, so a
/// guest orphaned by a killed shim would otherwise stay a zombie, and an
/// unreaped zombie keeps its cgroup v1 directory from being removed.
pub(crate) fn spawn_containerd(dir: &Path, netns: Option<&str>) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .expect("containerd log");
    let mut path = vec![shim_dir()];
    path.extend(containerd_dir());
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(path).expect("PATH");
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/run/netns/{netns}")).arg("tini");
            command
        }
        None => Command::new("tini"),
    };
    command
        .args(["-s", "--"])
        .arg(containerd_binary())
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        // The node's code cache, private to this containerd.
        .env("WASMTIME_SHIM_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start containerd")
}

/// containerd's `[timeouts]` for its shims, multiplied by the node's
/// [`slowness`](crate::environment::slowness) (containerd's defaults: a task's
/// state 2 s, a shim's load and cleanup 5 s, its shutdown 3 s); nothing at 1.
/// A state call that times out gives CRI a pid of 0, and a container of the
/// pod is then made in `/proc/0/ns/...`.
pub(crate) fn timeouts_config() -> String {
    let n = crate::environment::slowness();
    if n == 1 {
        return String::new();
    }
    format!(
        "[timeouts]\n  \"io.containerd.timeout.task.state\" = \"{}s\"\n  \
         \"io.containerd.timeout.shim.load\" = \"{}s\"\n  \
         \"io.containerd.timeout.shim.cleanup\" = \"{}s\"\n  \
         \"io.containerd.timeout.shim.shutdown\" = \"{}s\"\n",
        2 * n,
        5 * n,
        5 * n,
        3 * n
    )
}

/// SIGTERM, then SIGKILL after 10 s.
pub(crate) fn stop_containerd(mut child: Child) {
    let _ = kill(child.id() as i32, 15);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether a command line is containerd itself (`containerd --config`, or
/// `/path/to/containerd --config`) or the tini above it.
pub(crate) fn is_daemon(cmdline: &str) -> bool {
    let mut words = cmdline.split_whitespace();
    let program = words.next().unwrap_or_default();
    (program.rsplit('/').next() == Some("containerd") && words.next() == Some("--config"))
        || cmdline.starts_with("tini -s")
}

/// Kills every process whose command line names `dir`, unmounts everything
/// under it, and removes it.
pub(crate) fn cleanup_dir(dir: &Path) {
    for (pid, _) in processes_naming(&dir.to_string_lossy()) {
        let _ = kill(pid, 9);
    }
    let mut mounts = mounts_under(dir);
    mounts.reverse();
    for mount in mounts {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
    let _ = fs::remove_dir_all(dir);
}
