//! Task verbs beyond run and kill: `ctr task pause` and `ctr task resume`.

use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::environment::slowness;
use shim_tests::events::Events;
use shim_tests::images::WASM_TEST;
use shim_tests::unique_id;

use super::containerd;

/// Whether the cgroup is frozen: v1's `freezer.state`, else v2's
/// `cgroup.freeze`.
fn frozen(cgroup: &Cgroup) -> Option<bool> {
    match cgroup.read("freezer", "freezer.state") {
        Some(state) => Some(state.trim() == "FROZEN"),
        None => Some(cgroup.read("freezer", "cgroup.freeze")?.trim() == "1"),
    }
}

#[test]
fn pause_freezes_a_spinning_guest_resume_lets_it_go_on_and_kill_ends_it_paused() {
    let c = containerd();
    let events = Events::watch(&c);
    let id = unique_id("pause");
    c.run_detached(&id, WASM_TEST, &["/wasitest.wasm", "loop"]);
    let pid = c.task_pid(&id).expect("the task runs");
    let cgroup = Cgroup::of_process(pid);
    let cpu = || cgroup.cpu_time().expect("the container's CPU time");
    let status = || {
        let tasks = c.ctr(&["task", "ls"]).stdout;
        let line = tasks
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap_or_default();
        line.split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let spent_over = |d: Duration| {
        let before = cpu();
        std::thread::sleep(d);
        cpu() - before
    };
    let window = Duration::from_millis(300);

    assert!(spent_over(window) > 0, "the guest spins");
    assert_eq!(frozen(&cgroup), Some(false));
    let out = c.ctr(&["task", "pause", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(status(), "PAUSED");
    assert_eq!(frozen(&cgroup), Some(true));
    assert_eq!(spent_over(window), 0, "a frozen guest gets no CPU time");

    let out = c.ctr(&["task", "resume", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(status(), "RUNNING");
    assert_eq!(frozen(&cgroup), Some(false));
    assert!(spent_over(window) > 0, "the guest spins again");

    // Paused, then SIGKILLed (kubelet never pauses; `ctr task kill` may):
    // the task ends, and is deleted like any other.
    assert_eq!(c.ctr(&["task", "pause", &id]).code, 0);
    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5) * slowness();
    while status() != "STOPPED" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(), "STOPPED", "a paused task dies of SIGKILL");
    c.remove(&id);

    for topic in ["/tasks/paused", "/tasks/resumed"] {
        assert!(
            events.has(topic, &id),
            "{topic} for {id} in:\n{}",
            events.text()
        );
    }
    drop(events);
    c.assert_clean(&[&id]);
}

#[test]
fn task_metrics_carry_the_guests_instances_linear_memory_and_code() {
    use shim_tests::metrics::task_metrics;
    let c = containerd();
    let bundle = |id: &str| {
        c.dir()
            .join("state/io.containerd.runtime.v2.task")
            .join(shim_tests::harness::NAMESPACE)
            .join(id)
    };
    let id = unique_id("metrics");
    c.run_detached(&id, WASM_TEST, &["/wasitest.wasm", "growto", "20"]);
    // The guest grows its linear memory to 20 MiB and keeps it.
    let deadline = Instant::now() + Duration::from_secs(20 * u64::from(slowness()));
    let metrics = loop {
        let metrics = task_metrics(&bundle(&id), &id);
        if metrics
            .wasm
            .is_some_and(|w| w.linear_memory_bytes >= 20 << 20)
        {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let wasm = metrics.wasm.unwrap();
    assert!(metrics.memory_usage > 0, "{metrics:?}");
    assert_eq!(wasm.instances, 1, "{wasm:?}");
    assert!(wasm.linear_memory_bytes < 21 << 20, "{wasm:?}");
    assert_eq!((wasm.linear_memory_limit, wasm.grows_refused), (0, 0));
    assert_eq!(wasm.code_cache_hits + wasm.code_compiles, 1, "{wasm:?}");

    // A native container's metrics are its cgroup's alone.
    let native = unique_id("metrics-native");
    c.run_detached(&native, WASM_TEST, &["/native-hello", "sleep"]);
    let metrics = task_metrics(&bundle(&native), &native);
    assert_eq!(metrics.wasm, None, "{metrics:?}");
    c.remove(&id);
    c.remove(&native);
}
