//! Faults through `ctr`: a killed shim, containerd restarted while tasks
//! run and end, a pod whose zygote died, and a pod's shim SIGKILLed with its
//! tasks (the exit statuses containerd publishes, against runc's).

use std::time::{Duration, Instant};

use shim_tests::images::{PAUSE, WASM_TEST};
use shim_tests::{containerd_version, unique_id, Containerd, RUNTIME};

use super::{answered, assert_reaped, sigkill};

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
    let events = shim_tests::events::Events::watch(c);
    std::thread::sleep(Duration::from_millis(300));
    sigkill(shim[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let statuses = loop {
        let text = events.text();
        let statuses: Option<Vec<u32>> = tasks.iter().map(|id| exit_event(&text, id)).collect();
        if let Some(statuses) = statuses {
            break statuses;
        }
        if Instant::now() > deadline {
            drop(events);
            panic!(
                "{runtime}: no exit event for every task:\n{text}\n{}",
                c.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(events);
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
