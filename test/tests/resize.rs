//! In-place pod resize: kubelet's UpdateContainerResources on running wasm
//! and native containers, through containerd's CRI plugin. The cgroup's
//! limits change, the wasm guest's memory limit follows, and a memory limit
//! below what the guest holds is refused with the reason.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::{LinuxContainerConfig, LinuxContainerResources};
use shim_tests::cgroups::Cgroup;
use shim_tests::cri::{CriNode, NAMESPACE};
use shim_tests::environment::slow;
use shim_tests::images::WASM_TEST;

const MIB: i64 = 1 << 20;

fn limits(memory: i64, cpu_quota: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_period: 100_000,
        cpu_quota,
        ..Default::default()
    }
}

fn update(node: &CriNode, id: &str, resources: LinuxContainerResources) -> Result<(), String> {
    let container_id = id.to_string();
    node.try_call(|mut c| async move {
        c.update_container_resources(k8s_cri::v1::UpdateContainerResourcesRequest {
            container_id,
            linux: Some(resources),
            ..Default::default()
        })
        .await
    })
    .map(drop)
    .map_err(|status| status.message().to_string())
}

/// Waits until the container's CRI log has a line ending in `line`.
fn wait_log(log: &Path, line: &str) {
    let deadline = Instant::now() + slow(Duration::from_secs(30));
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.ends_with(line)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {line:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The memory limit and CPU quota ContainerStatus reports (containerd's
/// record of the container's resources).
fn reported(node: &CriNode, id: &str) -> Option<(i64, i64)> {
    let linux = node.container_status(id).resources?.linux?;
    Some((linux.memory_limit_in_bytes, linux.cpu_quota))
}

/// CPU time the container used over one second.
fn cpu_over_a_second(cgroup: &Cgroup) -> Duration {
    let before = cgroup.cpu_time().expect("CPU time");
    std::thread::sleep(Duration::from_secs(1));
    Duration::from_nanos(cgroup.cpu_time().expect("CPU time") - before)
}

#[test]
fn a_resized_wasm_guest_grows_into_its_new_limit_and_is_not_lowered_below_its_use() {
    let node = CriNode::start();
    let pod_config = node.pod_config("resize");
    let pod = node.run_pod(&pod_config);
    let mut config =
        CriNode::container_config("grow", WASM_TEST, &["/wasitest.wasm", "growto", "96"]);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(limits(64 * MIB, 20_000)),
        ..Default::default()
    });
    let id = node.start_container(&pod, &pod_config, config);
    let log = node.dir().join("logs/resize/grow.log");
    let cgroup = Cgroup::container(NAMESPACE, &id);
    // Its linear memory stops short of 64 MiB: the limit is on all of it.
    wait_log(&log, " stuck at 63 MiB");
    assert_eq!(cgroup.memory_max(), Some(64 << 20));

    assert_eq!(reported(&node, &id), Some((64 * MIB, 20_000)));
    update(&node, &id, limits(128 * MIB, 50_000)).expect("raise the limits");
    wait_log(&log, " reached 96 MiB");
    assert_eq!(cgroup.memory_max(), Some(128 << 20));
    assert_eq!(cgroup.cpu_max(), Some((Some(50_000), 100_000)));
    assert_eq!(reported(&node, &id), Some((128 * MIB, 50_000)));

    // Below the 96 MiB the guest holds: refused, and nothing changes.
    let refused = update(&node, &id, limits(80 * MIB, 50_000)).unwrap_err();
    assert!(
        refused.contains(&format!(
            "container {id}: cannot lower the memory limit to 80.0 MiB"
        )) && refused.contains("its wasm guests hold 96."),
        "{refused}"
    );
    assert_eq!(cgroup.memory_max(), Some(128 << 20));
    assert_eq!(
        reported(&node, &id),
        Some((128 * MIB, 50_000)),
        "containerd kept the old resources"
    );
    // Above it, but lower: taken.
    update(&node, &id, limits(112 * MIB, 50_000)).expect("lower the memory limit");
    assert_eq!(cgroup.memory_max(), Some(112 << 20));
    assert_eq!(reported(&node, &id), Some((112 * MIB, 50_000)));
    let status = node.container_status(&id);
    assert_eq!(
        status.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, id]);
}

#[test]
fn cpu_throttling_follows_a_new_quota_on_wasm_and_native_containers() {
    let node = CriNode::start();
    let pod_config = node.pod_config("throttle");
    let pod = node.run_pod(&pod_config);
    let start = |name: &str, command: &[&str]| {
        let mut config = CriNode::container_config(name, WASM_TEST, command);
        config.linux = Some(LinuxContainerConfig {
            resources: Some(limits(64 * MIB, 10_000)),
            ..Default::default()
        });
        node.start_container(&pod, &pod_config, config)
    };
    let wasm = start("spin", &["/wasitest.wasm", "loop"]);
    let native = start("sidecar", &["/native-hello", "sleep"]);

    // The spinning guest gets at most 10 ms of each 100 ms period.
    let cgroup = Cgroup::container(NAMESPACE, &wasm);
    let (_, throttled_before) = cgroup.cpu_usage().expect("cpu.stat");
    let capped = cpu_over_a_second(&cgroup);
    let (_, throttled) = cgroup.cpu_usage().expect("cpu.stat");
    assert!(
        capped < Duration::from_millis(200),
        "{capped:?} in 1 s at 0.1 CPU"
    );
    assert!(
        throttled > throttled_before,
        "throttled {throttled_before} → {throttled}"
    );
    update(&node, &wasm, limits(64 * MIB, 60_000)).expect("raise the CPU quota");
    assert_eq!(cgroup.cpu_max(), Some((Some(60_000), 100_000)));
    let raised = cpu_over_a_second(&cgroup);
    assert!(
        raised > capped * 2 && raised < Duration::from_millis(800),
        "{capped:?}, then {raised:?} in 1 s at 0.6 CPU"
    );

    // A native sidecar's cgroup follows too; its memory may go either way.
    let sidecar = Cgroup::container(NAMESPACE, &native);
    update(&node, &native, limits(32 * MIB, 30_000)).expect("resize the sidecar");
    assert_eq!(sidecar.memory_max(), Some(32 << 20));
    assert_eq!(sidecar.cpu_max(), Some((Some(30_000), 100_000)));
    update(&node, &native, limits(256 * MIB, 30_000)).expect("resize the sidecar");
    assert_eq!(sidecar.memory_max(), Some(256 << 20));
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, wasm, native]);
}
