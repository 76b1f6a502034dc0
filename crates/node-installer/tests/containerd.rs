//! The real check: containerd 1.6 (the machine's), 1.7 and 2.1 (unpacked
//! by test/fetch-debs.sh into target/debs) started on the config the
//! installer edited, asked through their CRI for the `wasmtime` handler.
//!
//! Each containerd runs under a small supervisor that restarts it when it
//! exits, as systemd would; the installer's `--restart-command` kills it,
//! so the installer's own restart-then-verify path is what is exercised.
//! containerd runs in a private mount namespace with the fake host's
//! /etc/containerd bound over /etc/containerd, so the absolute paths the
//! installer writes (imports = ["/etc/containerd/conf.d/..."]) resolve as on
//! a node. root, state, the sockets, NRI's socket and the opt plugin's dir
//! are moved into the test's temp dir; nothing else is changed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{assert_same, fixture, Node};
use node_installer::cri;
use toml_edit::{value, DocumentMut};

const DEBIAN_CONTAINERD: &str = "/usr/bin/containerd";

fn fetched(version: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/debs")
        .join(format!("containerd-{version}/usr/bin/containerd"));
    assert!(
        path.is_file(),
        "{} is missing: run `test/fetch-debs.sh target/debs` (make deps does)",
        path.display()
    );
    path
}

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(
        root,
        "these tests start containerd and bind-mount in a private namespace: run them as root"
    );
    assert!(
        Path::new("/etc/containerd").is_dir(),
        "/etc/containerd must exist to be bound over (the containerd package creates it)"
    );
}

/// `containerd config default` of that binary.
fn default_config(binary: &Path) -> String {
    let out = Command::new(binary)
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    assert!(
        out.status.success(),
        "{} config default failed",
        binary.display()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Moves everything containerd writes into `run`.
fn private_config(base: &str, run: &Path) -> String {
    let mut doc: DocumentMut = base.parse().expect("a containerd config");
    let at = |name: &str| value(run.join(name).to_string_lossy().into_owned());
    doc["root"] = at("root");
    doc["state"] = at("state");
    doc["grpc"]["address"] = at("containerd.sock");
    doc["ttrpc"]["address"] = at("containerd.sock.ttrpc");
    if let Some(plugins) = doc.get_mut("plugins").and_then(|p| p.as_table_like_mut()) {
        for (name, plugin) in plugins.iter_mut() {
            let Some(plugin) = plugin.as_table_like_mut() else {
                continue;
            };
            if plugin.contains_key("socket_path") {
                plugin.insert("socket_path", at("nri.sock"));
            }
            if name.get() == "io.containerd.internal.v1.opt" {
                plugin.insert("path", at("opt"));
            }
        }
    }
    doc.to_string()
}

/// A containerd kept running like a service: restarted whenever it exits,
/// until dropped. Its PID is in `<run>/containerd.pid`.
struct Service {
    stop: Arc<AtomicBool>,
    pid: Arc<Mutex<Option<u32>>>,
    thread: Option<JoinHandle<()>>,
    run: PathBuf,
}

impl Service {
    fn start(binary: &Path, etc: &Path, run: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(Mutex::new(None));
        let (binary, etc, dir) = (binary.to_path_buf(), etc.to_path_buf(), run.to_path_buf());
        let thread = {
            let (stop, pid) = (stop.clone(), pid.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let log = fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("containerd.log"))
                        .unwrap();
                    let mut child = Command::new("unshare")
                        .args(["--mount", "--propagation", "private", "sh", "-c"])
                        .arg("mount --bind \"$1\" /etc/containerd && exec \"$2\" --config /etc/containerd/config.toml")
                        .arg("sh")
                        .arg(&etc)
                        .arg(&binary)
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("start containerd");
                    *pid.lock().unwrap() = Some(child.id());
                    fs::write(dir.join("containerd.pid"), child.id().to_string()).unwrap();
                    let _ = child.wait();
                    *pid.lock().unwrap() = None;
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Self {
            stop,
            pid,
            thread: Some(thread),
            run: run.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.run.join("containerd.log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }

    /// Waits until the CRI answers (whatever its handlers).
    fn wait_cri(&self) -> cri::Handlers {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match cri::handlers(&self.socket()) {
                Ok(h) => return h,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the CRI did not come up: {e}\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until containerd logged that it booted, whether or not the CRI loaded.
    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains("containerd successfully booted") {
            assert!(
                Instant::now() < deadline,
                "containerd did not boot:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !thread.is_finished() {
            let signal = if Instant::now() < deadline {
                "-TERM"
            } else {
                "-KILL"
            };
            if let Some(pid) = *self.pid.lock().unwrap() {
                let _ = Command::new("kill")
                    .arg(signal)
                    .arg(pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = thread.join();
    }
}

/// containerd from `binary` on `base` (a config): install, verify through
/// the CRI, install again, uninstall, verify again.
fn install_on_real_containerd(binary: &Path, base: &str, systemd_cgroup: bool) {
    require_root();
    let mut node = Node::new();
    let run = node.dir.path().join("containerd");
    fs::create_dir(&run).unwrap();
    node.put("/etc/containerd/config.toml", &private_config(base, &run));
    let service = Service::start(binary, &node.host().join("etc/containerd"), &run);
    let before_handlers = service.wait_cri();
    assert!(cri::wasmtime_type(&before_handlers).is_none());
    node.restart = format!(
        "echo \"$UNIT\" >> {}; kill $(cat {})",
        node.dir.path().join("restarts").display(),
        run.join("containerd.pid").display()
    );
    node.extra = vec![
        "--cri-socket".into(),
        service.socket().to_string_lossy().into_owned(),
        "--verify-timeout".into(),
        "60".into(),
    ];
    let before = node.snapshot();

    let log = node.ok("install", &[]);
    assert!(
        log.contains("verified: the CRI reports `wasmtime`"),
        "{log}"
    );
    assert_eq!(node.restarts(), vec!["containerd"]);
    let config: serde_json::Value =
        serde_json::from_str(&cri::status_config(&service.socket()).unwrap()).unwrap();
    let wasmtime = &config["containerd"]["runtimes"]["wasmtime"];
    assert_eq!(
        wasmtime["runtimeType"], "io.containerd.wasmtime.v1",
        "{config}"
    );
    assert_eq!(
        wasmtime["PodAnnotations"],
        serde_json::json!(["wasmtime.containerd.io/*"]),
        "{wasmtime}"
    );
    assert_eq!(
        wasmtime["ContainerAnnotations"],
        serde_json::json!(["wasmtime.containerd.io/*"]),
        "{wasmtime}"
    );
    // No options table (config::set_wasmtime_runtime says why).
    assert!(
        wasmtime["options"].as_object().is_none_or(|o| o.is_empty()),
        "{wasmtime}"
    );
    assert_eq!(
        config["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"], systemd_cgroup,
        "runc's driver kept: {config}"
    );
    assert_eq!(
        config["containerd"]["runtimes"]["runc"]["runtimeType"], "io.containerd.runc.v2",
        "runc kept: {config}"
    );
    let installed = node.snapshot();

    let log = node.ok("install", &[]);
    assert_eq!(
        node.restarts(),
        vec!["containerd"],
        "no restart on a second install:\n{log}"
    );
    assert!(log.contains("verified"), "{log}");
    assert_same(&installed, &node.snapshot(), "second install");

    let log = node.ok("uninstall", &[]);
    assert!(log.contains("no longer reports `wasmtime`"), "{log}");
    assert_eq!(node.restarts(), vec!["containerd", "containerd"]);
    let after = service.wait_cri();
    assert!(cri::wasmtime_type(&after).is_none(), "{after:?}");
    assert_same(&before, &node.snapshot(), "after uninstall");
}

#[test]
fn containerd_1_6_default_config() {
    install_on_real_containerd(
        Path::new(DEBIAN_CONTAINERD),
        &default_config(Path::new(DEBIAN_CONTAINERD)),
        false,
    );
}

#[test]
fn containerd_1_6_debian_packaged_config() {
    install_on_real_containerd(
        Path::new(DEBIAN_CONTAINERD),
        &fixture("containerd/debian-12.toml"),
        false,
    );
}

#[test]
fn containerd_1_7_default_config_with_systemd_cgroup_runc() {
    let binary = fetched("1.7");
    let base = default_config(&binary).replace("SystemdCgroup = false", "SystemdCgroup = true");
    install_on_real_containerd(&binary, &base, true);
}

#[test]
fn containerd_2_1_default_config() {
    let binary = fetched("2.1");
    install_on_real_containerd(&binary, &default_config(&binary), false);
}

/// Why containerd 1.x configs are edited in place: an import holding only
/// the `wasmtime` runtime replaces the main config's whole CRI section in
/// 1.x (runc is gone and the CRI plugin refuses to load), while 2.x merges
/// it into the main one.
fn drop_in_only(
    binary: &Path,
    version: u8,
    plugin: &str,
) -> (Result<cri::Handlers, node_installer::Error>, String) {
    require_root();
    let node = Node::new();
    let run = node.dir.path().join("containerd");
    fs::create_dir(&run).unwrap();
    let mut main: DocumentMut = private_config(&default_config(binary), &run)
        .parse()
        .unwrap();
    let mut imports = toml_edit::Array::new();
    imports.push("/etc/containerd/conf.d/wasmtime.toml");
    main["imports"] = value(imports);
    node.put("/etc/containerd/config.toml", &main.to_string());
    node.put(
        "/etc/containerd/conf.d/wasmtime.toml",
        &format!("version = {version}\n[plugins.\"{plugin}\".containerd.runtimes.wasmtime]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n"),
    );
    let service = Service::start(binary, &node.host().join("etc/containerd"), &run);
    service.wait_booted();
    let handlers = cri::handlers(&service.socket());
    (handlers, service.log())
}

#[test]
fn containerd_1_x_import_replaces_the_whole_cri_section() {
    for binary in [PathBuf::from(DEBIAN_CONTAINERD), fetched("1.7")] {
        let (handlers, log) = drop_in_only(&binary, 2, "io.containerd.grpc.v1.cri");
        assert!(handlers.is_err(), "{}: {handlers:?}", binary.display());
        assert!(
            log.contains("no corresponding runtime configured"),
            "{}:\n{log}",
            binary.display()
        );
    }
}

#[test]
fn containerd_2_1_import_merges_into_the_cri_section() {
    let (handlers, log) = drop_in_only(&fetched("2.1"), 3, "io.containerd.cri.v1.runtime");
    let handlers = handlers.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        cri::wasmtime_type(&handlers),
        Some("io.containerd.wasmtime.v1")
    );
    assert!(
        handlers.iter().any(|(name, _)| name == "runc"),
        "{handlers:?}"
    );
}
