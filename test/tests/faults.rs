//! Faults: the shim or containerd going away while tasks run.

use std::time::{Duration, Instant};

use shim_tests::{containerd_version, unique_id, Containerd};

const IMAGE: &str = "localhost/wasmtime-shim/wasm-test:latest";

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let id = unique_id("orphan");
    c.run_detached(&id, IMAGE, &["/wasitest.wasm", "loop"]);
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
    c.run_detached(&running, IMAGE, &["/wasitest.wasm", "loop"]);
    c.run_detached(&ended, IMAGE, &["/wasitest.wasm", "loop"]);
    let out = c.ctr(&[
        "run",
        "-d",
        "localhost/wasmtime-shim/pause:latest",
        &runc_ended,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let ended_pids = [&ended, &runc_ended].map(|id| c.task_pid(id).expect("pid"));
    c.stop_daemon();
    // Guests that end while containerd is down.
    for pid in ended_pids {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        assert!(killed.unwrap().success());
    }
    std::thread::sleep(Duration::from_millis(200));
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
        IMAGE,
        &running,
        "/wasitest.wasm",
        "loop",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let socket = c.socket().display().to_string();
    let zygotes: Vec<i32> = shim_tests::processes_naming(&socket)
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
        IMAGE,
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
