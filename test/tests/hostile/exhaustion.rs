//! Exhausting memory, stack and CPU: each fails inside the guest or ends
//! the container, at once and with a clear reason.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::images::WASM_TEST;
use shim_tests::unique_id;

use super::containerd;

/// `memory.grow` past the container's memory limit fails inside the guest
/// (the engine's store limit), long before the cgroup's OOM killer; without
/// a limit, at wasm32's 4 GiB. (A guest that touches memory past its cgroup
/// limit is OOM-killed with TaskOOM: tests/ctr and tests/cri.rs.)
#[test]
fn memory_growth_past_the_limit_fails_inside_the_guest() {
    let c = containerd();
    let limit = (64u64 << 20).to_string();
    let id = unique_id("grow");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--memory-limit", &limit],
        &["/wasitest.wasm", "grow", "1024"],
    );
    eprintln!("  64 MiB limit: {}", out.stdout.trim());
    assert_eq!(out.code, 1, "{out:?}");
    let mib: u32 = out
        .stdout
        .strip_prefix("memory.grow failed after ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!((32..64).contains(&mib), "{out:?}");
    c.assert_clean(&[&id]);

    // No limit: the engine stops it at 4 GiB (never touched, so never resident).
    let id = unique_id("grow4g");
    let out = c.run(&id, WASM_TEST, &[], &["/wasitest.wasm", "grow", "5000"]);
    eprintln!("  no limit: {}", out.stdout.trim());
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        ["(memory is 4095 MiB)\n", "(memory is 4096 MiB)\n"]
            .iter()
            .any(|end| out.stdout.ends_with(end)),
        "stopped at wasm32's 65536 pages: {out:?}"
    );
    c.assert_clean(&[&id]);
}

#[test]
fn infinite_recursion_traps_with_a_clear_message() {
    let c = containerd();
    let id = unique_id("recurse");
    let out = c.run(&id, WASM_TEST, &[], &["/wasitest.wasm", "recurse"]);
    eprintln!(
        "  exit {}, stderr {} bytes, ends with: {:?}",
        out.code,
        out.stderr.len(),
        out.stderr.trim_end().lines().last()
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (134, "recursing\n"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("wasm trap: call stack exhausted"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("recurse_step"),
        "with a backtrace: {out:?}"
    );
    // wasmtime cuts the backtrace short: thousands of frames are not printed.
    assert!(
        out.stderr.len() < 4096,
        "{} bytes of stderr",
        out.stderr.len()
    );
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("exited with status 134")),
        "{log}"
    );
    c.assert_clean(&[&id]);
}

/// CPU time used (ns) and the number of throttled periods of `pid`'s cgroup.
fn cpu_usage(pid: i32) -> (u64, u64) {
    Cgroup::of_process(pid)
        .cpu_usage()
        .unwrap_or_else(|| panic!("the cpu cgroup of {pid}"))
}

/// Waits up to `patience` for `child` to exit.
fn wait_for(child: &mut Child, patience: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A guest spinning under a 10% CPU quota is held to it by the cgroup and
/// still dies at once on SIGKILL (137), with the quota making no difference.
#[test]
fn a_looping_guest_under_a_cpu_quota_is_throttled_and_dies_on_sigkill() {
    let c = containerd();
    let id = unique_id("throttled");
    let argv = c.run_args(
        &id,
        WASM_TEST,
        &["--cpu-quota", "10000", "--cpu-period", "100000"],
        &["/wasitest.wasm", "loop"],
    );
    let mut ctr = c
        .ctr_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = c.task_pid(&id).filter(|&p| p > 0) {
            break pid;
        }
        assert!(Instant::now() < deadline, "{id} never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let (used0, throttled0) = cpu_usage(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (used1, throttled1) = cpu_usage(pid);
    let share = (used1 - used0) as f64 / window.elapsed().as_nanos() as f64;
    eprintln!(
        "  quota 10%: used {:.1}% of a CPU, {} periods throttled in the window",
        share * 100.0,
        throttled1 - throttled0
    );
    assert!(share < 0.2, "used {:.1}% of a CPU", share * 100.0);
    assert!(throttled1 > throttled0, "never throttled");

    let out = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    let killed = Instant::now();
    // Gone (or a zombie) once the kill request has returned, as without a
    // quota (kill_latency.rs): a throttled guest is not left to its quota.
    let dead = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    while !dead(pid) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let gone = killed.elapsed();
    let status = wait_for(&mut ctr, Duration::from_secs(10));
    let took = killed.elapsed();
    if status.is_none() {
        let _ = ctr.kill();
        let _ = ctr.wait();
    }
    let mut stdout = String::new();
    if let Some(mut s) = ctr.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    eprintln!("  SIGKILL: the guest gone after {gone:?}, ctr's exit after {took:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(137), "{stdout}");
    assert!(
        gone < Duration::from_millis(500),
        "the guest lived {gone:?}"
    );
    assert!(took < Duration::from_secs(5), "ctr took {took:?}");
    assert_eq!(stdout, "looping\n");
    c.assert_clean(&[&id]);
}
