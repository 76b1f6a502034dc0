//! Churn: many short-lived containers and pods, then a count of everything
//! they could have left on the node.
//!
//! `CHURN_COUNT` containers (default 200) run `/wasitest.wasm hello` twice
//! over: each with its own shim (`ctr run --rm`), and all through one
//! long-lived pod shim (the sandbox-id annotation routes them to it), whose
//! open fds and RSS after them must stay within 10% of what they were after
//! the warm-up (the first 100, or N/2 if fewer). `CHURN_PODS` pods (default
//! 50) go through CRI: RunPodSandbox, a wasm container, StopPodSandbox,
//! RemovePodSandbox. `CHURN_PARALLEL` (default 2) of each run at a time.
//! Afterwards there must be no mounts, processes, zombies, cgroups, network
//! namespaces, veths, IP reservations, fifos, bundles, active snapshots or
//! shim sockets left. The figures are printed (run with `--nocapture`);
//! `make soak` runs this suite with large counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shim_tests::cri::CriNode;
use shim_tests::environment::env_count;
use shim_tests::images::WASM_TEST;
use shim_tests::{unique_id, Containerd, CtrOutput};

/// Every ctr call answers within this, or the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn count() -> usize {
    env_count("CHURN_COUNT", 200).max(2)
}

fn parallel() -> usize {
    env_count("CHURN_PARALLEL", 2).max(1)
}

/// Runs `work(i)` for every i in 0..n on `parallel()` threads, each taking
/// the next index.
fn on_workers(n: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel().min(n) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                work(i);
            });
        }
    });
}

fn hello(c: &Containerd, id: &str, extra: &[&str]) -> CtrOutput {
    let argv = c.run_args(id, WASM_TEST, extra, &["/wasitest.wasm", "hello"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = c
        .ctr_within(&argv, CALL_TIMEOUT)
        .unwrap_or_else(|| panic!("{id}: ctr run did not return within {CALL_TIMEOUT:?}"));
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{id}: {out:?}"
    );
    out
}

/// Active (container) snapshots: image layers are committed ones and stay.
fn active_snapshots(ctr: impl Fn(&[&str]) -> CtrOutput) -> Vec<String> {
    ctr(&["snapshots", "ls"])
        .stdout
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some("Active"))
        .map(str::to_string)
        .collect()
}

/// Shim sockets left in /run/containerd/s for the groupings `ids`.
fn sockets_left(
    containerd_socket: &std::path::Path,
    namespace: &str,
    ids: &[String],
) -> Vec<String> {
    ids.iter()
        .map(|id| {
            (
                id,
                shim_tests::leaks::shim_socket(containerd_socket, namespace, id),
            )
        })
        .filter(|(_, s)| s.exists())
        .map(|(id, s)| format!("socket {} (of {id})", s.display()))
        .collect()
}

/// Zombies whose parent is containerd, its tini, or one of `more`.
fn zombies(daemon: Option<i32>, more: &[i32]) -> Vec<(i32, i32)> {
    let mut parents: Vec<i32> = more.to_vec();
    if let Some(pid) = daemon {
        parents.push(pid);
        if let Some((_, tini)) = shim_tests::procfs::proc_state(pid) {
            parents.push(tini);
        }
    }
    shim_tests::procfs::zombies_of(&parents)
}

fn per(total: Duration, n: usize) -> String {
    format!("{:.1} ms", total.as_secs_f64() * 1000.0 / n as f64)
}

#[test]
fn short_lived_containers_each_with_their_own_shim_leave_nothing() {
    let n = count();
    let c = Containerd::start_logging("info");
    c.import("wasm-test.tar");
    let ids: Vec<String> = (0..n).map(|i| unique_id(&format!("churn{i}"))).collect();
    let slowest = Mutex::new(Duration::ZERO);
    let started = Instant::now();
    on_workers(n, |i| {
        let t = Instant::now();
        hello(&c, &ids[i], &[]);
        let mut slowest = slowest.lock().unwrap();
        *slowest = (*slowest).max(t.elapsed());
    });
    let elapsed = started.elapsed();

    let mut left = c.leftovers(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    left.extend(c.bundles().into_iter().map(|b| format!("bundle {b}")));
    left.extend(
        shim_tests::leaks::fifos_under(c.dir())
            .into_iter()
            .map(|f| format!("fifo {}", f.display())),
    );
    left.extend(
        active_snapshots(|a| c.ctr(a))
            .into_iter()
            .map(|s| format!("snapshot {s}")),
    );
    left.extend(sockets_left(&c.socket(), shim_tests::NAMESPACE, &ids));
    left.extend(
        zombies(c.daemon_pid(), &[])
            .into_iter()
            .map(|z| format!("zombie {z:?}")),
    );
    let containers = c.ctr(&["containers", "ls", "-q"]).stdout;
    left.extend(containers.lines().map(|l| format!("container {l}")));
    eprintln!(
        "CHURN one shim per container: {n} containers, {} at a time, in {:.1} s: {} per container \
         (throughput), slowest {:?}; left behind: {}",
        parallel(),
        elapsed.as_secs_f64(),
        per(elapsed, n),
        *slowest.lock().unwrap(),
        if left.is_empty() {
            "nothing".into()
        } else {
            format!("{left:#?}")
        }
    );
    if !left.is_empty() {
        std::fs::write("/tmp/churn-debug.log", c.log()).unwrap();
    }
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(c.shims().is_empty(), "{:?}", c.shims());
    let panics = shim_tests::leaks::panics_in(&c.log());
    assert!(panics.is_empty(), "{panics:#?}");
}

/// What a long-lived shim holds at one moment.
#[derive(Debug, Clone, Copy)]
struct ShimFigures {
    fds: usize,
    rss_kib: u64,
    threads: usize,
}

/// The shim's figures once it has settled: containerd closes a finished
/// task's connection to the shim (and the shim ends that connection's
/// threads) a moment after `ctr run` returns, so each figure is the least
/// seen over a second.
fn figures(pid: i32) -> ShimFigures {
    let sample = || ShimFigures {
        fds: shim_tests::procfs::open_fds(pid),
        rss_kib: shim_tests::procfs::rss_kib(pid),
        threads: shim_tests::procfs::threads(pid),
    };
    let mut least = sample();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample();
        least = ShimFigures {
            fds: least.fds.min(now.fds),
            rss_kib: least.rss_kib.min(now.rss_kib),
            threads: least.threads.min(now.threads),
        };
    }
    least
}

/// The shim's zygote(s): children of the shim named shim-zygote.
fn zygotes(shim: i32) -> Vec<i32> {
    shim_tests::procfs::children_of(shim)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "shim-zygote")
        })
        .collect()
}

#[test]
fn short_lived_containers_through_one_pod_shim_leave_it_as_it_was() {
    let n = count();
    let warmup = (n / 2).min(100);
    let c = Containerd::start_logging("info");
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    let shim = *c.shims().keys().next().expect("the pod's shim");
    let at_start = figures(shim);
    let ids: Vec<String> = (0..n).map(|i| unique_id(&format!("podchurn{i}"))).collect();
    let extra = ["--annotation", annotation.as_str()];

    // The warm-up, then the rest; figures taken while nothing runs.
    let started = Instant::now();
    on_workers(warmup, |i| {
        hello(&c, &ids[i], &extra);
    });
    let warm_elapsed = started.elapsed();
    let after_warmup = figures(shim);
    let started = Instant::now();
    // The RSS on the way, in tenths (sampled as is, not settled).
    let step = (n / 10).max(1);
    let trace = Mutex::new(Vec::new());
    on_workers(n - warmup, |i| {
        hello(&c, &ids[warmup + i], &extra);
        if (warmup + i + 1).is_multiple_of(step) {
            let (fds, rss) = (
                shim_tests::procfs::open_fds(shim),
                shim_tests::procfs::rss_kib(shim),
            );
            trace
                .lock()
                .unwrap()
                .push((warmup + i + 1, fds, rss / 1024));
        }
    });
    let rest_elapsed = started.elapsed();
    let after_all = figures(shim);
    let mut trace = trace.into_inner().unwrap();
    trace.sort();
    eprintln!(
        "CHURN one pod shim, on the way (containers, fds, RSS MiB): {}",
        trace
            .iter()
            .map(|(k, f, r)| format!("{k}: {f}, {r}"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    let mut parents = vec![shim];
    parents.extend(zygotes(shim));
    let zombies_left = zombies(c.daemon_pid(), &parents);
    let mut left = c.leftovers_of(&ids);
    left.extend(
        c.bundles()
            .into_iter()
            .filter(|b| *b != sandbox)
            .map(|b| format!("bundle {b}")),
    );
    left.extend(zombies_left.iter().map(|z| format!("zombie {z:?}")));
    // Besides the shim, its zygote and the sandbox's process, nothing of
    // this containerd runs.
    let sandbox_pid = c.task_pid(&sandbox).expect("the sandbox runs");
    left.extend(
        shim_tests::procfs::processes_naming(&c.dir().to_string_lossy())
            .into_iter()
            .filter(|(pid, cmd)| {
                !parents.contains(pid)
                    && *pid != sandbox_pid
                    && !cmd.contains("containerd --config")
                    && !cmd.starts_with("tini -s")
            })
            .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
    );
    let active = active_snapshots(|a| c.ctr(a));
    if active.len() != 1 {
        left.push(format!(
            "active snapshots (only the sandbox's expected): {active:#?}"
        ));
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "CHURN one pod shim: {n} containers, {} at a time: {} per container (first {warmup}: {}); \
         shim fds {} at start, {} after {warmup}, {} after {n}; RSS {:.1} MiB at start, {:.1} MiB \
         after {warmup}, {:.1} MiB after {n}; threads {} / {} / {}; zombies {}; left behind: {}",
        parallel(),
        per(rest_elapsed, n - warmup),
        per(warm_elapsed, warmup),
        at_start.fds,
        after_warmup.fds,
        after_all.fds,
        mib(at_start.rss_kib),
        mib(after_warmup.rss_kib),
        mib(after_all.rss_kib),
        at_start.threads,
        after_warmup.threads,
        after_all.threads,
        zombies_left.len(),
        if left.is_empty() {
            "nothing".into()
        } else {
            format!("{left:#?}")
        }
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
    let within = |before: f64, after: f64| after <= before * 1.1;
    assert!(
        within(after_warmup.fds as f64, after_all.fds as f64),
        "the shim's fds grew: {after_warmup:?} -> {after_all:?}"
    );
    assert!(
        within(after_warmup.rss_kib as f64, after_all.rss_kib as f64),
        "the shim's RSS grew: {after_warmup:?} -> {after_all:?}"
    );
    assert!(
        within(after_warmup.threads as f64, after_all.threads as f64),
        "the shim's threads grew: {after_warmup:?} -> {after_all:?}"
    );
    assert_eq!(c.shims().keys().copied().collect::<Vec<_>>(), vec![shim]);

    c.remove(&sandbox);
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.push(&sandbox);
    c.assert_clean(&all);
    let pod = annotation.split_once('=').expect("key=value").1;
    let socket = shim_tests::leaks::shim_socket(&c.socket(), shim_tests::NAMESPACE, pod);
    assert!(
        !socket.exists(),
        "the pod shim's socket is left: {}",
        socket.display()
    );
    let panics = shim_tests::leaks::panics_in(&c.log());
    assert!(panics.is_empty(), "{panics:#?}");
}

/// The links of a network namespace (`ip -n NAME -o link`), by name.
fn links(netns: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-o", "link"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// host-local's reservations (`/var/lib/cni/networks/<net>/<ip>`, holding
/// the container id) that name one of `pods`.
fn ip_reservations(pods: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for network in shim_tests::leaks::dir_names(std::path::Path::new("/var/lib/cni/networks")) {
        let dir = std::path::Path::new("/var/lib/cni/networks").join(&network);
        for name in shim_tests::leaks::dir_names(&dir) {
            let holder = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            if pods.iter().any(|p| holder.contains(p.as_str())) {
                found.push(format!("IP {network}/{name}"));
            }
        }
    }
    found
}

#[test]
fn pods_come_and_go_through_cri_and_leave_nothing() {
    let m = env_count("CHURN_PODS", 50).max(1);
    let node = CriNode::start();
    let links_before = links(node.netns());
    let done: Mutex<Vec<(String, String, Option<String>)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    on_workers(m, |i| {
        let name = format!("churn{i}");
        let pod_config = node.pod_config(&name);
        let pod = node.run_pod(&pod_config);
        let netns = node.pod_netns(&pod);
        let config = CriNode::container_config(&name, WASM_TEST, &["/wasitest.wasm", "hello"]);
        let id = node.start_container(&pod, &pod_config, config);
        let status = node.wait_exited(&id);
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (0, "Completed"),
            "{name}: {status:?}"
        );
        node.stop_and_remove_pod(&pod);
        done.lock().unwrap().push((pod, id, netns));
        // The pod's log directory is kubelet's to remove.
        let _ = std::fs::remove_dir_all(node.dir().join("logs").join(&name));
    });
    let elapsed = started.elapsed();
    let done = done.into_inner().unwrap();
    assert_eq!(done.len(), m);

    let pods: Vec<String> = done.iter().map(|(p, _, _)| p.clone()).collect();
    let ids: Vec<String> = done
        .iter()
        .flat_map(|(p, c, _)| [p.clone(), c.clone()])
        .collect();
    let without_netns = done.iter().filter(|(_, _, n)| n.is_none()).count();
    let mut left = node.leftovers(&ids);
    left.extend(
        done.iter()
            .filter_map(|(_, _, n)| n.as_ref())
            .filter(|n| std::path::Path::new(n).exists())
            .map(|n| format!("netns {n}")),
    );
    left.extend(node.bundles().into_iter().map(|b| format!("bundle {b}")));
    left.extend(
        shim_tests::leaks::fifos_under(node.dir())
            .into_iter()
            .map(|f| format!("fifo {}", f.display())),
    );
    left.extend(
        active_snapshots(|a| node.ctr_output(a))
            .into_iter()
            .map(|s| format!("snapshot {s}")),
    );
    left.extend(
        links(node.netns())
            .into_iter()
            .filter(|l| !links_before.contains(l) && l != "cni0")
            .map(|l| format!("link {l}")),
    );
    left.extend(ip_reservations(&pods));
    left.extend(sockets_left(&node.containerd_socket(), "k8s.io", &pods));
    left.extend(
        zombies(node.daemon_pid(), &[])
            .into_iter()
            .map(|z| format!("zombie {z:?}")),
    );
    left.extend(
        node.all_shims()
            .into_iter()
            .map(|(pid, cmd)| format!("shim {pid}: {cmd}")),
    );
    let containers = node.ctr_output(&["containers", "ls", "-q"]).stdout;
    left.extend(containers.lines().map(|l| format!("container {l}")));
    eprintln!(
        "CHURN pods through CRI: {m} pods, {} at a time, in {:.1} s: {} per pod (run, container, \
         stop, remove); left behind: {}",
        parallel(),
        elapsed.as_secs_f64(),
        per(elapsed, m),
        if left.is_empty() {
            "nothing".into()
        } else {
            format!("{left:#?}")
        }
    );
    assert_eq!(without_netns, 0, "pods whose netns was not found");
    assert!(left.is_empty(), "left behind: {left:#?}");
    let panics = shim_tests::leaks::panics_in(&node.log());
    assert!(panics.is_empty(), "{panics:#?}");
}
