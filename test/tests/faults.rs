//! Faults: the shim or containerd going away while tasks run.

use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::images::{PAUSE, WASM_TEST};
use shim_tests::{containerd_version, unique_id, Containerd};

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let id = unique_id("orphan");
    c.run_detached(&id, WASM_TEST, &["/wasitest.wasm", "loop"]);
    let shims: Vec<i32> = c
        .shims()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&id))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shims.len(), 1, "one shim for {id}");
    let status = std::process::Command::new("kill")
        .args(["-9", &shims[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // containerd sees the shim's connection drop, runs `shim delete` on the
    // bundle, and reports the task as exited with 137.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = c.ctr(&["task", "rm", "-f", &id]);
        if out.code == 0 || out.stderr.contains("not found") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task never went away: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ctr(&["containers", "rm", &id]);
    c.assert_clean(&[&id]);
}

#[test]
fn tasks_survive_a_containerd_restart() {
    let mut c = Containerd::start();
    c.import("wasm-test.tar");
    c.import("pause.tar");
    let running = unique_id("survivor");
    let ended = unique_id("ended");
    // The same fate under runc, for comparison: a pause container.
    let runc_ended = unique_id("runc-ended");
    c.run_detached(&running, WASM_TEST, &["/wasitest.wasm", "loop"]);
    c.run_detached(&ended, WASM_TEST, &["/wasitest.wasm", "loop"]);
    let out = c.ctr(&["run", "-d", PAUSE, &runc_ended]);
    assert_eq!(out.code, 0, "{out:?}");
    let ended_pids = [&ended, &runc_ended].map(|id| c.task_pid(id).expect("pid"));
    let shims = [&running, &ended].map(|id| {
        let pid = c.task_pid(id).expect("pid");
        shim_tests::procfs::proc_state(pid)
            .expect("the guest's parent")
            .1
    });
    c.stop_daemon();
    // Guests that end while containerd is down.
    for pid in ended_pids {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        assert!(killed.unwrap().success());
    }
    assert_reaped(&ended_pids);
    // And the shims idle while nobody reads their log: a shim that logged
    // into containerd's closed log fifo once spun on SIGPIPE, reaping nothing.
    let before = shims.map(|pid| shim_tests::procfs::cpu_time(pid).expect("shim alive"));
    std::thread::sleep(Duration::from_millis(500));
    for (pid, before) in shims.into_iter().zip(before) {
        let used = shim_tests::procfs::cpu_time(pid).expect("shim alive") - before;
        assert!(
            used < Duration::from_millis(100),
            "shim {pid} used {used:?} of CPU in 500 ms with containerd down"
        );
    }
    c.start_daemon();
    // containerd reconnects to both shims: one task still runs.
    let tasks = c.ctr(&["task", "ls"]).stdout;
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&running) && l.contains("RUNNING")),
        "{tasks}"
    );
    // The task that ended while containerd was down is treated as runc's is.
    let state = |id: &str| {
        tasks
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
    };
    assert_eq!(state(&ended), state(&runc_ended), "{tasks}");
    let v = containerd_version();
    if (v.major, v.minor) < (1, 7) {
        // containerd 1.6: the task is still there, its shim kept the exit status.
        assert_eq!(state(&ended).as_deref(), Some("STOPPED"), "{tasks}");
        let status = c.ctr(&["task", "rm", &ended]).stderr;
        assert!(status.contains("exit code 137"), "{status}");
    } else {
        // containerd 1.7 and later delete, when they start, every task shim
        // whose task has no process left and is not a sandbox ("cleaning
        // leaked shim process", containerd#6860): for runc as for this shim,
        // so there is no exit status to read back.
        assert_eq!(state(&ended), None, "{tasks}");
        let log = c.log();
        for id in [&ended, &runc_ended] {
            assert!(
                log.lines()
                    .any(|l| l.contains("cleaning leaked shim process") && l.contains(id.as_str())),
                "{id}: {log}"
            );
        }
    }
    // And the running one is still under control.
    assert_eq!(c.ctr(&["task", "kill", "-s", "SIGKILL", &running]).code, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .ctr(&["task", "ls"])
        .stdout
        .lines()
        .any(|l| l.starts_with(&running) && l.contains("STOPPED"))
    {
        assert!(
            Instant::now() < deadline,
            "the kill after the restart did not land"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = c.ctr(&["task", "rm", &running]).stderr;
    assert!(status.contains("exit code 137"), "{status}");
    for id in [&running, &ended, &runc_ended] {
        c.ctr(&["task", "rm", id]);
        c.ctr(&["containers", "rm", id]);
    }
    c.assert_clean(&[&running, &ended, &runc_ended]);
}

#[test]
fn a_pod_whose_zygote_died_still_creates_containers() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let annotation = format!("io.kubernetes.cri.sandbox-id={}", unique_id("pod"));
    let running = unique_id("zygote-running");
    let out = c.ctr(&[
        "run",
        "-d",
        "--annotation",
        &annotation,
        "--runtime",
        shim_tests::RUNTIME,
        WASM_TEST,
        &running,
        "/wasitest.wasm",
        "loop",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let socket = c.socket().display().to_string();
    let zygotes: Vec<i32> = shim_tests::procfs::processes_naming(&socket)
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "shim-zygote")
        })
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(zygotes.len(), 1, "the pod's shim has one zygote");
    let killed = std::process::Command::new("kill")
        .args(["-9", &zygotes[0].to_string()])
        .status();
    assert!(killed.unwrap().success());
    // The next container of the pod is created the slow way, by a helper
    // the shim executes; the running one is untouched.
    let id = unique_id("after-zygote");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--annotation", &annotation],
        &["/wasitest.wasm"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    assert!(c.task_pid(&running).is_some(), "{running} still runs");
    assert!(c.log().contains("the zygote is gone"), "{}", c.log());
    c.remove(&running);
    c.assert_clean(&[&running, &id]);
}

// --- Through CRI: containerd restarted, the pod's shim killed -------------

use k8s_cri::v1::{ContainerState, CreateContainerRequest, StartContainerRequest};
use shim_tests::cri::CriNode;

/// The host PID of a CRI container's task (`ctr -n k8s.io task ls`).
fn cri_task_pid(node: &CriNode, id: &str) -> Option<i32> {
    node.ctr_output(&["task", "ls"])
        .stdout
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Waits for guests SIGKILLed while containerd is down to be reaped by their
/// shims, which must happen at once, as under runc's shim: containerd 1.7+
/// decides what to do with a task from the processes its shim still lists
/// when it comes back, and a guest still dying then (a big address space
/// takes a while to tear down) would make the outcome a race.
fn assert_reaped(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(&pid) = pids
        .iter()
        .find(|&&pid| shim_tests::procfs::proc_state(pid).is_some())
    {
        assert!(
            Instant::now() < deadline,
            "{pid} ended while containerd was down and was not reaped: {:?}",
            shim_tests::procfs::proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigkill(pid: i32) {
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    assert!(killed.unwrap().success(), "kill -9 {pid}");
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

// --- Races: kill during create, delete during start, 50 lifecycles at once ---

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use shim_tests::rng::Rng;
use shim_tests::{CtrOutput, RUNTIME};

/// Every ctr call of these tests gets an answer within this, or the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `ctr run -d` of `command`, in the pod of annotation `pod` if given.
fn run_detached_args<'a>(pod: Option<&'a str>, id: &'a str, command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    if let Some(annotation) = pod {
        args.extend(["--annotation", annotation]);
    }
    args.extend([WASM_TEST, id]);
    args.extend(command);
    args
}

fn answered(c: &Containerd, args: &[&str]) -> CtrOutput {
    c.ctr_within(args, CALL_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "ctr {args:?} did not return within {CALL_TIMEOUT:?}\n{}",
            c.log()
        )
    })
}

/// Removes task and container `id` whatever their state; fails the test if
/// that does not work within 20 s.
fn force_remove(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let task = answered(c, &["task", "rm", "-f", id]);
        let gone = task.code == 0 || task.stderr.contains("not found");
        let container = answered(c, &["containers", "rm", id]);
        if gone && (container.code == 0 || container.stderr.contains("not found")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} cannot be removed: {task:?} {container:?}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the stdio fifos ctr made for `id` in its fifo dir; how many.
/// Only `ctr task rm` removes them, and only the call whose delete
/// succeeded: when several ctr race to delete a task that is still being
/// created, the winner may be one that could not load its IO (seen once with
/// containerd 2.1's ctr), whatever the runtime. They are ctr's, not the shim's.
fn drop_ctr_fifos(c: &Containerd, id: &str) -> usize {
    let fifos: Vec<_> = shim_tests::leaks::fifos_under(&c.dir().join("fifo"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(id))
        .collect();
    for fifo in &fifos {
        let _ = std::fs::remove_file(fifo);
    }
    fifos.len()
}

/// Where `action` (a ctr command taking the task id last) landed on a task
/// being created and started by `ctr run -d`.
#[derive(Debug, Default)]
struct Landings {
    /// Before start: `ctr run -d` failed.
    before_start: u32,
    /// On the running task.
    after_start: u32,
    /// Fifos ctr left (see [`drop_ctr_fifos`]).
    ctr_fifos: usize,
}

/// How many `ctr` callers race `ctr run -d`.
const ACTORS: usize = 4;

/// Runs `ctr run -d` of a looping guest and, at the same time, `action` on
/// its task again and again until it succeeds; checks the outcome with
/// `check` and that nothing of the task is left.
fn race(
    c: &Containerd,
    pod: Option<&str>,
    action: &[&str],
    rounds: usize,
    check: impl Fn(&str, &CtrOutput),
) -> Landings {
    let mut landings = Landings::default();
    for round in 0..rounds {
        let id = unique_id(&format!("race{round}"));
        let done = AtomicBool::new(false);
        // Several callers at once, so that one lands in the short window
        // between the task's create and its start.
        let landed = AtomicBool::new(false);
        let mut args = action.to_vec();
        args.push(&id);
        let run = std::thread::scope(|s| {
            let runner = s.spawn(|| {
                let out = answered(c, &run_detached_args(pod, &id, &["/wasitest.wasm", "loop"]));
                done.store(true, Ordering::SeqCst);
                out
            });
            for _ in 0..ACTORS {
                let (args, landed, done) = (&args, &landed, &done);
                s.spawn(move || {
                    while !landed.load(Ordering::SeqCst) {
                        let finished = done.load(Ordering::SeqCst);
                        if answered(c, args).code == 0 {
                            landed.store(true, Ordering::SeqCst);
                        }
                        if finished {
                            break;
                        }
                    }
                });
            }
            runner.join().expect("ctr run thread")
        });
        if run.code == 0 {
            landings.after_start += 1;
        } else {
            landings.before_start += 1;
        }
        check(&id, &run);
        force_remove(c, &id);
        landings.ctr_fifos += drop_ctr_fifos(c, &id);
        c.assert_clean_of(&[&id], Duration::from_secs(10));
    }
    landings
}

#[test]
fn a_kill_during_create_and_a_delete_during_start_leave_nothing() {
    // containerd knows a task only once the shim's create has returned, so
    // the earliest a kill or delete can land is between create and start.
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    let shim = c.shims();
    for pod in [None, Some(annotation.as_str())] {
        let kills = race(&c, pod, &["task", "kill", "-s", "SIGKILL"], 8, |id, run| {
            // Killed before or after start: the task is stopped with SIGKILL's status.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let tasks = c.ctr(&["task", "ls"]).stdout;
                if tasks
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("STOPPED"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id} never stopped: {tasks}\n{run:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let deleted = answered(&c, &["task", "rm", id]);
            assert!(
                deleted.stderr.contains("exit code 137"),
                "{id}: {deleted:?}\n{run:?}"
            );
        });
        let deletes = race(&c, pod, &["task", "rm", "-f"], 8, |id, run| {
            let tasks = c.ctr(&["task", "ls"]).stdout;
            assert!(!tasks.contains(id), "{id} is still there: {tasks}\n{run:?}");
        });
        eprintln!(
            "{}: kill landed {kills:?}, delete landed {deletes:?}",
            if pod.is_some() {
                "through the pod's shim"
            } else {
                "one shim per task"
            }
        );
    }
    // The pod's shim lived through all of it and still serves.
    assert_eq!(c.shims().len(), 1, "{:?}", c.shims());
    assert!(c.shims().keys().all(|pid| shim.contains_key(pid)));
    the_pod_still_serves_then_goes(&c, &annotation, &sandbox, &[]);
}

/// The end of a test on a ctr-made pod: its shim still runs a new task,
/// then the pod goes and nothing of it, of that task or of `ids` is left,
/// and nothing panicked.
fn the_pod_still_serves_then_goes(c: &Containerd, annotation: &str, sandbox: &str, ids: &[&str]) {
    let id = unique_id("after");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--annotation", annotation],
        &["/wasitest.wasm"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    c.remove(sandbox);
    let mut all = ids.to_vec();
    all.extend([sandbox, id.as_str()]);
    c.assert_clean(&all);
    let panics = shim_tests::leaks::panics_in(&c.log());
    assert!(panics.is_empty(), "{panics:#?}");
}

/// The PIDs in a ctr container's cgroup.
fn cgroup_pids(id: &str) -> Vec<i32> {
    Cgroup::container(shim_tests::NAMESPACE, id).pids()
}

#[test]
fn a_guest_killed_while_it_is_created_leaves_nothing() {
    // Not through containerd (which knows a task only once created): the
    // kernel or an operator SIGKILLs whatever runs in the container's cgroup
    // while the shim is still creating it.
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    for round in 0..10 {
        let pod = (round % 2 == 1).then_some(annotation.as_str());
        let id = unique_id(&format!("shot{round}"));
        let done = AtomicBool::new(false);
        let (run, killed) = std::thread::scope(|s| {
            let runner = s.spawn(|| {
                let out = answered(
                    &c,
                    &run_detached_args(pod, &id, &["/wasitest.wasm", "loop"]),
                );
                done.store(true, Ordering::SeqCst);
                out
            });
            let mut killed = 0;
            while !done.load(Ordering::SeqCst) {
                for pid in cgroup_pids(&id) {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .stderr(std::process::Stdio::null())
                        .status();
                    killed += 1;
                }
            }
            (runner.join().expect("ctr run thread"), killed)
        });
        for pid in cgroup_pids(&id) {
            sigkill(pid);
        }
        eprintln!(
            "round {round}: {killed} kill(s); ctr run -d: {} {}",
            run.code,
            run.stderr.trim()
        );
        force_remove(&c, &id);
        c.assert_clean_of(&[&id], Duration::from_secs(10));
    }
    assert_eq!(c.shims().len(), 1, "only the pod's shim: {:?}", c.shims());
    the_pod_still_serves_then_goes(&c, &annotation, &sandbox, &[]);
}

/// What 50 lifecycles on one shim did: calls made, the slowest, failures.
#[derive(Default)]
struct Storm {
    calls: usize,
    slowest: Duration,
    slowest_call: String,
    ctr_fifos: usize,
    plans: [usize; 7],
    failures: Vec<String>,
}

/// One container's life through the pod's shim, picked by `rng`: kill and
/// delete in some order, concurrently or not, while it is created, started,
/// running or exiting by itself.
fn lifecycle(c: &Containerd, annotation: &str, id: &str, mut rng: Rng, storm: &Mutex<Storm>) {
    let call = |args: &[&str]| -> CtrOutput {
        let started = Instant::now();
        let out = answered(c, args);
        let mut storm = storm.lock().unwrap();
        storm.calls += 1;
        if started.elapsed() > storm.slowest {
            storm.slowest = started.elapsed();
            storm.slowest_call = format!("{:?}", &args[..args.len().min(4)]);
        }
        out
    };
    let fail = |what: String| storm.lock().unwrap().failures.push(what);
    let pause = |rng: &mut Rng| std::thread::sleep(Duration::from_millis(rng.below(50)));
    let pod = Some(annotation);
    let plan = rng.below(7) as usize;
    storm.lock().unwrap().plans[plan] += 1;
    pause(&mut rng);
    match plan {
        // Run to completion and removal in one ctr call.
        0 => {
            let out = call(&[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--annotation",
                annotation,
                WASM_TEST,
                id,
                "/wasitest.wasm",
            ]);
            if (out.code, out.stdout.as_str()) != (0, "hello from wasm\n") {
                fail(format!("{id} run --rm: {out:?}"));
            }
        }
        // Exits by itself; deleted afterwards.
        1 => {
            let out = call(&run_detached_args(pod, id, &["/wasitest.wasm"]));
            if out.code != 0 {
                fail(format!("{id} run -d: {out:?}"));
            }
            pause(&mut rng);
            call(&["task", "rm", id]);
        }
        // SIGKILL or SIGTERM, then delete.
        2 | 3 => {
            let out = call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"]));
            if out.code != 0 {
                fail(format!("{id} run -d: {out:?}"));
            }
            pause(&mut rng);
            let signal = if plan == 2 { "SIGKILL" } else { "SIGTERM" };
            call(&["task", "kill", "-s", signal, id]);
            pause(&mut rng);
            call(&["task", "rm", id]);
        }
        // Force-deleted while running.
        4 => {
            call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"]));
            pause(&mut rng);
            call(&["task", "rm", "-f", id]);
        }
        // Kill and delete at the same time.
        5 => {
            call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"]));
            pause(&mut rng);
            std::thread::scope(|s| {
                s.spawn(|| call(&["task", "kill", "-s", "SIGKILL", id]));
                s.spawn(|| call(&["task", "rm", "-f", id]));
            });
        }
        // Killed and deleted while ctr is still creating and starting it.
        _ => {
            let delay = rng.below(40);
            std::thread::scope(|s| {
                s.spawn(|| call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"])));
                std::thread::sleep(Duration::from_millis(delay));
                s.spawn(|| call(&["task", "kill", "-s", "SIGKILL", id]));
                std::thread::sleep(Duration::from_millis(delay / 2));
                call(&["task", "rm", "-f", id]);
            });
        }
    }
    force_remove(c, id);
    let fifos = drop_ctr_fifos(c, id);
    storm.lock().unwrap().ctr_fifos += fifos;
}

#[test]
fn fifty_lifecycles_at_once_on_one_shim_neither_hang_nor_leak() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    let shim = *c.shims().keys().next().expect("the pod's shim");
    let mut rng = Rng::from_env("FAULTS_SEED");
    let ids: Vec<String> = (0..50).map(|n| unique_id(&format!("storm{n}"))).collect();
    let storm = Mutex::new(Storm::default());
    let started = Instant::now();
    std::thread::scope(|s| {
        for id in &ids {
            let rng = Rng::new(rng.next_u64());
            let (c, annotation, storm) = (&c, annotation.as_str(), &storm);
            s.spawn(move || lifecycle(c, annotation, id, rng, storm));
        }
    });
    let storm = storm.into_inner().unwrap();
    eprintln!(
        "50 lifecycles on one shim: {} ctr calls in {:?}, the slowest {:?} ({}); plans {:?}; \
         fifos left by ctr {}",
        storm.calls,
        started.elapsed(),
        storm.slowest,
        storm.slowest_call,
        storm.plans,
        storm.ctr_fifos
    );
    assert!(
        storm.failures.is_empty(),
        "{:#?}\n{}",
        storm.failures,
        c.log()
    );
    // Nothing of the 50 is left, and the shim is the same process, serving.
    let tasks = c.ctr(&["task", "ls", "-q"]).stdout;
    let containers = c.ctr(&["containers", "ls", "-q"]).stdout;
    for id in &ids {
        assert!(!tasks.contains(id.as_str()), "{id}: {tasks}");
        assert!(!containers.contains(id.as_str()), "{id}: {containers}");
    }
    c.assert_clean_of(&ids, Duration::from_secs(10));
    assert_eq!(c.shims().keys().copied().collect::<Vec<_>>(), vec![shim]);
    let mut parents = vec![shim];
    parents.extend(shim_tests::procfs::children_of(shim));
    let zombies = shim_tests::procfs::zombies_of(&parents);
    assert!(zombies.is_empty(), "zombies under the shim: {zombies:?}");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    the_pod_still_serves_then_goes(&c, &annotation, &sandbox, &ids);
}

/// The exit status containerd published for `id` in `ctr events` output.
fn exit_event(events: &str, id: &str) -> Option<u32> {
    let container = format!("\"container_id\":\"{id}\"");
    events
        .lines()
        .filter(|l| l.contains("/tasks/exit") && l.contains(&container))
        .find_map(|l| {
            let rest = &l[l.find("\"exit_status\":")? + "\"exit_status\":".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// A pod of three tasks (sandbox and two long runners) under `runtime`,
/// grouped by the sandbox-id annotation; its shim SIGKILLed. The exit
/// statuses containerd publishes for the three, then checks that their
/// bundles, mounts and cgroups are gone and that the pod's next task runs.
fn kill_ctr_pod(c: &Containerd, runtime: &str, ids: &mut Vec<String>) -> Vec<u32> {
    let annotation = format!("io.kubernetes.cri.sandbox-id={}", unique_id("pod"));
    let (image, command): (&str, &[&str]) = if runtime == RUNTIME {
        (WASM_TEST, &["/wasitest.wasm", "loop"])
    } else {
        (PAUSE, &[])
    };
    let tasks: Vec<String> = (0..3).map(|n| unique_id(&format!("doomed{n}"))).collect();
    for (n, id) in tasks.iter().enumerate() {
        let (image, command): (&str, &[&str]) = if n == 0 {
            (PAUSE, &[])
        } else {
            (image, command)
        };
        let mut args = vec![
            "run",
            "-d",
            "--runtime",
            runtime,
            "--annotation",
            &annotation,
            image,
            id,
        ];
        args.extend(command);
        let out = c.ctr(&args);
        assert_eq!(out.code, 0, "{runtime} {id}: {out:?}");
    }
    ids.extend(tasks.iter().cloned());
    let shim: Vec<i32> = shim_tests::procfs::shim_servers(&c.socket())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&tasks[0]))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(shim.len(), 1, "{runtime}: one shim for the pod");
    let events_file = c.dir().join(format!("events-{}", shim[0]));
    let mut events = c
        .ctr_command(&["events"])
        .stdout(std::fs::File::create(&events_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr events");
    std::thread::sleep(Duration::from_millis(300));
    sigkill(shim[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let statuses = loop {
        let text = std::fs::read_to_string(&events_file).unwrap_or_default();
        let statuses: Option<Vec<u32>> = tasks.iter().map(|id| exit_event(&text, id)).collect();
        if let Some(statuses) = statuses {
            break statuses;
        }
        if Instant::now() > deadline {
            let _ = events.kill();
            let _ = events.wait();
            panic!(
                "{runtime}: no exit event for every task:\n{text}\n{}",
                c.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = events.kill();
    let _ = events.wait();
    // containerd ran `shim delete` for each bundle: nothing is left of them
    // but ctr's stdio fifos (which only `ctr task rm` would remove, for runc
    // as for this shim).
    let left = || {
        c.leftovers_of(&tasks)
            .into_iter()
            .filter(|l| !l.starts_with("fifo "))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left(), Vec::<String>::new(), "{runtime}");
    let listed = c.ctr(&["task", "ls"]).stdout;
    for id in &tasks {
        assert!(
            !listed.contains(id.as_str()),
            "{runtime}: {id} still listed: {listed}"
        );
    }
    // The pod's next task gets a new shim on the same socket.
    let next = unique_id("next");
    let (next_image, next_command): (&str, &[&str]) = if runtime == RUNTIME {
        (WASM_TEST, &["/wasitest.wasm"])
    } else {
        (WASM_TEST, &["/native-hello"])
    };
    let mut args = vec![
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--annotation",
        &annotation,
        next_image,
        &next,
    ];
    args.extend(next_command);
    let out = answered(c, &args);
    assert_eq!(out.code, 0, "{runtime}: the pod's next task: {out:?}");
    ids.push(next);
    for id in &tasks {
        c.ctr(&["containers", "rm", id]);
    }
    statuses
}

#[test]
fn a_killed_pod_shim_reports_its_tasks_killed_as_runcs_does() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    c.import("pause.tar");
    let mut ids = Vec::new();
    let wasm = kill_ctr_pod(&c, RUNTIME, &mut ids);
    let runc = kill_ctr_pod(&c, "io.containerd.runc.v2", &mut ids);
    eprintln!(
        "exit statuses published after the pod's shim was killed: wasmtime {wasm:?}, runc {runc:?}"
    );
    assert_eq!(wasm, vec![137; 3]);
    assert_eq!(wasm, runc);
    // ctr's fifos of the tasks containerd deleted by itself.
    for fifo in shim_tests::leaks::fifos_under(&c.dir().join("fifo")) {
        let _ = std::fs::remove_file(fifo);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    c.assert_clean(&ids);
    let panics = shim_tests::leaks::panics_in(&c.log());
    assert!(panics.is_empty(), "{panics:#?}");
}
