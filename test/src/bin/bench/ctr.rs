//! What `make bench` measures through `ctr` against one private containerd:
//! the time of one `ctr run --rm`, tasks per second through one pod's shim,
//! and the PSS of the shims (and all under them) with idle containers.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use shim_tests::images::{HELLO, PAUSE, WASM_TEST};
use shim_tests::procfs::shim_servers;
use shim_tests::{unique_id, Containerd, RUNTIME};

use super::{Side, RUNC, SANDBOX_ANNOTATION};

/// One `ctr run --rm` to completion, in milliseconds.
pub(crate) fn timed_run(containerd: &Containerd, side: Side) -> f64 {
    timed_run_in(containerd, side, None)
}

/// [`timed_run`] in the pod `pod` (its sandbox-id annotation), if given.
fn timed_run_in(containerd: &Containerd, side: Side, pod: Option<&str>) -> f64 {
    let id = unique_id("bench-start");
    let annotation = pod.map(|pod| format!("{SANDBOX_ANNOTATION}={pod}"));
    let mut args = vec!["run", "--rm"];
    if let Some(annotation) = &annotation {
        args.extend(["--annotation", annotation]);
    }
    args.extend(["--runtime", side.runtime()]);
    match side {
        Side::Wasm | Side::Floor => args.extend([HELLO, &id]),
        Side::Runc => args.extend([WASM_TEST, &id, "/native-hello"]),
    }
    let started = Instant::now();
    let out = containerd.ctr(&args);
    let elapsed = started.elapsed();
    assert_eq!(out.code, 0, "{} run failed: {out:?}", side.name());
    elapsed.as_secs_f64() * 1000.0
}

/// The PSS of every shim of a containerd and all their descendants.
#[derive(Default)]
pub(crate) struct Tree {
    pub(crate) kib: u64,
    pub(crate) processes: usize,
    /// KiB and process count by process name (`comm`).
    pub(crate) by_name: BTreeMap<String, (u64, usize)>,
}

impl Tree {
    /// "name: n × MiB each" for each process name, largest share first.
    pub(crate) fn breakdown(&self) -> String {
        let mut names: Vec<_> = self.by_name.iter().collect();
        names.sort_by_key(|(_, (kib, _))| std::cmp::Reverse(*kib));
        names
            .into_iter()
            .map(|(name, (kib, n))| {
                format!("{name} {n} × {:.2} MiB", *kib as f64 / 1024.0 / *n as f64)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The [`Tree`] of the shims of the containerd at `socket`.
pub(crate) fn shim_tree(socket: &Path) -> Tree {
    let shims: Vec<i32> = shim_servers(socket)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The field after the command (which may hold spaces) is the state, then the ppid.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut tree = Tree::default();
    let mut stack = shims;
    while let Some(pid) = stack.pop() {
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let pss: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let entry = tree.by_name.entry(name.trim().to_string()).or_default();
        entry.0 += pss;
        entry.1 += 1;
        tree.kib += pss;
        tree.processes += 1;
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    tree
}

/// Starts `count` idle containers, measures, and removes them again.
pub(crate) fn resident_pss(
    containerd: &Containerd,
    side: Side,
    count: usize,
    one_pod: bool,
) -> Tree {
    let pod = unique_id("bench-pod");
    let ids: Vec<String> = (0..count).map(|_| unique_id("bench-idle")).collect();
    for id in &ids {
        let annotation = format!("{SANDBOX_ANNOTATION}={pod}");
        let mut args = vec!["run", "-d"];
        if one_pod {
            args.extend(["--annotation", &annotation]);
        }
        match side {
            Side::Wasm => args.extend([
                "--runtime",
                RUNTIME,
                WASM_TEST,
                id,
                "/wasitest.wasm",
                "sleep",
            ]),
            Side::Runc => args.extend(["--runtime", RUNC, PAUSE, id]),
            Side::Floor => unreachable!("the no-op shim holds no memory worth measuring"),
        }
        let out = containerd.ctr(&args);
        assert_eq!(out.code, 0, "{} start failed: {out:?}", side.name());
    }
    std::thread::sleep(Duration::from_secs(2));
    let tree = shim_tree(&containerd.socket());
    for id in &ids {
        containerd.remove(id);
    }
    eprintln!(
        "  {:<16} {count:>3} {:<9} {:>4} processes, {:.1} MiB PSS: {}",
        side.name(),
        if one_pod { "one pod" } else { "separate" },
        tree.processes,
        tree.kib as f64 / 1024.0,
        tree.breakdown()
    );
    tree
}

/// Tasks per second for `tasks` runs, `parallelism` at a time, in one pod.
pub(crate) fn throughput(
    containerd: &Containerd,
    side: Side,
    tasks: usize,
    parallelism: usize,
) -> f64 {
    let pod = unique_id("bench-pod");
    let sandbox = unique_id("bench-sandbox");
    let annotation = format!("{SANDBOX_ANNOTATION}={pod}");
    let runtime = side.runtime();
    let out = containerd.ctr(&[
        "run",
        "-d",
        "--annotation",
        &annotation,
        "--runtime",
        runtime,
        PAUSE,
        &sandbox,
    ]);
    assert_eq!(out.code, 0, "the pod's sandbox: {out:?}");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallelism {
            scope.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < tasks {
                    timed_run_in(containerd, side, Some(&pod));
                }
            });
        }
    });
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    containerd.remove(&sandbox);
    eprintln!(
        "  {:<16} {tasks} tasks, {parallelism} at a time: {rate:.1}/s",
        side.name()
    );
    rate
}
