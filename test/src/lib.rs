//! The test harness: a private, real containerd per test, driven with `ctr`.
//!
//! [`Containerd::start`] writes a config with its own root, state and socket
//! in a temporary directory and puts the freshly built shim first on
//! containerd's `PATH`. Dropping it stops everything it started, also when the
//! test failed: tasks and containers, containerd (by PID), any shim or guest
//! process whose command line names the directory, and every mount under it.
//!
//! These tests need root and containerd; without them they say so and fail,
//! so a CI without root cannot pass silently.

pub mod cri;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Where `make images` puts image tarballs and wasm files.
pub fn images_dir() -> PathBuf {
    workspace().join("target/images")
}

/// The directory holding the shim binary under test.
fn shim_dir() -> PathBuf {
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

fn require_root_and_containerd() {
    assert!(
        nix_is_root(),
        "these tests start containerd and need root (CI runs them as root)"
    );
    assert!(
        which("containerd") && which("ctr"),
        "these tests need containerd and ctr on PATH (`make deps`)"
    );
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn which(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false)
}

/// The result of a `ctr` command.
#[derive(Debug)]
pub struct CtrOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CtrOutput {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

pub const RUNTIME: &str = "io.containerd.wasmtime.v1";
pub const NAMESPACE: &str = "default";

pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    pub fn start() -> Self {
        Self::start_logging("debug")
    }

    /// A private containerd logging at `level` (benchmarks use "info").
    pub fn start_logging(level: &str) -> Self {
        require_root_and_containerd();
        let dir = tempdir();
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  level = "{level}"
"#,
            dir = dir.display()
        );
        fs::write(dir.join("config.toml"), config).expect("write containerd config");
        let child = spawn_containerd(&dir, None);
        let mut containerd = Self {
            dir,
            child: Some(child),
        };
        containerd.wait_ready();
        containerd
    }

    /// Stops containerd; its shims and their tasks keep running.
    pub fn stop_daemon(&mut self) {
        if let Some(child) = self.child.take() {
            stop_containerd(child);
        }
    }

    /// Starts containerd again on the same root, state and socket.
    pub fn start_daemon(&mut self) {
        assert!(self.child.is_none(), "containerd is running");
        self.child = Some(spawn_containerd(&self.dir, None));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket().exists() && self.ctr(&["version"]).code == 0 {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("containerd exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("containerd did not come up in 20s:\n{}", self.log());
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's own log (shim logs included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args);
        command
    }

    pub fn ctr(&self, args: &[&str]) -> CtrOutput {
        self.ctr_command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
            .into()
    }

    /// Imports an image tarball from `target/images`.
    pub fn import(&self, tarball: &str) {
        let path = images_dir().join(tarball);
        assert!(
            path.is_file(),
            "{} is missing: run `make images`",
            path.display()
        );
        let out = self.ctr(&["images", "import", path.to_str().expect("utf-8 path")]);
        assert_eq!(out.code, 0, "import {tarball}: {out:?}");
    }

    /// `ctr run --rm` with the wasmtime runtime; `extra` are flags before the image.
    pub fn run(&self, id: &str, image: &str, extra: &[&str], args: &[&str]) -> CtrOutput {
        self.ctr(
            &self
                .run_args(id, image, extra, args)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    }

    /// Like [`Containerd::run`], with `input` written to the guest's stdin.
    pub fn run_with_stdin(&self, id: &str, image: &str, args: &[&str], input: &str) -> CtrOutput {
        let argv = self.run_args(id, image, &[], args);
        let mut child = self
            .ctr_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("ctr output").into()
    }

    pub fn run_args(&self, id: &str, image: &str, extra: &[&str], args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = ["run", "--rm", "--runtime", RUNTIME]
            .map(String::from)
            .to_vec();
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push(image.to_string());
        argv.push(id.to_string());
        argv.extend(args.iter().map(|s| s.to_string()));
        argv
    }

    /// Starts a detached container (`ctr run -d`) and returns once it is running.
    pub fn run_detached(&self, id: &str, image: &str, args: &[&str]) {
        let mut argv = vec!["run", "-d", "--runtime", RUNTIME, image, id];
        argv.extend(args);
        let out = self.ctr(&argv);
        assert_eq!(out.code, 0, "ctr run -d {id}: {out:?}");
    }

    /// SIGKILLs the task `id`, deletes it once it has exited (waiting up to
    /// 10 s), and deletes the container.
    pub fn remove(&self, id: &str) {
        self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ctr(&["task", "delete", id]).code != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ctr(&["container", "delete", id]);
    }

    /// The wasmtime shim processes serving this containerd, by pid.
    pub fn shims(&self) -> HashMap<i32, String> {
        wasmtime_shims(&self.socket())
    }

    /// The host PID of a task (`ctr task ls`).
    pub fn task_pid(&self, id: &str) -> Option<i32> {
        let out = self.ctr(&["task", "ls"]);
        out.stdout
            .lines()
            .filter_map(|l| {
                let cols: Vec<_> = l.split_whitespace().collect();
                (cols.first() == Some(&id)).then(|| cols.get(1)?.parse().ok())?
            })
            .next()
    }

    /// Everything this containerd's containers could have left behind on the
    /// host: mounts under its directory, processes naming it, cgroups and
    /// bundles of `ids`.
    pub fn leftovers(&self, ids: &[&str]) -> Vec<String> {
        let mut found = left_under(&self.dir);
        found.extend(cgroups_left(NAMESPACE, ids));
        for id in ids {
            let bundle = self
                .dir
                .join("state/io.containerd.runtime.v2.task")
                .join(NAMESPACE)
                .join(id);
            if bundle.exists() {
                found.push(format!("bundle {}", bundle.display()));
            }
        }
        found
    }

    /// Asserts that nothing of `ids` is left, giving the shim a moment to exit.
    pub fn assert_clean(&self, ids: &[&str]) {
        wait_until_clean(
            Duration::from_secs(5),
            || self.leftovers(ids),
            || self.log(),
        );
    }
}

/// Mounts under `dir`, and processes (other than containerd and its tini)
/// whose command line names it: shims, helpers and guests all do.
fn left_under(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = mounts_under(dir)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    found.extend(
        processes_naming(&dir.to_string_lossy())
            .into_iter()
            .filter(|(_, cmd)| !is_daemon(cmd))
            .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
    );
    found
}

/// The cgroup directories left of `ids` under the cgroupfs parent `parent`
/// (containerd puts a container at `/<namespace>/<id>` when no parent is set).
fn cgroups_left(parent: &str, ids: &[impl AsRef<str>]) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        for controller in ["memory", "pids", "cpu,cpuacct", "unified"] {
            let cgroup = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(parent)
                .join(id.as_ref());
            if cgroup.exists() {
                found.push(format!("cgroup {}", cgroup.display()));
            }
        }
    }
    found
}

/// Polls `leftovers` until it is empty; panics after `patience` with what is
/// left and containerd's `log`.
fn wait_until_clean(
    patience: Duration,
    leftovers: impl Fn() -> Vec<String>,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + patience;
    loop {
        let left = leftovers();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:#?}\ncontainerd log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks and containers first, while containerd can still clean up.
        let tasks = self.ctr(&["task", "ls", "-q"]).stdout;
        for id in tasks.lines().filter(|l| !l.is_empty()) {
            self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            self.ctr(&["task", "rm", "-f", id]);
        }
        let containers = self.ctr(&["containers", "ls", "-q"]).stdout;
        for id in containers.lines().filter(|l| !l.is_empty()) {
            self.ctr(&["containers", "rm", id]);
        }
        if let Some(child) = self.child.take() {
            stop_containerd(child);
        }
        cleanup_dir(&self.dir);
    }
}

/// Starts `containerd --config <dir>/config.toml` with the shim under test
/// first on its `PATH`, appending to `<dir>/containerd.log`; inside the network
/// namespace `netns` if given (with `nsenter --net`: `ip netns exec` would
/// remount /sys and hide the cgroups).
///
/// containerd runs under `tini -s`, a child subreaper that reaps orphans, as
/// PID 1 does on a real node. PID 1 of the build machines reaps nothing, so a
/// guest orphaned by a killed shim would otherwise stay a zombie, and an
/// unreaped zombie keeps its cgroup v1 directory from being removed.
fn spawn_containerd(dir: &Path, netns: Option<&str>) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .expect("containerd log");
    let path = format!(
        "{}:{}",
        shim_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/run/netns/{netns}")).arg("tini");
            command
        }
        None => Command::new("tini"),
    };
    command
        .args(["-s", "--", "containerd"])
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

/// SIGTERM, then SIGKILL after 10 s.
fn stop_containerd(mut child: Child) {
    let _ = nix_kill(child.id() as i32, 15);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether a command line is containerd itself or the tini above it.
fn is_daemon(cmdline: &str) -> bool {
    cmdline.starts_with("containerd --config") || cmdline.starts_with("tini -s")
}

/// Kills every process whose command line names `dir`, unmounts everything
/// under it, and removes it.
fn cleanup_dir(dir: &Path) {
    for (pid, _) in processes_naming(&dir.to_string_lossy()) {
        let _ = nix_kill(pid, 9);
    }
    let mut mounts = mounts_under(dir);
    mounts.reverse();
    for mount in mounts {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
    let _ = fs::remove_dir_all(dir);
}

fn nix_kill(pid: i32, signal: i32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

fn tempdir() -> PathBuf {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("wasmtime-shim-test-{}-{n}", std::process::id()));
        if fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    panic!("cannot create a temporary directory in {}", base.display());
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Processes (other than this one) whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The wasmtime shim processes of the containerd listening on `socket`, by pid.
fn wasmtime_shims(socket: &Path) -> HashMap<i32, String> {
    shim_servers(socket)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-wasmtime-v1"))
        .collect()
}

/// The shim processes (any runtime) of the containerd listening on `socket`:
/// servers and `start`/`delete` runs, not the zygotes and container
/// processes forked from them, which carry the same command line under
/// another name.
pub fn shim_servers(socket: &Path) -> Vec<(i32, String)> {
    processes_naming(&socket.display().to_string())
        .into_iter()
        .filter(|(pid, _)| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "containerd-shim")
        })
        .collect()
}

/// A container id unique to this test process.
pub fn unique_id(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}
