//! Races between a task's lifecycle calls: a kill or a delete landing while
//! `ctr run -d` creates and starts the task, a guest SIGKILLed (through its
//! cgroup) while the shim creates it, and 50 lifecycles at once through one
//! pod's shim, each a plan picked by a seeded PRNG (`FAULTS_SEED` replays
//! one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shim_tests::cgroups::Cgroup;
use shim_tests::images::WASM_TEST;
use shim_tests::rng::Rng;
use shim_tests::{unique_id, Containerd, CtrOutput, RUNTIME};

use super::{answered, sigkill};

/// `ctr run -d` of `command`, in the pod of annotation `pod` if given.
fn run_detached_args<'a>(pod: Option<&'a str>, id: &'a str, command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "-d", "--runtime", RUNTIME];
    if let Some(annotation) = pod {
        args.extend(["--annotation", annotation]);
    }
    args.extend([WASM_TEST, id]);
    args.extend(command);
    args
}

/// Removes task and container `id` whatever their state; fails the test if
/// that does not work within 20 s.
fn force_remove(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let task = answered(c, &["task", "rm", "-f", id]);
        let gone = task.code == 0 || task.stderr.contains("not found");
        let container = answered(c, &["containers", "rm", id]);
        if gone && (container.code == 0 || container.stderr.contains("not found")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} cannot be removed: {task:?} {container:?}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the stdio fifos ctr made for `id` in its fifo dir; how many.
/// Only `ctr task rm` removes them, and only the call whose delete
/// succeeded: when several ctr race to delete a task that is still being
/// created, the winner may be one that could not load its IO (seen once with
/// containerd 2.1's ctr), whatever the runtime. They are ctr's, not the shim's.
fn drop_ctr_fifos(c: &Containerd, id: &str) -> usize {
    let fifos: Vec<_> = shim_tests::leaks::fifos_under(&c.dir().join("fifo"))
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(id))
        .collect();
    for fifo in &fifos {
        let _ = std::fs::remove_file(fifo);
    }
    fifos.len()
}

/// Where `action` (a ctr command taking the task id last) landed on a task
/// being created and started by `ctr run -d`.
#[derive(Debug, Default)]
struct Landings {
    /// Before start: `ctr run -d` failed.
    before_start: u32,
    /// On the running task.
    after_start: u32,
    /// Fifos ctr left (see [`drop_ctr_fifos`]).
    ctr_fifos: usize,
}

/// How many `ctr` callers race `ctr run -d`.
const ACTORS: usize = 4;

/// Runs `ctr run -d` of a looping guest and, at the same time, `action` on
/// its task again and again until it succeeds; checks the outcome with
/// `check` and that nothing of the task is left.
fn race(
    c: &Containerd,
    pod: Option<&str>,
    action: &[&str],
    rounds: usize,
    check: impl Fn(&str, &CtrOutput),
) -> Landings {
    let mut landings = Landings::default();
    for round in 0..rounds {
        let id = unique_id(&format!("race{round}"));
        let done = AtomicBool::new(false);
        // Several callers at once, so that one lands in the short window
        // between the task's create and its start.
        let landed = AtomicBool::new(false);
        let mut args = action.to_vec();
        args.push(&id);
        let run = std::thread::scope(|s| {
            let runner = s.spawn(|| {
                let out = answered(c, &run_detached_args(pod, &id, &["/wasitest.wasm", "loop"]));
                done.store(true, Ordering::SeqCst);
                out
            });
            for _ in 0..ACTORS {
                let (args, landed, done) = (&args, &landed, &done);
                s.spawn(move || {
                    while !landed.load(Ordering::SeqCst) {
                        let finished = done.load(Ordering::SeqCst);
                        if answered(c, args).code == 0 {
                            landed.store(true, Ordering::SeqCst);
                        }
                        if finished {
                            break;
                        }
                    }
                });
            }
            runner.join().expect("ctr run thread")
        });
        if run.code == 0 {
            landings.after_start += 1;
        } else {
            landings.before_start += 1;
        }
        check(&id, &run);
        force_remove(c, &id);
        landings.ctr_fifos += drop_ctr_fifos(c, &id);
        c.assert_clean_of(&[&id], Duration::from_secs(10));
    }
    landings
}

#[test]
fn a_kill_during_create_and_a_delete_during_start_leave_nothing() {
    // containerd knows a task only once the shim's create has returned, so
    // the earliest a kill or delete can land is between create and start.
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    let shim = c.shims();
    for pod in [None, Some(annotation.as_str())] {
        let kills = race(&c, pod, &["task", "kill", "-s", "SIGKILL"], 8, |id, run| {
            // Killed before or after start: the task is stopped with SIGKILL's status.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let tasks = c.ctr(&["task", "ls"]).stdout;
                if tasks
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("STOPPED"))
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id} never stopped: {tasks}\n{run:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let deleted = answered(&c, &["task", "rm", id]);
            assert!(
                deleted.stderr.contains("exit code 137"),
                "{id}: {deleted:?}\n{run:?}"
            );
        });
        let deletes = race(&c, pod, &["task", "rm", "-f"], 8, |id, run| {
            let tasks = c.ctr(&["task", "ls"]).stdout;
            assert!(!tasks.contains(id), "{id} is still there: {tasks}\n{run:?}");
        });
        eprintln!(
            "{}: kill landed {kills:?}, delete landed {deletes:?}",
            if pod.is_some() {
                "through the pod's shim"
            } else {
                "one shim per task"
            }
        );
    }
    // The pod's shim lived through all of it and still serves.
    assert_eq!(c.shims().len(), 1, "{:?}", c.shims());
    assert!(c.shims().keys().all(|pid| shim.contains_key(pid)));
    the_pod_still_serves_then_goes(&c, &annotation, &sandbox, &[]);
}

/// The end of a test on a ctr-made pod: its shim still runs a new task,
/// then the pod goes and nothing of it, of that task or of `ids` is left,
/// and nothing panicked.
fn the_pod_still_serves_then_goes(c: &Containerd, annotation: &str, sandbox: &str, ids: &[&str]) {
    let id = unique_id("after");
    let out = c.run(
        &id,
        WASM_TEST,
        &["--annotation", annotation],
        &["/wasitest.wasm"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "hello from wasm\n"),
        "{out:?}"
    );
    c.remove(sandbox);
    let mut all = ids.to_vec();
    all.extend([sandbox, id.as_str()]);
    c.assert_clean(&all);
    let panics = shim_tests::leaks::panics_in(&c.log());
    assert!(panics.is_empty(), "{panics:#?}");
}

/// The PIDs in a ctr container's cgroup.
fn cgroup_pids(id: &str) -> Vec<i32> {
    Cgroup::container(shim_tests::NAMESPACE, id).pids()
}

#[test]
fn a_guest_killed_while_it_is_created_leaves_nothing() {
    // Not through containerd (which knows a task only once created): the
    // kernel or an operator SIGKILLs whatever runs in the container's cgroup
    // while the shim is still creating it.
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    for round in 0..10 {
        let pod = (round % 2 == 1).then_some(annotation.as_str());
        let id = unique_id(&format!("shot{round}"));
        let done = AtomicBool::new(false);
        let (run, killed) = std::thread::scope(|s| {
            let runner = s.spawn(|| {
                let out = answered(
                    &c,
                    &run_detached_args(pod, &id, &["/wasitest.wasm", "loop"]),
                );
                done.store(true, Ordering::SeqCst);
                out
            });
            let mut killed = 0;
            while !done.load(Ordering::SeqCst) {
                for pid in cgroup_pids(&id) {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .stderr(std::process::Stdio::null())
                        .status();
                    killed += 1;
                }
            }
            (runner.join().expect("ctr run thread"), killed)
        });
        for pid in cgroup_pids(&id) {
            sigkill(pid);
        }
        eprintln!(
            "round {round}: {killed} kill(s); ctr run -d: {} {}",
            run.code,
            run.stderr.trim()
        );
        force_remove(&c, &id);
        c.assert_clean_of(&[&id], Duration::from_secs(10));
    }
    assert_eq!(c.shims().len(), 1, "only the pod's shim: {:?}", c.shims());
    the_pod_still_serves_then_goes(&c, &annotation, &sandbox, &[]);
}

/// What 50 lifecycles on one shim did: calls made, the slowest, failures.
#[derive(Default)]
struct Storm {
    calls: usize,
    slowest: Duration,
    slowest_call: String,
    ctr_fifos: usize,
    plans: [usize; 7],
    failures: Vec<String>,
}

/// One container's life through the pod's shim, picked by `rng`: kill and
/// delete in some order, concurrently or not, while it is created, started,
/// running or exiting by itself.
fn lifecycle(c: &Containerd, annotation: &str, id: &str, mut rng: Rng, storm: &Mutex<Storm>) {
    let call = |args: &[&str]| -> CtrOutput {
        let started = Instant::now();
        let out = answered(c, args);
        let mut storm = storm.lock().unwrap();
        storm.calls += 1;
        if started.elapsed() > storm.slowest {
            storm.slowest = started.elapsed();
            storm.slowest_call = format!("{:?}", &args[..args.len().min(4)]);
        }
        out
    };
    let fail = |what: String| storm.lock().unwrap().failures.push(what);
    let pause = |rng: &mut Rng| std::thread::sleep(Duration::from_millis(rng.below(50)));
    let pod = Some(annotation);
    let plan = rng.below(7) as usize;
    storm.lock().unwrap().plans[plan] += 1;
    pause(&mut rng);
    match plan {
        // Run to completion and removal in one ctr call.
        0 => {
            let out = call(&[
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--annotation",
                annotation,
                WASM_TEST,
                id,
                "/wasitest.wasm",
            ]);
            if (out.code, out.stdout.as_str()) != (0, "hello from wasm\n") {
                fail(format!("{id} run --rm: {out:?}"));
            }
        }
        // Exits by itself; deleted afterwards.
        1 => {
            let out = call(&run_detached_args(pod, id, &["/wasitest.wasm"]));
            if out.code != 0 {
                fail(format!("{id} run -d: {out:?}"));
            }
            pause(&mut rng);
            call(&["task", "rm", id]);
        }
        // SIGKILL or SIGTERM, then delete.
        2 | 3 => {
            let out = call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"]));
            if out.code != 0 {
                fail(format!("{id} run -d: {out:?}"));
            }
            pause(&mut rng);
            let signal = if plan == 2 { "SIGKILL" } else { "SIGTERM" };
            call(&["task", "kill", "-s", signal, id]);
            pause(&mut rng);
            call(&["task", "rm", id]);
        }
        // Force-deleted while running.
        4 => {
            call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"]));
            pause(&mut rng);
            call(&["task", "rm", "-f", id]);
        }
        // Kill and delete at the same time.
        5 => {
            call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"]));
            pause(&mut rng);
            std::thread::scope(|s| {
                s.spawn(|| call(&["task", "kill", "-s", "SIGKILL", id]));
                s.spawn(|| call(&["task", "rm", "-f", id]));
            });
        }
        // Killed and deleted while ctr is still creating and starting it.
        _ => {
            let delay = rng.below(40);
            std::thread::scope(|s| {
                s.spawn(|| call(&run_detached_args(pod, id, &["/wasitest.wasm", "loop"])));
                std::thread::sleep(Duration::from_millis(delay));
                s.spawn(|| call(&["task", "kill", "-s", "SIGKILL", id]));
                std::thread::sleep(Duration::from_millis(delay / 2));
                call(&["task", "rm", "-f", id]);
            });
        }
    }
    force_remove(c, id);
    let fifos = drop_ctr_fifos(c, id);
    storm.lock().unwrap().ctr_fifos += fifos;
}

#[test]
fn fifty_lifecycles_at_once_on_one_shim_neither_hang_nor_leak() {
    let c = Containerd::start();
    c.import("wasm-test.tar");
    let (annotation, sandbox) = c.start_pod();
    let shim = *c.shims().keys().next().expect("the pod's shim");
    let mut rng = Rng::from_env("FAULTS_SEED");
    let ids: Vec<String> = (0..50).map(|n| unique_id(&format!("storm{n}"))).collect();
    let storm = Mutex::new(Storm::default());
    let started = Instant::now();
    std::thread::scope(|s| {
        for id in &ids {
            let rng = Rng::new(rng.next_u64());
            let (c, annotation, storm) = (&c, annotation.as_str(), &storm);
            s.spawn(move || lifecycle(c, annotation, id, rng, storm));
        }
    });
    let storm = storm.into_inner().unwrap();
    eprintln!(
        "50 lifecycles on one shim: {} ctr calls in {:?}, the slowest {:?} ({}); plans {:?}; \
         fifos left by ctr {}",
        storm.calls,
        started.elapsed(),
        storm.slowest,
        storm.slowest_call,
        storm.plans,
        storm.ctr_fifos
    );
    assert!(
        storm.failures.is_empty(),
        "{:#?}\n{}",
        storm.failures,
        c.log()
    );
    // Nothing of the 50 is left, and the shim is the same process, serving.
    let tasks = c.ctr(&["task", "ls", "-q"]).stdout;
    let containers = c.ctr(&["containers", "ls", "-q"]).stdout;
    for id in &ids {
        assert!(!tasks.contains(id.as_str()), "{id}: {tasks}");
        assert!(!containers.contains(id.as_str()), "{id}: {containers}");
    }
    c.assert_clean_of(&ids, Duration::from_secs(10));
    assert_eq!(c.shims().keys().copied().collect::<Vec<_>>(), vec![shim]);
    let mut parents = vec![shim];
    parents.extend(shim_tests::procfs::children_of(shim));
    let zombies = shim_tests::procfs::zombies_of(&parents);
    assert!(zombies.is_empty(), "zombies under the shim: {zombies:?}");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    the_pod_still_serves_then_goes(&c, &annotation, &sandbox, &ids);
}
