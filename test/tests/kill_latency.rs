//! Signals to a running guest. Its own test binary, so no other test loads
//! the machine while the kill latency is measured (cargo runs test binaries
//! one after another).

use std::time::{Duration, Instant};

use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd};

/// Kills a looping guest with `signal` and returns (exit status, time from the
/// kill request's answer to the guest process being gone).
fn kill_looping_guest(c: &Containerd, id: &str, signal: &str) -> (String, Duration) {
    c.run_detached(id, WASM_TEST, &["/wasitest.wasm", "loop"]);
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
