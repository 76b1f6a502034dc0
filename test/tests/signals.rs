//! Signals to a running guest. Its own test binary, so no other test loads
//! the machine while the kill latency is measured (cargo runs test binaries
//! one after another).

use std::time::{Duration, Instant};

use shim_tests::{unique_id, Containerd};

const IMAGE: &str = "localhost/wasmtime-shim/wasm-test:latest";

/// Kills a looping guest with `signal` and returns (exit status, time from the
/// kill request's answer to the guest process being gone).
fn kill_looping_guest(c: &Containerd, id: &str, signal: &str) -> (String, Duration) {
    c.run_detached(id, IMAGE, &["/wasitest.wasm", "loop"]);
    let pid = c.task_pid(id).expect("task pid");
    let out = c.ctr(&["task", "kill", "-s", signal, id]);
    assert_eq!(out.code, 0, "{out:?}");
    // `ctr task kill` returns once the shim has sent the signal; the time the
    // ctr binary itself needs to start is the client's, not the shim's.
    let started = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| !c.is_empty())
            .unwrap_or(false)
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the guest ignored {signal}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    // Dead is not yet reaped: wait until containerd has the exit too.
    while !c
        .ctr(&["task", "ls"])
        .stdout
        .lines()
        .any(|l| l.starts_with(id) && l.contains("STOPPED"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the exit of {id} never reached containerd"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // `ctr task rm` reports a non-zero exit status as "exit with non-zero exit code N".
    let status = c.ctr(&["task", "rm", id]).stderr;
    c.ctr(&["containers", "rm", id]);
    (status, elapsed)
}

#[test]
fn looping_guests_die_on_sigkill_and_sigterm() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let mut ids = Vec::new();
    for (signal, code) in [("SIGKILL", 137), ("SIGTERM", 143)] {
        let id = unique_id(signal);
        let (status, elapsed) = kill_looping_guest(&c, &id, signal);
        assert!(
            status.contains(&format!("exit code {code}")),
            "{signal}: {status}"
        );
        assert!(
            elapsed < Duration::from_millis(100),
            "{signal} took {elapsed:?}"
        );
        ids.push(id);
    }
    c.assert_clean(&ids.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let id = unique_id("orphan");
    c.run_detached(&id, IMAGE, &["/wasitest.wasm", "loop"]);
    let shims: Vec<i32> = shim_tests::processes_naming(&c.socket().display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-wasmtime-v1") && cmd.contains(&id))
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
    let running = unique_id("survivor");
    let ended = unique_id("ended");
    c.run_detached(&running, IMAGE, &["/wasitest.wasm", "loop"]);
    c.run_detached(&ended, IMAGE, &["/wasitest.wasm", "loop"]);
    let ended_pid = c.task_pid(&ended).expect("pid");
    c.stop_daemon();
    // A guest that ends while containerd is down.
    let killed = std::process::Command::new("kill")
        .args(["-9", &ended_pid.to_string()])
        .status();
    assert!(killed.unwrap().success());
    std::thread::sleep(Duration::from_millis(200));
    c.start_daemon();
    // containerd reconnects to both shims: one task still runs, the other's
    // exit status was kept by its shim.
    let tasks = c.ctr(&["task", "ls"]).stdout;
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&running) && l.contains("RUNNING")),
        "{tasks}"
    );
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&ended) && l.contains("STOPPED")),
        "{tasks}"
    );
    let status = c.ctr(&["task", "rm", &ended]).stderr;
    assert!(status.contains("exit code 137"), "{status}");
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
    for id in [&running, &ended] {
        c.ctr(&["containers", "rm", id]);
    }
    c.assert_clean(&[&running, &ended]);
}
