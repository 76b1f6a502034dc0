//! Through containerd's CRI plugin, as kubelet drives it:
//!
//! - pod start: RunPodSandbox, CreateContainer, StartContainer, until the
//!   container has exited; a wasm pod (`wasmtime` handler, hello wasm) vs a
//!   runc pod running a static hello binary. The pods are torn down outside
//!   the measurement.
//! - density: N pods of K idle containers each, all running at once: a
//!   sleeping wasm guest vs the static `pause` binary under runc (each pod
//!   has its pause sandbox on both sides). PSS of every shim and everything
//!   under them, once with the pods only and once with their containers,
//!   and the time to create each.

use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;
use shim_tests::cri::CriNode;
use shim_tests::images::{PAUSE, WASM_TEST};
use shim_tests::unique_id;

use super::ctr::shim_tree;

/// The CRI handler of the no-op shim, the floor of a pod start.
pub(crate) const NOOP: &str = "noop";

/// One pod from RunPodSandbox until its container has exited, in ms.
fn pod_start(node: &CriNode, handler: &str) -> f64 {
    let name = unique_id("bench-pod");
    let config = node.pod_config(&name);
    let command: &[&str] = match handler {
        "wasmtime" => &["/wasitest.wasm"],
        // The no-op shim runs nothing; runc the static hello.
        _ => &["/native-hello"],
    };
    let began = Instant::now();
    let pod = node.run_pod_with(&config, handler);
    let container = CriNode::container_config("hello", WASM_TEST, command);
    let id = node.start_container(&pod, &config, container);
    let deadline = began + Duration::from_secs(30);
    loop {
        let status = node.container_status(&id);
        if status.state == ContainerState::ContainerExited as i32 {
            assert_eq!(status.exit_code, 0, "{handler} pod: {status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handler} pod never finished: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = began.elapsed().as_secs_f64() * 1000.0;
    node.stop_and_remove_pod(&pod);
    elapsed
}

/// `pods` pod starts per handler, alternating: ms of wasm, runc and the
/// no-op shim's pods.
pub fn pod_starts(node: &CriNode, pods: usize) -> [Vec<f64>; 3] {
    let handlers = ["wasmtime", "runc", NOOP];
    // Warm every path once (snapshots, CNI), outside the measurement.
    for handler in handlers {
        pod_start(node, handler);
    }
    let mut starts = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..pods {
        for (n, handler) in handlers.into_iter().enumerate() {
            starts[n].push(pod_start(node, handler));
        }
    }
    starts
}

/// What N pods of K idle containers cost one handler.
pub(crate) struct Density {
    /// PSS, MiB, with the pods' sandboxes only.
    pub(crate) pods_mib: f64,
    /// PSS, MiB, with every container running too.
    pub(crate) total_mib: f64,
    /// Processes under the shims, all running.
    pub(crate) processes: usize,
    /// PSS by process name, all running.
    pub(crate) breakdown: String,
    /// Seconds to run the pods' sandboxes, then to start their containers.
    pub(crate) pods_secs: f64,
    pub(crate) containers_secs: f64,
}

/// `pods` pods of `per_pod` idle containers on `handler`, all at once;
/// measured, then removed.
pub(crate) fn density(node: &CriNode, handler: &str, pods: usize, per_pod: usize) -> Density {
    let (image, command): (&str, &[&str]) = match handler {
        "runc" => (PAUSE, &["/pause"]),
        _ => (WASM_TEST, &["/wasitest.wasm", "sleep"]),
    };
    let began = Instant::now();
    let sandboxes: Vec<_> = (0..pods)
        .map(|_| {
            let config = node.pod_config(&unique_id("bench-dense"));
            let pod = node.run_pod_with(&config, handler);
            (pod, config)
        })
        .collect();
    let pods_secs = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let pods_kib = shim_tree(&node.containerd_socket()).kib;
    let began = Instant::now();
    for (pod, config) in &sandboxes {
        for n in 0..per_pod {
            let container = CriNode::container_config(&format!("idle-{n}"), image, command);
            node.start_container(pod, config, container);
        }
    }
    let containers_secs = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let all = shim_tree(&node.containerd_socket());
    let (total_kib, processes) = (all.kib, all.processes);
    for (pod, _) in &sandboxes {
        node.stop_and_remove_pod(pod);
    }
    let density = Density {
        pods_mib: pods_kib as f64 / 1024.0,
        total_mib: total_kib as f64 / 1024.0,
        processes,
        breakdown: all.breakdown(),
        pods_secs,
        containers_secs,
    };
    eprintln!(
        "  {handler:<9} {pods} pods × {per_pod}: {processes} processes, {:.0} MiB PSS \
         ({:.0} MiB the pods alone); {pods_secs:.1} s to run the pods, \
         {containers_secs:.1} s their containers",
        density.total_mib, density.pods_mib
    );
    density
}
