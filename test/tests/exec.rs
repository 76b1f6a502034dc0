//! End-to-end: `ctr task exec` into running wasm containers through a real
//! containerd: a new wasm instance in the container's root, namespaces and
//! cgroup, with its own stdio, exit status and exec id.

use std::time::{Duration, Instant};

use shim_tests::cri::CriNode;
use shim_tests::environment::slow;
use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd};

fn exec(c: &Containerd, task: &str, exec_id: &str, args: &[&str]) -> shim_tests::CtrOutput {
    let mut argv = vec!["task", "exec", "--exec-id", exec_id, task];
    argv.extend(args);
    c.ctr(&argv)
}

/// Runs `ctr` under script(1), which gives it the console `-t` wants: whether
/// it succeeded, and all it printed.
fn on_a_terminal(ctr: std::process::Command) -> (bool, String) {
    typed_on_a_terminal(ctr, None)
}

/// Like [`on_a_terminal`], with `input` typed at the terminal after a moment.
fn typed_on_a_terminal(ctr: std::process::Command, input: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let line: Vec<String> = std::iter::once(ctr.get_program())
        .chain(ctr.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script");
    let mut keyboard = child.stdin.take().expect("script's stdin");
    if let Some(input) = input {
        std::thread::sleep(Duration::from_secs(2));
        keyboard.write_all(input.as_bytes()).expect("type");
    }
    // script ends its session at the end of its input: kept open until ctr is done.
    let out = child.wait_with_output().expect("script");
    drop(keyboard);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn exec_runs_a_wasm_program_in_the_running_container() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let id = unique_id("exec");
    c.run_detached(&id, WASM_TEST, &["/wasitest.wasm", "sleep"]);

    let out = exec(&c, &id, "hello", &["/wasitest.wasm", "hello"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "hello from wasm\n");

    let out = exec(&c, &id, "code", &["/wasitest.wasm", "exit", "7"]);
    assert_eq!(out.code, 7, "the exec's own exit status: {out:?}");

    // The container's root is the exec's: what one exec writes, the next reads.
    let out = exec(&c, &id, "write", &["/wasitest.wasm", "write", "/by-exec"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = exec(&c, &id, "read", &["/wasitest.wasm", "cat", "/by-exec"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "written by wasitest\n", "{out:?}");

    // A wasm container execs WebAssembly only: a native executable in its
    // root (one the guest could have written) is refused.
    let out = exec(&c, &id, "native", &["/native-hello"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("/native-hello is a native program")
            && out.stderr.contains("WebAssembly only"),
        "{out:?}"
    );

    let out = exec(&c, &id, "missing", &["/no-such.wasm"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("/no-such.wasm") && out.stderr.contains("not found"),
        "a clear error naming the program: {out:?}"
    );

    // A terminal: the guest's stdin, stdout and stderr are a pty, made in
    // the container, for an exec and for a container (`-t`); without `-t`
    // they are not.
    let (ok, text) = on_a_terminal(c.ctr_command(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "tty",
        &id,
        "/wasitest.wasm",
        "tty",
    ]));
    assert!(ok, "{text}\n{}", c.log());
    assert!(text.contains("tty: 1 1 1"), "{text}");
    let out = exec(&c, &id, "notty", &["/wasitest.wasm", "tty"]);
    assert_eq!(out.stdout, "tty: 0 0 0\n", "{out:?}");
    let tty = unique_id("tty");
    let (ok, text) = on_a_terminal(c.ctr_command(&[
        "run",
        "-t",
        "--rm",
        "--runtime",
        "io.containerd.wasmtime.v1",
        WASM_TEST,
        &tty,
        "/wasitest.wasm",
        "tty",
    ]));
    assert!(ok, "{text}");
    assert!(text.contains("tty: 1 1 1"), "{text}");
    // What is typed at the terminal reaches the guest through the pty.
    let typed = unique_id("typed");
    let (ok, text) = typed_on_a_terminal(
        c.ctr_command(&[
            "run",
            "-t",
            "--rm",
            "--runtime",
            "io.containerd.wasmtime.v1",
            WASM_TEST,
            &typed,
            "/wasitest.wasm",
            "echo",
            "1",
        ]),
        Some("typed line\n"),
    );
    assert!(ok, "{text}");
    assert!(text.contains("echo: typed line"), "{text}");

    // Twenty at once, each with its own output and status.
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|n| {
                let (c, id) = (&c, &id);
                s.spawn(move || {
                    let code = (n % 5).to_string();
                    let name = format!("par{n}");
                    let args = exec(c, id, &name, &["/wasitest.wasm", "args", &name]);
                    let exit = exec(
                        c,
                        id,
                        &format!("exit{n}"),
                        &["/wasitest.wasm", "exit", &code],
                    );
                    (n, args, exit)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for (n, args, exit) in outputs {
        assert_eq!(args.code, 0, "exec {n}: {args:?}");
        assert!(
            args.stdout.contains(&format!("argv[2]=par{n}")),
            "exec {n}: {args:?}"
        );
        assert_eq!(exit.code, n % 5, "exec {n}: {exit:?}");
    }
    // libcontainer's per-exec notify sockets do not pile up in the state.
    let state = c
        .dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(shim_tests::NAMESPACE)
        .join(&id)
        .join("libcontainer")
        .join(&id);
    let names: Vec<String> = std::fs::read_dir(&state)
        .expect("the container's libcontainer state")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("tenant-")),
        "after 40 execs: {names:?}"
    );

    // stdin without a TTY (`kubectl exec -i`).
    let mut piped = c
        .ctr_command(&[
            "task",
            "exec",
            "--exec-id",
            "stdin",
            &id,
            "/wasitest.wasm",
            "echo",
            "2",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctr task exec");
    std::io::Write::write_all(&mut piped.stdin.take().expect("stdin"), b"one\ntwo\n")
        .expect("write stdin");
    let out = piped.wait_with_output().expect("ctr output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echo: one\necho: two\n",
        "{out:?}"
    );

    // A long-running exec is killed by its exec id; the container keeps running.
    let mut sleeper = c
        .ctr_command(&[
            "task",
            "exec",
            "--exec-id",
            "sleeper",
            &id,
            "/wasitest.wasm",
            "sleep",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ctr task exec");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.ctr(&["task", "ps", &id]).stdout.lines().count() < 3 {
        assert!(std::time::Instant::now() < deadline, "the exec never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = c.ctr(&["task", "kill", "--exec-id", "sleeper", "-s", "SIGKILL", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let status = sleeper.wait().expect("wait ctr");
    assert_eq!(status.code(), Some(137), "the exec's SIGKILL status");
    let out = c.ctr(&["task", "ls"]);
    assert!(
        out.stdout.contains("RUNNING"),
        "the container still runs: {out:?}"
    );

    c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !c.ctr(&["task", "ls"]).stdout.contains("STOPPED") {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = exec(&c, &id, "late", &["/wasitest.wasm", "hello"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("exited"),
        "exec into a stopped container: {out:?}"
    );
    c.remove(&id);
    c.assert_clean(&[&id, &tty]);
}

/// kubelet's exec probes and `kubectl exec` through CRI ExecSync: into a wasm
/// container (a wasm program) and into a native sidecar of the same pod (a
/// native program, as runc runs it).
#[test]
fn cri_exec_sync_serves_probes_in_wasm_and_native_containers() {
    let node = CriNode::start();
    let pod_config = node.pod_config("probe");
    let pod = node.run_pod(&pod_config);
    let wasm = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("app", WASM_TEST, &["/wasitest.wasm", "sleep"]),
    );
    let native = node.start_container(
        &pod,
        &pod_config,
        CriNode::container_config("sidecar", WASM_TEST, &["/native-hello", "sleep"]),
    );

    // A readiness probe that fails until the app is ready, then succeeds.
    let probe = ["/wasitest.wasm", "cat", "/ready"];
    let out = node.exec_sync(&wasm, &probe, 10).expect("ExecSync");
    assert_ne!(out.exit_code, 0, "not ready yet: {out:?}");
    let out = node
        .exec_sync(&wasm, &["/wasitest.wasm", "write", "/ready"], 10)
        .expect("ExecSync");
    assert_eq!(out.exit_code, 0, "{out:?}");
    let out = node.exec_sync(&wasm, &probe, 10).expect("ExecSync");
    assert_eq!(out.exit_code, 0, "ready: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "written by wasitest\n"
    );
    let out = node
        .exec_sync(&wasm, &["/wasitest.wasm", "exit", "3"], 10)
        .expect("ExecSync");
    assert_eq!(out.exit_code, 3, "{out:?}");

    // A probe past its timeout: containerd kills the exec by its id.
    let started = Instant::now();
    let timed_out = node.exec_sync(&wasm, &["/wasitest.wasm", "sleep"], 1);
    assert!(timed_out.is_err(), "{timed_out:?}");
    assert!(
        started.elapsed() < slow(Duration::from_secs(8)),
        "{:?}",
        started.elapsed()
    );

    // A missing program is a clear error, not a hang.
    let missing = node.exec_sync(&wasm, &["/no-such.wasm"], 10);
    let text = format!("{missing:?}");
    assert!(text.contains("/no-such.wasm"), "{text}");

    let out = node
        .exec_sync(&native, &["/native-hello", "probe"], 10)
        .expect("ExecSync");
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a native binary (2 args)\n"
    );

    let running = node.container_status(&wasm);
    assert_eq!(
        running.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32,
        "{running:?}"
    );
    node.stop_and_remove_pod(&pod);
    node.assert_clean(&[pod, wasm, native]);
}
