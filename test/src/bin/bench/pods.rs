//! Pod start through containerd's CRI plugin, as kubelet drives it:
//! RunPodSandbox, CreateContainer, StartContainer, until the container has
//! exited; a wasm pod (`wasmtime` handler, hello wasm) vs a runc pod running a
//! static hello binary. The pods are torn down outside the measurement.

use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;
use shim_tests::cri::CriNode;
use shim_tests::images::WASM_TEST;
use shim_tests::unique_id;

/// One pod from RunPodSandbox until its container has exited, in ms.
fn pod_start(node: &CriNode, handler: &str) -> f64 {
    let name = unique_id("bench-pod");
    let config = node.pod_config(&name);
    let command: &[&str] = match handler {
        "runc" => &["/native-hello"],
        _ => &["/wasitest.wasm"],
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

/// `pods` pod starts per handler, alternating; (wasm ms, runc ms).
pub fn pod_starts(pods: usize) -> (Vec<f64>, Vec<f64>) {
    let node = CriNode::start();
    // Warm both paths once (snapshots, CNI), outside the measurement.
    pod_start(&node, "wasmtime");
    pod_start(&node, "runc");
    let (mut wasm, mut runc) = (Vec::new(), Vec::new());
    for _ in 0..pods {
        wasm.push(pod_start(&node, "wasmtime"));
        runc.push(pod_start(&node, "runc"));
    }
    (wasm, runc)
}
