//! The kubelet stand-in: a private containerd with its CRI plugin, driven
//! through the CRI v1 gRPC API (the `k8s-cri` client) exactly as kubelet
//! drives it.
//!
//! [`CriNode::start`] creates a network namespace, writes a bridge CNI
//! network and a containerd config with the runtime handler `wasmtime` →
//! `io.containerd.wasmtime.v1` (and `runc`, which the CRI plugin requires),
//! starts containerd inside the namespace with `nsenter --net` (not
//! `ip netns exec`, which remounts /sys and hides the cgroups), and imports
//! the locally built pause and test images. Dropping it removes every pod,
//! stops containerd, kills anything left that names its directory, unmounts,
//! and deletes the namespace.

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

use crate::images_dir;

pub const HANDLER: &str = "wasmtime";
pub const PAUSE_IMAGE: &str = "localhost/wasmtime-shim/pause:latest";

/// What a node is started with beyond [`CriNode::start`]'s defaults.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Registry hosts from `<node dir>/certs.d`, one `<registry>/hosts.toml`
    /// per registry (containerd's `config_path`, read at every pull), so a
    /// test can serve an upstream registry's images from a local registry
    /// under their upstream names ([`CriNode::mirror_registry`]).
    pub registry_hosts: bool,
}

pub struct CriNode {
    dir: PathBuf,
    netns: String,
    containerd: Option<Child>,
    runtime: tokio::runtime::Runtime,
    client: Option<RuntimeServiceClient<Channel>>,
    images: Option<ImageServiceClient<Channel>>,
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
        crate::require_root_and_containerd();
        let dir = crate::tempdir();
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
        };
        run(Command::new("ip").args(["-n", &node.netns, "link", "set", "lo", "up"]));
        node.write_config(&options);
        let child = crate::spawn_containerd(&node.dir, Some(&node.netns));
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

    fn write_config(&self, options: &NodeOptions) {
        let dir = self.dir.display();
        fs::create_dir_all(self.dir.join("cni")).unwrap();
        fs::write(
            self.dir.join("cni/10-wasmtime-test.conflist"),
            r#"{"cniVersion": "0.4.0", "name": "wasmtime-test", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}"#,
        )
        .unwrap();
        let v2 = crate::containerd_version().is_v2();
        let mut config = if v2 { config_v3(&dir) } else { config_v2(&dir) };
        if options.registry_hosts {
            let images = if v2 {
                "io.containerd.cri.v1.images"
            } else {
                "io.containerd.grpc.v1.cri"
            };
            config.push_str(&format!(
                "[plugins.\"{images}\".registry]\n  config_path = \"{dir}/certs.d\"\n"
            ));
            fs::create_dir_all(self.dir.join("certs.d")).unwrap();
        }
        fs::write(self.dir.join("config.toml"), config).unwrap();
        fs::write(
            self.dir.join("wasmtime-gc.toml"),
            "WasmGc = true\nWasmExceptions = true\n",
        )
        .unwrap();
        fs::write(self.dir.join("wasmtime-broken.toml"), "WasmGC = true\n").unwrap();
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
        let out = Command::new(crate::ctr_binary())
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
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
        let out = Command::new(crate::ctr_binary())
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

    /// CRI PullImage, as kubelet pulls `image`; the image's reference or the error.
    pub fn pull_image(&self, image: &str) -> Result<String, tonic::Status> {
        let mut images = self.images.clone().expect("connected");
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.runtime
            .block_on(images.pull_image(request))
            .map(|r| r.into_inner().image_ref)
    }

    /// Calls the CRI runtime service; panics with the status on error.
    pub fn call<T, F, Fut>(&self, what: &str, f: F) -> T
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.try_call(f)
            .unwrap_or_else(|status| panic!("{what}: {status}\n{}", self.log()))
    }

    pub fn try_call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime
            .block_on(f(self.client()))
            .map(tonic::Response::into_inner)
    }

    /// A pod sandbox config with the given name, logging under this node's directory.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let logs = self.dir.join("logs").join(name);
        fs::create_dir_all(&logs).unwrap();
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: String::new(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(own_pid_namespace()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with the `wasmtime` handler; returns the pod id.
    pub fn run_pod(&self, config: &PodSandboxConfig) -> String {
        self.run_pod_with(config, HANDLER)
    }

    /// RunPodSandbox with the runtime handler `handler` (`wasmtime`, `runc`).
    pub fn run_pod_with(&self, config: &PodSandboxConfig, handler: &str) -> String {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(request).await
        })
        .pod_sandbox_id
    }

    /// A container config for `image` running `command`, logging to `<name>.log`.
    pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(own_pid_namespace()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer + StartContainer; returns the container id.
    pub fn start_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> String {
        let (id, started) = self.try_start_container(pod, pod_config, config);
        if let Err(status) = started {
            panic!("StartContainer {id}: {status:?}\n{}", self.log());
        }
        id
    }

    /// CreateContainer (which must succeed: it only records the container)
    /// and StartContainer, where the shim sees the container and may refuse
    /// it; the container id and StartContainer's answer.
    pub fn try_start_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> (String, Result<(), tonic::Status>) {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .call("CreateContainer", |mut c| async move {
                c.create_container(request).await
            })
            .container_id;
        let request = StartContainerRequest {
            container_id: id.clone(),
        };
        let started = self
            .try_call(|mut c| async move { c.start_container(request).await })
            .map(drop);
        (id, started)
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let request = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(request).await
        })
        .status
        .expect("a status")
    }

    /// Waits until the container has exited and returns its status.
    pub fn wait_exited(&self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.container_status(id);
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(Instant::now() < deadline, "{id} never exited: {status:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop_and_remove_pod(&self, pod: &str) {
        let id = pod.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        });
        let id = pod.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        });
    }

    /// The pod's IP on the node's bridge network.
    pub fn pod_ip(&self, pod: &str) -> String {
        let pod_sandbox_id = pod.to_string();
        let status = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose: false,
            })
            .await
        });
        status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .expect("the pod has an IP")
    }

    /// `curl` from inside the node's network namespace, where the pod IPs
    /// are: starts it and returns the child (see [`http_response`]).
    pub fn http_request(&self, url: &str) -> Child {
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args([
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                url,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl")
    }

    /// GET `url` from inside the node: (status, body); status 0 if nothing answered.
    pub fn http_get(&self, url: &str) -> (u16, String) {
        http_response(self.http_request(url))
    }

    /// GETs `url` until something answers (the server is up), at most 30 s.
    pub fn wait_http(&self, url: &str) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.http_get(url);
            if status != 0 || Instant::now() > deadline {
                return (status, body);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The shim processes serving this node, by pid.
    pub fn shims(&self) -> HashMap<i32, String> {
        crate::wasmtime_shims(&self.socket())
    }

    /// What this node's pods left behind: mounts and processes, and the
    /// cgroups of the pods and containers in `ids`.
    pub fn leftovers(&self, ids: &[String]) -> Vec<String> {
        let mut found = crate::left_under(&self.dir);
        found.extend(crate::cgroups_left("k8s.io", ids));
        found
    }

    /// Asserts that nothing of this node's pods (and of `ids`) is left.
    pub fn assert_clean(&self, ids: &[String]) {
        crate::wait_until_clean(
            Duration::from_secs(10),
            || self.leftovers(ids),
            || self.log(),
        );
    }
}

/// The CRI node's config for containerd 1.6 and 1.7 (`version = 2`): one
/// plugin, `io.containerd.grpc.v1.cri`, holds images, runtimes and CNI.
fn config_v2(dir: &impl std::fmt::Display) -> String {
    format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmtime.containerd.io/*"]
      container_annotations = ["wasmtime.containerd.io/*"]
      # What the node installer writes.
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}.options]
        SystemdCgroup = false
{extra}"#,
        extra = extra_handlers(
            r#"plugins."io.containerd.grpc.v1.cri".containerd.runtimes"#,
            dir
        ),
    )
}

/// The same for containerd 2.x (`version = 3`): the CRI's config is split
/// into `io.containerd.cri.v1.images` (the sandbox image is a pinned image)
/// and `io.containerd.cri.v1.runtime` (runtimes, CNI, restrict_oom_score_adj);
/// `io.containerd.grpc.v1.cri` is only the gRPC service. 2.x also enables NRI
/// by default, listening on the host-wide `/var/run/nri/nri.sock`: a second
/// node on the machine would fail to start ("failed to set up NRI for CRI
/// service ... address already in use"), so each node has its own socket.
fn config_v3(dir: &impl std::fmt::Display) -> String {
    format!(
        r#"version = 3
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"
[plugins."io.containerd.nri.v1.nri"]
  socket_path = "{dir}/nri.sock"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{dir}/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmtime.containerd.io/*"]
      container_annotations = ["wasmtime.containerd.io/*"]
      # What the node installer writes.
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}.options]
        SystemdCgroup = false
{extra}"#,
        extra = extra_handlers(
            r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes"#,
            dir
        ),
    )
}

/// Handlers with engine options of their own, beside [`HANDLER`]:
/// `wasmtime-gc` reads them from a file (`ConfigPath`, which every containerd
/// passes on), `wasmtime-inline` from its table (passed by containerd 1.7 and
/// later only), and `wasmtime-broken` names an option that does not exist.
pub const GC_HANDLER: &str = "wasmtime-gc";
pub const INLINE_HANDLER: &str = "wasmtime-inline";
pub const BROKEN_HANDLER: &str = "wasmtime-broken";

fn extra_handlers(runtimes: &str, dir: &impl std::fmt::Display) -> String {
    format!(
        r#"    [{runtimes}.{GC_HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      [{runtimes}.{GC_HANDLER}.options]
        ConfigPath = "{dir}/wasmtime-gc.toml"
    [{runtimes}.{INLINE_HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      [{runtimes}.{INLINE_HANDLER}.options]
        WasmGc = true
        OptLevel = "speed_and_size"
    [{runtimes}.{BROKEN_HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      [{runtimes}.{BROKEN_HANDLER}.options]
        ConfigPath = "{dir}/wasmtime-broken.toml"
"#
    )
}

/// What kubelet asks for unless a pod sets `shareProcessNamespace`: every
/// container in its own PID namespace (the CRI default, POD, shares one).
fn own_pid_namespace() -> NamespaceOption {
    NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    }
}

/// Makes `pod` and `container` share the pod's PID namespace
/// (`shareProcessNamespace: true`).
pub fn share_pid_namespace(pod: &mut PodSandboxConfig, containers: &mut [&mut ContainerConfig]) {
    let shared = || NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    };
    if let Some(context) = pod.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        context.namespace_options = Some(shared());
    }
    for container in containers {
        if let Some(context) = container
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            context.namespace_options = Some(shared());
        }
    }
}

/// Waits for a [`CriNode::http_request`]: (status, body), status 0 if nothing answered.
pub fn http_response(curl: Child) -> (u16, String) {
    let output = curl.wait_with_output().expect("curl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (status.trim().parse().unwrap_or(0), body.to_string())
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
            crate::stop_containerd(child);
        }
        crate::cleanup_dir(&self.dir);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

// --- Helpers for the fault and churn suites (test/tests/faults.rs, churn.rs) ---

impl CriNode {
    /// Stops containerd; its shims, pods and containers keep running.
    pub fn stop_daemon(&mut self) {
        self.client = None;
        self.images = None;
        if let Some(child) = self.containerd.take() {
            crate::stop_containerd(child);
        }
    }

    /// Starts containerd again on the same root, state, socket and network
    /// namespace, and reconnects the CRI client.
    pub fn start_daemon(&mut self) {
        assert!(self.containerd.is_none(), "containerd is running");
        self.containerd = Some(crate::spawn_containerd(&self.dir, Some(&self.netns)));
        self.wait_ready();
    }

    /// The containerd process (under tini), if running.
    pub fn daemon_pid(&self) -> Option<i32> {
        let tini = self.containerd.as_ref()?.id() as i32;
        crate::children_of(tini).into_iter().next().or(Some(tini))
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.socket()
    }

    /// The shim processes of any runtime (wasmtime, runc) serving this node.
    pub fn all_shims(&self) -> Vec<(i32, String)> {
        crate::shim_servers(&self.socket())
    }

    /// `ctr -n k8s.io <args>` against this node; its output, whatever the status.
    /// The host pid of container `id`'s task.
    pub fn task_pid(&self, id: &str) -> Option<i32> {
        crate::task_pid_in(&self.ctr_output(&["task", "ls"]).stdout, id)
    }

    pub fn ctr_output(&self, args: &[&str]) -> crate::CtrOutput {
        Command::new(crate::ctr_binary())
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ctr")
            .into()
    }

    /// The bundle directories containerd holds for the CRI's namespace.
    pub fn bundles(&self) -> Vec<String> {
        crate::dir_names(&self.dir.join("state/io.containerd.runtime.v2.task/k8s.io"))
    }

    /// PodSandboxStatus, verbose: the status and the info map.
    pub fn pod_status(&self, pod: &str) -> (PodSandboxStatus, HashMap<String, String>) {
        let pod_sandbox_id = pod.to_string();
        let response = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose: true,
            })
            .await
        });
        (response.status.expect("a pod status"), response.info)
    }

    /// Whether the pod is SANDBOX_READY.
    pub fn pod_ready(&self, pod: &str) -> bool {
        self.pod_status(pod).0.state == PodSandboxState::SandboxReady as i32
    }

    /// The path of the pod's network namespace (`/var/run/netns/cni-...`),
    /// from the runtime spec in PodSandboxStatus's verbose info.
    pub fn pod_netns(&self, pod: &str) -> Option<String> {
        let (_, info) = self.pod_status(pod);
        let info: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
        info.pointer("/runtimeSpec/linux/namespaces")?
            .as_array()?
            .iter()
            .find(|ns| ns["type"] == "network")?
            .get("path")?
            .as_str()
            .map(str::to_string)
            .filter(|p| !p.is_empty())
    }

    /// StopContainer with a grace period of `timeout` seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let container_id = id.to_string();
        self.try_call(|mut c| async move {
            c.stop_container(StopContainerRequest {
                container_id,
                timeout,
            })
            .await
        })
        .map(drop)
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let container_id = id.to_string();
        self.try_call(|mut c| async move {
            c.remove_container(RemoveContainerRequest { container_id })
                .await
        })
        .map(drop)
    }

    /// StopPodSandbox then RemovePodSandbox; the first error.
    pub fn try_stop_and_remove_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let id = pod.to_string();
        self.try_call(|mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })?;
        let id = pod.to_string();
        self.try_call(|mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// Waits (up to `patience`) until `done` holds for the container's status;
    /// the last status.
    pub fn wait_status(
        &self,
        id: &str,
        patience: Duration,
        done: impl Fn(&ContainerStatus) -> bool,
    ) -> ContainerStatus {
        let deadline = Instant::now() + patience;
        loop {
            let status = self.container_status(id);
            if done(&status) || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
