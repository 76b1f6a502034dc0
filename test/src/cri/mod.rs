//! The kubelet stand-in: a private containerd with its CRI plugin, driven
//! through the CRI v1 gRPC API (the `k8s-cri` client) exactly as kubelet
//! drives it.
//!
//! [`CriNode::start`] creates a network namespace, writes a bridge CNI
//! network and a containerd config with the runtime handler `wasmtime` →
//! `io.containerd.wasmtime.v1` (and `runc`, which the CRI plugin requires;
//! see `config.rs`), starts containerd inside the namespace with
//! `nsenter --net` (not `ip netns exec`, which remounts /sys and hides the
//! cgroups), and imports the locally built pause and test images. Dropping
//! it removes every pod, stops containerd, kills anything left that names
//! its directory, unmounts, and deletes the namespace. The CRI calls a test
//! makes (pods, containers, their status) are in `pods.rs`.

mod config;
mod pods;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

pub use config::{BROKEN_HANDLER, GC_HANDLER, HANDLER, INLINE_HANDLER};
pub use pods::{http_response, share_pid_namespace};

use crate::images::images_dir;

/// The containerd namespace of the CRI's containers (ctr's is [`crate::NAMESPACE`]).
pub const NAMESPACE: &str = "k8s.io";

/// What a node is started with beyond [`CriNode::start`]'s defaults.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Registry hosts from `<node dir>/certs.d`, one `<registry>/hosts.toml`
    /// per registry (containerd's `config_path`, read at every pull), so a
    /// test can serve an upstream registry's images from a local registry
    /// under their upstream names ([`CriNode::mirror_registry`]).
    pub registry_hosts: bool,
    /// More handlers, each with a shim binary's absolute path as its
    /// `runtime_type` (as containerd allows): `make bench`'s no-op floor.
    pub binary_handlers: Vec<(String, PathBuf)>,
}

/// A CRI node; see the module's header.
pub struct CriNode {
    dir: PathBuf,
    netns: String,
    containerd: Option<Child>,
    runtime: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
    images: Option<ImageServiceClient<Channel>>,
    /// The systemd driver's pod slices not yet stopped, by pod id.
    pod_slices: std::sync::Mutex<HashMap<String, String>>,
}

/// `systemctl stop <unit>`, whatever it answers (a unit that was never
/// loaded is not an error here).
fn stop_unit(unit: &str) {
    let _ = Command::new("systemctl")
        .args(["stop", unit])
        .stderr(std::process::Stdio::null())
        .status();
}

fn run(command: &mut Command) {
    let out = command.output().expect("run command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip netns add name`, tried three times: concurrent `ip netns add` and
/// `ip netns del` of parallel tests race on the mounts under /run/netns.
fn add_netns(name: &str) -> Result<(), String> {
    let mut tries = 0;
    loop {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .map_err(|e| format!("ip netns add: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        tries += 1;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if tries == 3 {
            return Err(format!("ip netns add {name} failed: {stderr}"));
        }
        eprintln!("ip netns add {name} failed ({stderr}), trying again");
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl CriNode {
    pub fn start() -> Self {
        Self::start_with(NodeOptions::default())
    }

    pub fn start_with(options: NodeOptions) -> Self {
        crate::environment::require_root_and_containerd();
        let dir = crate::daemon::tempdir();
        let netns = format!(
            "wshim-{}",
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .rsplit('-')
                .take(2)
                .collect::<Vec<_>>()
                .join("-")
        );
        if let Err(e) = add_netns(&netns) {
            let _ = fs::remove_dir_all(&dir);
            panic!("{e}");
        }
        let mut node = Self {
            dir,
            netns,
            containerd: None,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio"),
            client: None,
            images: None,
            pod_slices: Default::default(),
        };
        run(Command::new("ip").args(["-n", &node.netns, "link", "set", "lo", "up"]));
        config::write(&node.dir, &options);
        let child = crate::daemon::spawn_containerd(&node.dir, Some(&node.netns));
        node.containerd = Some(child);
        node.wait_ready();
        node.assert_cri_plugins_ok();
        for image in ["pause.tar", "wasm-test.tar", "hello-http.tar"] {
            node.ctr(&[
                "images",
                "import",
                images_dir().join(image).to_str().unwrap(),
            ]);
        }
        node
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ctr -n k8s.io images import [flags] target/images/<tarball>`, as a
    /// node's images are preloaded.
    pub fn import(&self, tarball: &str, flags: &[&str]) {
        let path = images_dir().join(tarball);
        let mut args = vec!["images", "import"];
        args.extend(flags);
        args.push(path.to_str().expect("utf-8 path"));
        self.ctr(&args);
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new(crate::environment::ctr_binary())
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The CRI's plugins and their status, from `ctr plugins ls`.
    fn cri_plugins(&self) -> String {
        let out = Command::new(crate::environment::ctr_binary())
            .arg("--address")
            .arg(self.socket())
            .args(["plugins", "ls"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter(|l| l.contains("cri") || l.starts_with("TYPE"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `ctr plugins ls` shows the CRI's plugins `ok`: the gRPC service and,
    /// on 2.x, the runtime and images plugins it is split into.
    fn assert_cri_plugins_ok(&self) {
        let plugins = self.cri_plugins();
        let mut wanted = vec![("io.containerd.grpc.v1", "cri")];
        if crate::containerd_version().is_v2() {
            wanted.extend([
                ("io.containerd.cri.v1", "runtime"),
                ("io.containerd.cri.v1", "images"),
            ]);
        }
        for (kind, id) in wanted {
            assert!(
                plugins.lines().any(|l| {
                    let cols: Vec<_> = l.split_whitespace().collect();
                    cols.first() == Some(&kind)
                        && cols.get(1) == Some(&id)
                        && cols.last() == Some(&"ok")
                }),
                "{kind}.{id} is not ok (containerd {}):\n{plugins}\n{}",
                crate::containerd_version(),
                self.log()
            );
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.socket().exists() {
                let socket = self.socket();
                let connected = self.runtime.block_on(async {
                    let channel = Endpoint::try_from("http://[::]:50051")
                        .ok()?
                        .connect_with_connector(tower::service_fn(move |_: Uri| {
                            let socket = socket.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(
                                    tokio::net::UnixStream::connect(socket).await?,
                                ))
                            }
                        }))
                        .await
                        .ok()?;
                    let mut client = RuntimeServiceClient::new(channel.clone());
                    client.status(StatusRequest { verbose: false }).await.ok()?;
                    Some((client, ImageServiceClient::new(channel)))
                });
                if let Some((client, images)) = connected {
                    self.client = Some(client);
                    self.images = Some(images);
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.containerd.as_mut().map(Child::try_wait) {
                panic!("containerd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the CRI plugin did not come up (containerd {}):\n{}\n{}",
                crate::containerd_version(),
                self.cri_plugins(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone().expect("connected")
    }

    /// Pulls of `registry`'s images (`registry.k8s.io`) go to `host`
    /// (`127.0.0.1:5000`, plain HTTP) instead, and only there: the images keep
    /// their upstream names. Needs [`NodeOptions::registry_hosts`].
    pub fn mirror_registry(&self, registry: &str, host: &str) {
        let hosts = self.dir.join("certs.d");
        assert!(
            hosts.is_dir(),
            "the node was not started with NodeOptions::registry_hosts"
        );
        fs::create_dir_all(hosts.join(registry)).unwrap();
        fs::write(
            hosts.join(registry).join("hosts.toml"),
            // The server too, so nothing falls back to the internet; 1.6
            // needs a `host` table besides.
            format!(
                "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
    }

    /// The network namespace containerd and its pods run in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Stops containerd; its shims, pods and containers keep running.
    pub fn stop_daemon(&mut self) {
        self.client = None;
        self.images = None;
        if let Some(child) = self.containerd.take() {
            crate::daemon::stop_containerd(child);
        }
    }

    /// Starts containerd again on the same root, state, socket and network
    /// namespace, and reconnects the CRI client.
    pub fn start_daemon(&mut self) {
        assert!(self.containerd.is_none(), "containerd is running");
        self.containerd = Some(crate::daemon::spawn_containerd(
            &self.dir,
            Some(&self.netns),
        ));
        self.wait_ready();
    }

    /// The containerd process (under tini), if running.
    pub fn daemon_pid(&self) -> Option<i32> {
        let tini = self.containerd.as_ref()?.id() as i32;
        crate::procfs::children_of(tini)
            .into_iter()
            .next()
            .or(Some(tini))
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.socket()
    }

    /// The shim processes of any runtime (wasmtime, runc) serving this node.
    pub fn all_shims(&self) -> Vec<(i32, String)> {
        crate::procfs::shim_servers(&self.socket())
    }

    /// The host pid of container `id`'s task.
    pub fn task_pid(&self, id: &str) -> Option<i32> {
        crate::harness::task_pid_in(&self.ctr_output(&["task", "ls"]).stdout, id)
    }

    /// `ctr -n k8s.io <args>` against this node; its output, whatever the status.
    pub fn ctr_output(&self, args: &[&str]) -> crate::CtrOutput {
        Command::new(crate::environment::ctr_binary())
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ctr")
            .into()
    }

    /// The bundle directories containerd holds for the CRI's namespace.
    pub fn bundles(&self) -> Vec<String> {
        crate::leaks::dir_names(
            &self
                .dir
                .join("state/io.containerd.runtime.v2.task")
                .join(NAMESPACE),
        )
    }

    /// The shim processes serving this node, by pid.
    pub fn shims(&self) -> HashMap<i32, String> {
        crate::procfs::wasmtime_shims(&self.socket())
    }

    /// What this node's pods left behind: mounts and processes, and the
    /// cgroups and systemd units of the pods and containers in `ids`.
    pub fn leftovers(&self, ids: &[String]) -> Vec<String> {
        let mut found = crate::leaks::left_under(&self.dir);
        found.extend(crate::leaks::cgroups_and_units_left(NAMESPACE, ids));
        found
    }

    /// Asserts that nothing of this node's pods (and of `ids`) is left.
    pub fn assert_clean(&self, ids: &[String]) {
        crate::leaks::wait_until_clean(
            Duration::from_secs(10),
            || self.leftovers(ids),
            || self.log(),
        );
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        if self.client.is_some() {
            let pods = self.try_call(|mut c| async move {
                c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await
            });
            for pod in pods.map(|p| p.items).unwrap_or_default() {
                let id = pod.id.clone();
                let _ = self.try_call(|mut c| async move {
                    c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                        .await
                });
                let id = pod.id;
                let _ = self.try_call(|mut c| async move {
                    c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await
                });
            }
        }
        self.client = None;
        if let Some(child) = self.containerd.take() {
            crate::daemon::stop_containerd(child);
        }
        crate::daemon::cleanup_dir(&self.dir);
        for slice in self.pod_slices.lock().unwrap().values() {
            stop_unit(slice);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
