//! The test harness: a private, real containerd per test, driven with `ctr`.
//!
//! [`Containerd::start`] writes a config with its own root, state and socket
//! in a temporary directory and puts the freshly built shim first on
//! containerd's `PATH`. Dropping it stops everything it started, also when the
//! test failed: tasks and containers, containerd (by PID), any shim or guest
//! process whose command line names the directory, and every mount under it.
//!
//! The containerd under test is the machine's (`containerd` and `ctr` on
//! `PATH`), or the one in `CONTAINERD_DIR`: a directory holding `containerd`,
//! `ctr` and that version's `containerd-shim-runc-v2` side by side (`make test`
//! runs the suites once more with containerd 1.7 and 2.1 that way). The
//! harness reads its version and writes the config that version reads:
//! `version = 2` for 1.x, `version = 3` and the 2.x plugin names for 2.x.
//!
//! These tests need root and containerd; without them they say so and fail,
//! so a CI without root cannot pass silently.

pub mod cri;
pub mod critest;
pub mod registry;

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

/// The shim binary under test (`containerd-shim-wasmtime-v1` in `SHIM_DIR`,
/// else `target/debug`).
pub fn shim_binary() -> PathBuf {
    shim_dir().join("containerd-shim-wasmtime-v1")
}

fn require_root_and_containerd() {
    assert!(
        nix_is_root(),
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
    // Once per test binary: which containerd this run is against.
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("containerd under test: {}", containerd_version()));
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
            r#"version = {config_version}
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
            // 2.x keeps the CRI's config plugins (cri.v1.runtime, cri.v1.images)
            // loaded: the sandbox controllers depend on them. Without the CRI
            // gRPC service they do nothing.
            config_version = if containerd_version().is_v2() { 3 } else { 2 },
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
            if self.socket().exists() {
                let out = self.ctr(&["version"]);
                if out.code == 0 {
                    assert_serves_version(&out.stdout);
                    return;
                }
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

    /// `ctr` against this containerd. `ctr run` gets `--fifo-dir` in this
    /// directory: its stdio fifos are removed only by a `ctr task rm`, so the
    /// tasks containerd deletes by itself (a killed shim; 1.7+ at start) would
    /// leave them in the host's /run/containerd/fifo.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(ctr_binary());
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(NAMESPACE);
        match args.split_first() {
            Some((&"run", rest)) => command
                .arg("run")
                .arg("--fifo-dir")
                .arg(self.dir.join("fifo"))
                .args(rest),
            _ => command.args(args),
        };
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
        let out = self.try_import(tarball, &[]);
        assert_eq!(out.code, 0, "import {tarball}: {out:?}");
    }

    /// `ctr images import [flags] target/images/<tarball>`.
    pub fn try_import(&self, tarball: &str, flags: &[&str]) -> CtrOutput {
        let path = images_dir().join(tarball);
        assert!(
            path.is_file(),
            "{} is missing: run `make images`",
            path.display()
        );
        let mut args = vec!["images", "import"];
        args.extend(flags);
        args.push(path.to_str().expect("utf-8 path"));
        self.ctr(&args)
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
    /// A pod as kubelet makes one through CRI, made with ctr: a pause sandbox
    /// (pause.tar is imported) whose `io.kubernetes.cri.sandbox-id`
    /// annotation routes the pod's later tasks to its shim. Returns the
    /// annotation (`key=value`, for `--annotation`) and the sandbox's id.
    pub fn start_pod(&self) -> (String, String) {
        self.import("pause.tar");
        let annotation = format!("io.kubernetes.cri.sandbox-id={}", unique_id("pod"));
        let sandbox = unique_id("sandbox");
        let out = self.ctr(&[
            "run",
            "-d",
            "--annotation",
            &annotation,
            "--runtime",
            RUNTIME,
            "localhost/wasmtime-shim/pause:latest",
            &sandbox,
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        (annotation, sandbox)
    }

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
        task_pid_in(&self.ctr(&["task", "ls"]).stdout, id)
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

/// Asserts that the daemon answering `ctr version` (its output) is the
/// containerd under test.
fn assert_serves_version(ctr_version: &str) {
    let server = ctr_version
        .split("Server:")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("Version:")))
        .map(str::trim)
        .unwrap_or_default();
    let expected = &containerd_version().text;
    assert!(
        server.trim_start_matches('v') == expected,
        "the daemon serves containerd {server:?}, the harness expected {expected}"
    );
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
fn spawn_containerd(dir: &Path, netns: Option<&str>) -> Child {
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

/// Whether a command line is containerd itself (`containerd --config`, or
/// `/path/to/containerd --config`) or the tini above it.
fn is_daemon(cmdline: &str) -> bool {
    let mut words = cmdline.split_whitespace();
    let program = words.next().unwrap_or_default();
    (program.rsplit('/').next() == Some("containerd") && words.next() == Some("--config"))
        || cmdline.starts_with("tini -s")
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

// --- Helpers for the fault and churn suites (test/tests/faults.rs, churn.rs) ---

impl Containerd {
    /// `ctr` with a deadline: `None` if it had not returned after `timeout`
    /// (it is then SIGKILLed, by PID). Stdout and stderr go to files, so a
    /// chatty ctr never blocks on a full pipe.
    pub fn ctr_within(&self, args: &[&str], timeout: Duration) -> Option<CtrOutput> {
        let mut command = self.ctr_command(args);
        command_within(&mut command, timeout)
    }

    /// The bundle directories containerd holds for namespace `default`
    /// (`<state>/io.containerd.runtime.v2.task/default/<id>`).
    pub fn bundles(&self) -> Vec<String> {
        dir_names(
            &self
                .dir
                .join("state/io.containerd.runtime.v2.task")
                .join(NAMESPACE),
        )
    }

    /// The containerd process (under tini), if running.
    pub fn daemon_pid(&self) -> Option<i32> {
        let tini = self.child.as_ref()?.id() as i32;
        children_of(tini).into_iter().next().or(Some(tini))
    }
}

/// Runs `command` with stdin closed, killing it (by PID) after `timeout`;
/// `None` if it had to be killed.
pub fn command_within(command: &mut Command, timeout: Duration) -> Option<CtrOutput> {
    let out = tempfile_path("out");
    let err = tempfile_path("err");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("ctr stdout file"))
        .stderr(fs::File::create(&err).expect("ctr stderr file"))
        .spawn()
        .expect("run ctr");
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let read = |p: &Path| {
        let text = fs::read_to_string(p).unwrap_or_default();
        let _ = fs::remove_file(p);
        text
    };
    let (stdout, stderr) = (read(&out), read(&err));
    status.map(|status| CtrOutput {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
    })
}

fn tempfile_path(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "wasmtime-shim-ctr-{}-{n}.{what}",
        std::process::id()
    ))
}

/// The names of the entries of `dir` (none if it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A process's state letter (`R`, `S`, `Z`, ...) and parent PID, from
/// `/proc/PID/stat`.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// The children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut children: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&p| proc_state(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect();
    children.sort();
    children
}

/// Zombies (state `Z`) whose parent is one of `parents`: (pid, parent).
pub fn zombies_of(parents: &[i32]) -> Vec<(i32, i32)> {
    all_pids()
        .into_iter()
        .filter_map(|p| match proc_state(p) {
            Some(('Z', ppid)) if parents.contains(&ppid) => Some((p, ppid)),
            _ => None,
        })
        .collect()
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `pid`'s resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// A KiB figure of `pid`'s `/proc/PID/status` (`VmRSS`, `VmHWM`, ...);
/// None once the process is gone.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The CPU time `pid` has used (user + system, `/proc/PID/stat`; Linux
/// reports it in USER_HZ, 100 per second); None once it is gone.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|t| t.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The threads of `pid`.
pub fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Every fifo at or under `dir`.
pub fn fifos_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_fifo() {
                found.push(entry.path());
            }
        }
    }
    found
}

/// The cgroup directories left of `ids` under the cgroupfs parent `parent`
/// (`default` for ctr's containers, `k8s.io` for CRI's).
pub fn cgroups_of(parent: &str, ids: &[impl AsRef<str>]) -> Vec<String> {
    cgroups_left(parent, ids)
}

/// Where a shim groups the tasks of `grouping` (a pod's sandbox id, or a
/// task id): `/run/containerd/s/<sha256 of <containerd socket>/<ns>/<grouping>>`,
/// as containerd-shim's `socket_address` computes it.
pub fn shim_socket(containerd_socket: &Path, namespace: &str, grouping: &str) -> PathBuf {
    let key = containerd_socket.join(namespace).join(grouping);
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(key.display().to_string().as_bytes())
        .expect("write to sha256sum");
    let out = child.wait_with_output().expect("sha256sum");
    let hash = String::from_utf8_lossy(&out.stdout);
    PathBuf::from("/run/containerd/s").join(hash.split_whitespace().next().unwrap_or_default())
}

/// Lines of a containerd log (shim logs included) that tell of a panic.
pub fn panics_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panic") || l.contains("rust_backtrace")
        })
        .map(str::to_string)
        .collect()
}

/// A small deterministic PRNG (xorshift64*), so a failing interleaving can be
/// replayed from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `var` in the environment if set, else from the clock; the
    /// seed is printed.
    pub fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{var}={seed}");
        Self::new(seed)
    }

    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A count from the environment variable `var`, else `default`.
pub fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Containerd {
    /// What `ids` left behind, while other tasks (a pod's shim) may still
    /// run: their mounts, cgroups and bundles, and fifos naming them.
    pub fn leftovers_of(&self, ids: &[impl AsRef<str>]) -> Vec<String> {
        let mounts = mounts_under(&self.dir);
        let fifos = fifos_under(&self.dir);
        let bundles = self.bundles();
        let mut found = cgroups_left(NAMESPACE, ids);
        for id in ids {
            let id = id.as_ref();
            found.extend(
                mounts
                    .iter()
                    .filter(|m| m.contains(id))
                    .map(|m| format!("mount {m}")),
            );
            found.extend(
                fifos
                    .iter()
                    .filter(|f| f.to_string_lossy().contains(id))
                    .map(|f| format!("fifo {}", f.display())),
            );
            if bundles.iter().any(|b| b == id) {
                found.push(format!("bundle {id}"));
            }
        }
        found
    }

    /// Waits up to `patience` until [`Containerd::leftovers_of`] is empty.
    pub fn assert_clean_of(&self, ids: &[impl AsRef<str>], patience: Duration) {
        wait_until_clean(patience, || self.leftovers_of(ids), || self.log());
    }
}

/// The pid of task `id` in the output of `ctr task ls`.
pub fn task_pid_in(task_ls: &str, id: &str) -> Option<i32> {
    task_ls.lines().find_map(|l| {
        let cols: Vec<_> = l.split_whitespace().collect();
        (cols.first() == Some(&id)).then(|| cols.get(1)?.parse().ok())?
    })
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", sha2::Sha256::digest(bytes))
}
