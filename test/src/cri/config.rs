//! The files a CRI node's containerd reads: its config, in the two formats
//! containerd's versions read (1.x's `version = 2`, 2.x's `version = 3`),
//! with the runtime handlers the tests use; the bridge CNI network; and the
//! engine options files of the extra handlers.

use std::fs;
use std::path::Path;

use super::NodeOptions;
use crate::environment::{cgroup_driver, CgroupDriver};
use crate::images::PAUSE as PAUSE_IMAGE;

/// The runtime handler (RuntimeClass) of this shim.
pub const HANDLER: &str = "wasmtime";

/// Handlers with engine options of their own, beside [`HANDLER`]:
/// `wasmtime-gc` reads them from a file (`ConfigPath`, which every containerd
/// passes on), `wasmtime-inline` from its table (passed by containerd 1.7 and
/// later only), and `wasmtime-broken` names an option that does not exist.
pub const GC_HANDLER: &str = "wasmtime-gc";

pub const INLINE_HANDLER: &str = "wasmtime-inline";

pub const BROKEN_HANDLER: &str = "wasmtime-broken";

/// Writes the node's containerd config, CNI network and handler option
/// files into `node_dir`.
pub(super) fn write(node_dir: &Path, options: &NodeOptions) {
    let dir = node_dir.display();
    fs::create_dir_all(node_dir.join("cni")).unwrap();
    fs::write(
        node_dir.join("cni/10-wasmtime-test.conflist"),
        r#"{"cniVersion": "0.4.0", "name": "wasmtime-test", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}"#,
    )
    .unwrap();
    let v2 = crate::containerd_version().is_v2();
    let systemd = cgroup_driver() == CgroupDriver::Systemd;
    let mut config = if v2 {
        config_v3(&dir, systemd)
    } else {
        config_v2(&dir, systemd)
    };
    let cri_runtime = if v2 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    for (name, binary) in &options.binary_handlers {
        config.push_str(&format!(
            "[plugins.\"{cri_runtime}\".containerd.runtimes.{name}]\n  runtime_type = \"{}\"\n",
            binary.display()
        ));
    }
    if options.registry_hosts {
        let images = if v2 {
            "io.containerd.cri.v1.images"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        config.push_str(&format!(
            "[plugins.\"{images}\".registry]\n  config_path = \"{dir}/certs.d\"\n"
        ));
        fs::create_dir_all(node_dir.join("certs.d")).unwrap();
    }
    fs::write(node_dir.join("config.toml"), config).unwrap();
    fs::write(
        node_dir.join("wasmtime-gc.toml"),
        "WasmGc = true\nWasmExceptions = true\n",
    )
    .unwrap();
    fs::write(node_dir.join("wasmtime-broken.toml"), "WasmGC = true\n").unwrap();
}

/// The CRI node's config for containerd 1.6 and 1.7 (`version = 2`): one
/// plugin, `io.containerd.grpc.v1.cri`, holds images, runtimes and CNI.
/// `systemd`: `SystemdCgroup = true` for runc, as on a node whose kubelet
/// uses the systemd cgroup driver (docs/kubernetes.md). [`HANDLER`] is what
/// the node installer writes, with no options table: the shim follows the
/// cgroups path's shape, and containerd 2.x runs a pod with its own user
/// namespace only on a handler without one.
fn config_v2(dir: &impl std::fmt::Display, systemd: bool) -> String {
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
{timeouts}[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = {systemd}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmtime.containerd.io/*"]
      container_annotations = ["wasmtime.containerd.io/*"]
{extra}"#,
        extra = extra_handlers(
            r#"plugins."io.containerd.grpc.v1.cri".containerd.runtimes"#,
            dir
        ),
        timeouts = crate::daemon::timeouts_config(),
    )
}

/// The same for containerd 2.x (`version = 3`): the CRI's config is split
/// into `io.containerd.cri.v1.images` (the sandbox image is a pinned image)
/// and `io.containerd.cri.v1.runtime` (runtimes, CNI, restrict_oom_score_adj);
/// `io.containerd.grpc.v1.cri` is only the gRPC service. 2.x also enables NRI
/// by default, listening on the host-wide `/var/run/nri/nri.sock`: a second
/// node on the machine would fail to start ("failed to set up NRI for CRI
/// service ... address already in use"), so each node has its own socket.
fn config_v3(dir: &impl std::fmt::Display, systemd: bool) -> String {
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
{timeouts}[plugins."io.containerd.cri.v1.images".pinned_images]
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
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = {systemd}
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.wasmtime.v1"
      pod_annotations = ["wasmtime.containerd.io/*"]
      container_annotations = ["wasmtime.containerd.io/*"]
{extra}"#,
        extra = extra_handlers(
            r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes"#,
            dir
        ),
        timeouts = crate::daemon::timeouts_config(),
    )
}

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
