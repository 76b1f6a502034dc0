//! The CRI calls a test makes on a [`CriNode`], as kubelet makes them: pod
//! and container configs, RunPodSandbox, CreateContainer and
//! StartContainer, their status, stop and removal; and HTTP requests to a
//! pod from inside the node's network namespace.

use std::collections::HashMap;
use std::fs;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

use super::{CriNode, HANDLER};
use crate::environment::{cgroup_driver, CgroupDriver};

impl CriNode {
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

    /// A pod sandbox config with the given name, logging under this node's
    /// directory. Its uid is unique to the test process; with the systemd
    /// driver its cgroup parent is the slice kubelet would give it.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let logs = self.dir.join("logs").join(name);
        fs::create_dir_all(&logs).unwrap();
        let uid = crate::unique_id(&format!("uid-{name}"));
        let cgroup_parent = match cgroup_driver() {
            CgroupDriver::Systemd => pod_slice(&uid),
            CgroupDriver::Cgroupfs => String::new(),
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
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
        let pod = self
            .call("RunPodSandbox", |mut c| async move {
                c.run_pod_sandbox(request).await
            })
            .pod_sandbox_id;
        let parent = config.linux.as_ref().map(|l| l.cgroup_parent.as_str());
        if let Some(slice) = parent.filter(|p| p.ends_with(".slice")) {
            self.pod_slices
                .lock()
                .unwrap()
                .insert(pod.clone(), slice.to_string());
        }
        pod
    }

    /// What kubelet does once a pod is removed, with the systemd driver:
    /// stops the pod's slice. A slice that still holds a cgroup (a
    /// container's scope the shim left) stays, for the leak checks to find,
    /// until the node is dropped.
    fn remove_pod_slice(&self, pod: &str) {
        let Some(slice) = self.pod_slices.lock().unwrap().get(pod).cloned() else {
            return;
        };
        let holds_cgroups = fs::read_dir(crate::cgroups::slice_dir(&slice))
            .map(|dir| {
                dir.flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            })
            .unwrap_or(false);
        if !holds_cgroups {
            super::stop_unit(&slice);
            self.pod_slices.lock().unwrap().remove(pod);
        }
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
        self.remove_pod_slice(pod);
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
        })?;
        self.remove_pod_slice(pod);
        Ok(())
    }

    /// CRI ExecSync of `cmd` in `container`, as `kubectl exec` and exec
    /// probes make it, bounded by `timeout` seconds.
    pub fn exec_sync(
        &self,
        container: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<k8s_cri::v1::ExecSyncResponse, tonic::Status> {
        let request = k8s_cri::v1::ExecSyncRequest {
            container_id: container.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.try_call(|mut c| async move { c.exec_sync(request).await })
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
}

/// The slice kubelet's systemd driver makes for a BestEffort pod:
/// `kubepods-besteffort-pod<uid>.slice`, `-` in the uid escaped as `_`
/// (a `-` in a slice's name nests it).
fn pod_slice(uid: &str) -> String {
    let escaped: String = uid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kubepods-besteffort-pod{escaped}.slice")
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
