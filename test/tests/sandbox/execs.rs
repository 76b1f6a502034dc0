//! Execs under the container's confinement: a `ctr task exec` into a native
//! or a wasm container runs under its seccomp filter, capabilities and
//! no_new_privs, as runc applies them to every exec; and a wasm exec into a
//! native container leaves that container's mounts alone.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shim_tests::{unique_id, Containerd};

use super::{containerd, run_detached_with, security_of, unlike_its_init};

/// The host PIDs `ctr task ps` lists for a task (its init and its execs).
fn task_pids(c: &Containerd, id: &str) -> Vec<i32> {
    c.ctr(&["task", "ps", id])
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `ctr run --seccomp` a native container and a wasm container; a
/// long-running `ctr task exec` into each runs under a seccomp filter
/// (`Seccomp: 2`) with the init's capabilities and no_new_privs, as runc
/// applies the container's `linux.seccomp` to every exec.
#[test]
fn execs_run_under_the_containers_seccomp_filter() {
    let c = containerd();
    let native = unique_id("native");
    let wasm = unique_id("wasm");
    run_detached_with(&c, &native, &["--seccomp"], &["/native-hello", "sleep"]);
    run_detached_with(&c, &wasm, &["--seccomp"], &["/wasitest.wasm", "sleep"]);
    let mut problems = Vec::new();
    for (id, program) in [(&native, "/native-hello"), (&wasm, "/wasitest.wasm")] {
        let init = c.task_pid(id).expect("the task's pid");
        let mut exec = c
            .ctr_command(&["task", "exec", "--exec-id", "sleeper", id, program, "sleep"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr task exec");
        // The exec's process, once it runs its program: the cgroup also
        // holds, for a moment, the code server that compiles for the exec
        // (`shim-code`, a host process that joins the cgroup) and the exec's
        // process while libcontainer and the executor still set it up (the
        // filter is the last thing installed before the program runs).
        let deadline = Instant::now() + Duration::from_secs(20);
        let exec_pid = loop {
            let running = task_pids(&c, id).into_iter().find(|&p| {
                let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                p != init
                    && comm.trim() != "shim-code"
                    && fs::read_to_string(format!("/proc/{p}/status"))
                        .is_ok_and(|status| !status.contains("Seccomp:\t0"))
            });
            if running.is_some() {
                break running;
            }
            if Instant::now() > deadline || exec.try_wait().ok().flatten().is_some() {
                // Whatever it is by now, it is what gets compared.
                break task_pids(&c, id).into_iter().find(|&p| p != init);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(exec_pid) = exec_pid else {
            let _ = exec.kill();
            let out = exec.wait_with_output().expect("ctr task exec");
            problems.push(format!(
                "{id}: the exec of {program} never ran: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        };
        let of_init = security_of(init);
        let of_exec = security_of(exec_pid);
        eprintln!("  {id}: init {init} {of_init:?}; exec {exec_pid} {of_exec:?}");
        problems.extend(unlike_its_init(
            &format!("{id} ({program}): the exec {exec_pid}"),
            &of_exec,
            &format!("the init {init}"),
            &of_init,
        ));
        let out = c.ctr(&["task", "kill", "--exec-id", "sleeper", "-s", "SIGKILL", id]);
        assert_eq!(out.code, 0, "{out:?}");
        let status = exec.wait().expect("ctr task exec");
        assert_eq!(status.code(), Some(137), "the exec's SIGKILL status");
    }
    // A wasm program exec'd into the native container builds its guest's
    // view in a mount namespace of its own: nothing of it is left in the
    // native container's (its mounts after are those before).
    let init = c.task_pid(&native).expect("the native task's pid");
    let mounts = || fs::read_to_string(format!("/proc/{init}/mountinfo")).unwrap_or_default();
    let before = mounts();
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "wasm-in-native",
        &native,
        "/wasitest.wasm",
        "hello",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    if mounts() != before {
        problems.push(format!(
            "{native}: a wasm exec changed the native container's mounts:\n{before}\n---\n{}",
            mounts()
        ));
    }
    c.remove(&native);
    c.remove(&wasm);
    c.assert_clean(&[&native, &wasm]);
    assert!(
        problems.is_empty(),
        "execs escape the container's confinement:\n{}",
        problems.join("\n")
    );
}
