//! Faults under the CRI plugin, as kubelet sees them: containerd restarted
//! while a wasm pod runs (and containers end meanwhile), and a pod's shim
//! SIGKILLed, each side by side with a runc pod.

use std::time::{Duration, Instant};

use k8s_cri::v1::{ContainerState, CreateContainerRequest, StartContainerRequest};
use shim_tests::cgroups::Cgroup;
use shim_tests::containerd_version;
use shim_tests::cri::CriNode;
use shim_tests::images::{PAUSE, WASM_TEST};

use super::{assert_reaped, sigkill};

/// The host PID of a CRI container's task (`ctr -n k8s.io task ls`).
fn cri_task_pid(node: &CriNode, id: &str) -> Option<i32> {
    node.ctr_output(&["task", "ls"])
        .stdout
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// A container that runs until stopped: the looping guest for the wasm
/// handler, the pause program for runc.
fn long_runner(handler: &str, name: &str) -> k8s_cri::v1::ContainerConfig {
    if handler == "runc" {
        CriNode::container_config(name, PAUSE, &[])
    } else {
        CriNode::container_config(name, WASM_TEST, &["/wasitest.wasm", "loop"])
    }
}

/// CreateContainer then StartContainer, either of which may fail: the id
/// (if created) and the first error.
fn try_create_and_start(
    node: &CriNode,
    pod: &str,
    pod_config: &k8s_cri::v1::PodSandboxConfig,
    config: k8s_cri::v1::ContainerConfig,
) -> (Option<String>, Result<(), tonic::Status>) {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.to_string(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let id = match node.try_call(|mut c| async move { c.create_container(request).await }) {
        Ok(created) => created.container_id,
        Err(status) => return (None, Err(status)),
    };
    let request = StartContainerRequest {
        container_id: id.clone(),
    };
    let started = node
        .try_call(|mut c| async move { c.start_container(request).await })
        .map(drop);
    (Some(id), started)
}

#[test]
fn containerd_restarted_under_cri_keeps_wasm_pods_under_control() {
    let mut node = CriNode::start();
    let wasm_config = node.pod_config("restart");
    let wasm_pod = node.run_pod(&wasm_config);
    let runs = node.start_container(&wasm_pod, &wasm_config, long_runner("wasmtime", "runs"));
    let ends = node.start_container(&wasm_pod, &wasm_config, long_runner("wasmtime", "ends"));
    // The same fate under runc, for comparison.
    let runc_config = node.pod_config("restart-runc");
    let runc_pod = node.run_pod_with(&runc_config, "runc");
    let runc_ends = node.start_container(&runc_pod, &runc_config, long_runner("runc", "ends"));
    let pids = [&ends, &runc_ends].map(|id| cri_task_pid(&node, id).expect("a task pid"));
    let shims_before = node.shims();

    node.stop_daemon();
    for pid in pids {
        sigkill(pid);
    }
    assert_reaped(&pids);
    node.start_daemon();

    // The pod's shim was kept, not restarted.
    assert_eq!(node.shims(), shims_before, "the pod's shim is the same");
    assert!(node.pod_ready(&wasm_pod), "the wasm pod is still ready");
    let status = node.container_status(&runs);
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    // The containers that ended while containerd was down: exited, with the
    // status runc's gets.
    let exited = |id: &str| {
        node.wait_status(id, Duration::from_secs(20), |s| {
            s.state == ContainerState::ContainerExited as i32
        })
    };
    let (wasm, runc) = (exited(&ends), exited(&runc_ends));
    eprintln!(
        "exited during the restart: wasm {} {:?}, runc {} {:?} (containerd {})",
        wasm.exit_code,
        wasm.reason,
        runc.exit_code,
        runc.reason,
        containerd_version().text
    );
    assert_eq!(
        wasm.state,
        ContainerState::ContainerExited as i32,
        "{wasm:?}"
    );
    assert_eq!(
        (wasm.exit_code, &wasm.reason),
        (runc.exit_code, &runc.reason),
        "wasm {wasm:?}\nrunc {runc:?}"
    );
    let v = containerd_version();
    if (v.major, v.minor) < (1, 7) {
        // 1.6 finds the stopped task and reads its status from the shim.
        assert_eq!(wasm.exit_code, 137, "{wasm:?}");
    } else {
        // 1.7 and later delete a task shim with no process left when they
        // start (containerd#6860); CRI then has no status to read and says
        // "Unknown", for runc as for this shim.
        assert_eq!(
            (wasm.exit_code, wasm.reason.as_str()),
            (255, "Unknown"),
            "{wasm:?}"
        );
    }

    // A new container in the same pod, through the same shim: runs and is
    // reported, and its events reach the restarted containerd (the OOM
    // reason comes only from the shim's TaskOOM event).
    let hello = node.start_container(
        &wasm_pod,
        &wasm_config,
        CriNode::container_config("hello", WASM_TEST, &["/wasitest.wasm", "hello"]),
    );
    let status = node.wait_exited(&hello);
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"));
    let mut oom = CriNode::container_config("oom", WASM_TEST, &["/wasitest.wasm", "alloc", "300"]);
    oom.linux = Some(k8s_cri::v1::LinuxContainerConfig {
        resources: Some(k8s_cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let oom = node.start_container(&wasm_pod, &wasm_config, oom);
    node.wait_exited(&oom);
    // TaskOOM may reach CRI a moment after the exit, as kubelet's next
    // status poll would see.
    let status = node.wait_status(&oom, Duration::from_secs(10), |s| s.reason == "OOMKilled");
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}\n{}",
        node.log()
    );
    assert_eq!(node.shims(), shims_before, "still the same shim");

    // StopContainer, RemoveContainer and RemovePodSandbox after the restart.
    let started = Instant::now();
    node.stop_container(&runs, 10).expect("StopContainer");
    let status = node.wait_exited(&runs);
    assert_eq!(status.exit_code, 143, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    node.remove_container(&ends).expect("RemoveContainer");
    node.try_stop_and_remove_pod(&wasm_pod)
        .expect("remove the wasm pod");
    node.try_stop_and_remove_pod(&runc_pod)
        .expect("remove the runc pod");
    node.assert_clean(&[wasm_pod, runc_pod, runs, ends, runc_ends, hello, oom]);
    assert!(node.shims().is_empty(), "{:?}", node.shims());
    assert!(
        shim_tests::leaks::panics_in(&node.log()).is_empty(),
        "{:?}",
        shim_tests::leaks::panics_in(&node.log())
    );
}

/// What CRI reports after a pod's shim was SIGKILLed while two containers
/// ran: their exit codes and reasons, whether the pod is still ready, and
/// what became of a new container in the same pod.
#[derive(Debug, PartialEq)]
struct AfterShimKill {
    exits: Vec<(i32, String)>,
    pod_ready: bool,
    new_container_in_pod: Result<(), String>,
    /// Whether the dead shim's socket is still in /run/containerd/s.
    socket_left: bool,
    /// The containers' cgroups, bundles and rootfs mounts left once the
    /// exits are reported, before kubelet removes anything.
    left_after_kill: Vec<String>,
}

/// A pod of two long runners under `handler` whose shim is SIGKILLed: what
/// CRI then reports, and what kubelet's next moves get (a new container in
/// the pod, then the pod made again). The ids made go to `ids`.
fn kill_a_pods_shim(node: &CriNode, handler: &str, ids: &mut Vec<String>) -> AfterShimKill {
    let pod_config = node.pod_config(&format!("killed-{handler}"));
    let pod = node.run_pod_with(&pod_config, handler);
    ids.push(pod.clone());
    let containers: Vec<String> = (0..2)
        .map(|n| {
            node.start_container(
                &pod,
                &pod_config,
                long_runner(handler, &format!("c{n}-{handler}")),
            )
        })
        .collect();
    ids.extend(containers.iter().cloned());
    let shim: Vec<i32> = node
        .all_shims()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&pod))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shim.len(), 1, "{handler}: one shim for the pod");
    sigkill(shim[0]);

    let exits = containers
        .iter()
        .map(|id| {
            let status = node.wait_status(id, Duration::from_secs(20), |s| {
                s.state == ContainerState::ContainerExited as i32
            });
            assert_eq!(
                status.state,
                ContainerState::ContainerExited as i32,
                "{handler} {id}: {status:?}\n{}",
                node.log()
            );
            (status.exit_code, status.reason)
        })
        .collect();
    // The sandbox went with the shim: the pod turns NotReady.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.pod_ready(&pod) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let pod_ready = node.pod_ready(&pod);
    let socket = shim_tests::leaks::shim_socket(&node.containerd_socket(), "k8s.io", &pod);
    // Everything of the containers is gone already, before kubelet removes
    // anything: processes, cgroups, rootfs mounts, bundles.
    let bundles_left = || {
        let bundles = node.bundles();
        let mounts = shim_tests::procfs::mounts_under(node.dir());
        let mut left = shim_tests::cgroups::left("k8s.io", &containers);
        for id in containers.iter().chain([&pod]) {
            left.extend(
                bundles
                    .iter()
                    .filter(|b| *b == id)
                    .map(|b| format!("bundle {b}")),
            );
            left.extend(
                mounts
                    .iter()
                    .filter(|m| m.contains(id.as_str()) && m.ends_with("rootfs"))
                    .map(|m| format!("mount {m}")),
            );
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bundles_left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left_after_kill = bundles_left();
    assert!(
        !node
            .all_shims()
            .into_iter()
            .any(|(_, cmd)| cmd.contains(&pod)),
        "{handler}: no shim for the pod"
    );

    // kubelet's next move for a container of that pod.
    let command: &[&str] = if handler == "runc" {
        &["/native-hello"]
    } else {
        &["/wasitest.wasm", "hello"]
    };
    let (id, started) = try_create_and_start(
        node,
        &pod,
        &pod_config,
        CriNode::container_config(&format!("late-{handler}"), WASM_TEST, command),
    );
    ids.extend(id);
    let new_container_in_pod = started.map_err(|s| s.message().to_string());

    // kubelet's recovery: the pod is torn down and created again.
    node.try_stop_and_remove_pod(&pod)
        .unwrap_or_else(|e| panic!("{handler}: remove the dead pod: {e}\n{}", node.log()));
    let pod_config = node.pod_config(&format!("again-{handler}"));
    let pod = node.run_pod_with(&pod_config, handler);
    ids.push(pod.clone());
    let id = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config(&format!("again-{handler}"), WASM_TEST, command),
    );
    ids.push(id.clone());
    let status = node.wait_exited(&id);
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (0, "Completed"),
        "{handler}: a new pod after the kill"
    );
    node.stop_and_remove_pod(&pod);
    let socket_left = socket.exists();
    // runc's shim leaves it; nothing serves it any more.
    let _ = std::fs::remove_file(&socket);
    AfterShimKill {
        exits,
        pod_ready,
        new_container_in_pod,
        socket_left,
        left_after_kill,
    }
}

/// Containers whose processes must not outlive the test: on drop, whatever
/// still runs in their cgroups (`k8s.io/<id>`) is SIGKILLed and the cgroups
/// removed, also when the test failed half-way.
struct ReapCgroups(Vec<String>);

impl ReapCgroups {
    /// Kills what runs in the cgroups and removes them; what was there.
    fn reap(&self) -> Vec<String> {
        let cgroups = shim_tests::cgroups::left(shim_tests::cri::NAMESPACE, &self.0);
        for id in &self.0 {
            for pid in Cgroup::container(shim_tests::cri::NAMESPACE, id).pids() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for cgroup in &cgroups {
            let dir = cgroup.trim_start_matches("cgroup ");
            while std::fs::remove_dir(dir).is_err()
                && std::path::Path::new(dir).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cgroups
    }
}

impl Drop for ReapCgroups {
    fn drop(&mut self) {
        self.reap();
    }
}

#[test]
fn a_pods_shim_killed_under_cri_fares_as_runcs() {
    let node = CriNode::start();
    // Declared after the node, so dropped before it: containerd's tini
    // still reaps what they kill.
    let (mut wasm_ids, mut runc_ids) = (ReapCgroups(Vec::new()), ReapCgroups(Vec::new()));
    let wasm = kill_a_pods_shim(&node, "wasmtime", &mut wasm_ids.0);
    let runc = kill_a_pods_shim(&node, "runc", &mut runc_ids.0);
    eprintln!("after the pod's shim was killed:\n  wasmtime {wasm:?}\n  runc     {runc:?}");
    // CRI learns of the exits from its Wait calls, which fail with the
    // shim's connection: containerd's "unknown" status, 255, for runc as
    // for this shim (the 137 of `shim delete` goes out in containerd's
    // TaskExit event, see `a_killed_pod_shim_reports_its_tasks_killed_as_runcs_does`).
    for (code, _) in &wasm.exits {
        assert!([137, 255].contains(code), "{wasm:?}");
    }
    assert!(!wasm.pod_ready, "{wasm:?}");
    // A new container in the dead pod fails the way runc's does (the pod's
    // sandbox is gone by containerd's design; kubelet makes a new pod).
    assert!(wasm.new_container_in_pod.is_err(), "{wasm:?}");
    // Unlike runc's shim (1.6, 1.7), this one's `shim delete` removes the
    // dead shim's socket, and the containers' cgroups, mounts and bundles
    // are gone with the exits (runc's cgroups stay until the pod is removed
    // with containerd 2.1).
    assert!(!wasm.socket_left, "{wasm:?}");
    assert_eq!(wasm.left_after_kill, Vec::<String>::new());
    assert_eq!(
        (
            &wasm.exits,
            wasm.pod_ready,
            wasm.new_container_in_pod.is_err()
        ),
        (
            &runc.exits,
            runc.pod_ready,
            runc.new_container_in_pod.is_err()
        ),
        "wasmtime {wasm:?}\nrunc {runc:?}"
    );
    node.assert_clean(&wasm_ids.0);
    // With containerd 2.1, runc's containers outlive their killed shim:
    // still running, in their cgroups, even after RemovePodSandbox. They
    // are killed and their cgroups removed here, after saying so.
    let runc_left = runc_ids.reap();
    if !runc_left.is_empty() {
        eprintln!("left by runc after its shim was killed: {runc_left:#?}");
    }
    node.assert_clean(&runc_ids.0);
    assert!(node.all_shims().is_empty(), "{:?}", node.all_shims());
    let panics = shim_tests::leaks::panics_in(&node.log());
    assert!(panics.is_empty(), "{panics:#?}");
}
