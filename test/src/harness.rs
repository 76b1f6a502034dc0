//! The harness: a private, real containerd per test, driven with `ctr`.
//!
//! [`Containerd::start`] writes a config with its own root, state and socket
//! in a temporary directory and puts the freshly built shim first on
//! containerd's `PATH`. Dropping it stops everything it started, also when the
//! test failed: tasks and containers, containerd (by PID), any shim or guest
//! process whose command line names the directory, and every mount under it.
//!
//! The harness reads the version of the containerd under test (see
//! [`crate::environment`]) and writes the config that version reads:
//! `version = 2` for 1.x, `version = 3` and the 2.x plugin names for 2.x.
//! What a test may leave behind is checked in [`crate::leaks`].

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{cleanup_dir, spawn_containerd, stop_containerd, tempdir};
use crate::environment::{
    cgroup_driver, containerd_version, ctr_binary, require_root_and_containerd, CgroupDriver,
};
use crate::images::{images_dir, PAUSE};
use crate::procfs::{children_of, wasmtime_shims};

/// The runtime name containerd knows this shim by.
pub const RUNTIME: &str = "io.containerd.wasmtime.v1";

/// The containerd namespace of `ctr`'s containers (CRI's is `k8s.io`).
pub const NAMESPACE: &str = "default";

/// A private containerd for one test; see the module's header.
pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// A private containerd logging at debug level, which the shim's log
    /// lines need to show up.
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
{timeouts}"#,
            // 2.x keeps the CRI's config plugins (cri.v1.runtime, cri.v1.images)
            // loaded: the sandbox controllers depend on them. Without the CRI
            // gRPC service they do nothing.
            config_version = if containerd_version().is_v2() { 3 } else { 2 },
            dir = dir.display(),
            timeouts = crate::daemon::timeouts_config(),
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

    /// The test's directory: containerd's root, state, socket and log, ctr's
    /// fifos, and the node's code cache (`cache/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket.
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
    /// leave them in the host's /run/containerd/fifo. With the systemd
    /// driver it also gets `--cgroup` (see [`systemd_cgroup_flag`]).
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
                .args(systemd_cgroup_flag(rest))
                .args(rest),
            _ => command.args(args),
        };
        command
    }

    /// `ctr <args>` with stdin closed; its output, whatever the status.
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

    /// The argv of [`Containerd::run`].
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
            PAUSE,
            &sandbox,
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        (annotation, sandbox)
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
        task_pid_in(&self.ctr(&["task", "ls"]).stdout, id)
    }

    /// `ctr` with a deadline: `None` if it had not returned after `timeout`
    /// (it is then SIGKILLed, by PID). Stdout and stderr go to files, so a
    /// chatty ctr never blocks on a full pipe.
    pub fn ctr_within(&self, args: &[&str], timeout: Duration) -> Option<CtrOutput> {
        let mut command = self.ctr_command(args);
        command_within(&mut command, timeout)
    }

    /// The containerd process (under tini), if running.
    pub fn daemon_pid(&self) -> Option<i32> {
        let tini = self.child.as_ref()?.id() as i32;
        children_of(tini).into_iter().next().or(Some(tini))
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

/// With the systemd driver, `ctr run`'s `--cgroup system.slice:wasmtime-test:<id>`:
/// a cgroups path in systemd's `slice:prefix:name` form, which the shim
/// makes the unit `wasmtime-test-<id>.scope` in `system.slice` (what runc
/// makes of docker's `system.slice:docker:<id>`). Nothing with the cgroupfs
/// driver (containerd's default, `/default/<id>`), or when the run names its
/// own cgroup or spec.
fn systemd_cgroup_flag(run_args: &[&str]) -> Vec<String> {
    if cgroup_driver() != CgroupDriver::Systemd
        || run_args
            .iter()
            .any(|a| ["--cgroup", "--config", "-c"].contains(&a.split('=').next().unwrap_or(a)))
    {
        return Vec::new();
    }
    match ctr_run_id(run_args) {
        Some(id) => vec![
            "--cgroup".into(),
            format!("{SYSTEMD_SLICE}:{SYSTEMD_SCOPE_PREFIX}:{id}"),
        ],
        None => Vec::new(),
    }
}

/// The slice ctr's containers go in with the systemd driver.
pub const SYSTEMD_SLICE: &str = "system.slice";

/// The prefix of their scopes' names (`wasmtime-test-<id>.scope`).
pub const SYSTEMD_SCOPE_PREFIX: &str = "wasmtime-test";

/// The container id in `ctr run`'s arguments (after `run`): the second
/// argument that is not a flag or a flag's value (the first is the image).
fn ctr_run_id<'a>(run_args: &[&'a str]) -> Option<&'a str> {
    /// `ctr run`'s flags that take no value.
    const SWITCHES: &[&str] = &[
        "--rm",
        "--null-io",
        "--detach",
        "-d",
        "--cni",
        "--runc-systemd-cgroup",
        "--net-host",
        "--privileged",
        "--read-only",
        "--tty",
        "-t",
        "--allow-new-privs",
        "--seccomp",
        "--rootfs",
        "--no-pivot",
        "--remap-labels",
        "--all-platforms",
    ];
    let mut positional = Vec::new();
    let mut args = run_args.iter();
    while let Some(arg) = args.next() {
        if arg.starts_with('-') {
            if !arg.contains('=') && !SWITCHES.contains(arg) {
                args.next(); // its value
            }
        } else {
            positional.push(*arg);
        }
    }
    positional.get(1).copied()
}

/// A container id unique to this test process.
pub fn unique_id(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

/// The pid of task `id` in the output of `ctr task ls`.
pub fn task_pid_in(task_ls: &str, id: &str) -> Option<i32> {
    task_ls.lines().find_map(|l| {
        let cols: Vec<_> = l.split_whitespace().collect();
        (cols.first() == Some(&id)).then(|| cols.get(1)?.parse().ok())?
    })
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

#[cfg(test)]
mod tests {
    use super::ctr_run_id;

    #[test]
    fn finds_the_container_id_among_ctr_runs_flags() {
        for (args, id) in [
            (
                &["--rm", "--runtime", "rt", "img", "c1", "/x.wasm"][..],
                Some("c1"),
            ),
            (
                &["-d", "--annotation", "a=b", "--mount", "m", "img", "c2"],
                Some("c2"),
            ),
            (
                &["--rm", "--memory-limit=5", "-t", "--read-only", "img", "c3"],
                Some("c3"),
            ),
            (&["--rm", "img"], None),
        ] {
            assert_eq!(ctr_run_id(args), id, "{args:?}");
        }
    }
}
