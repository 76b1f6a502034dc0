//! The leak checks can fail: each finds what is left on purpose where this
//! host keeps it (a cgroup under a container's cgroupfs parent in every
//! hierarchy; on a pure cgroup v2 host, a cgroup anywhere in the tree named
//! after a container; where systemd is PID 1, a scope named after one), and
//! stops finding it once it is gone. A check that cannot fail would pass a
//! shim that leaks. Which of them this host exercises is printed; the cgroup
//! v2 + systemd guest (test/vm/, `make test-v2`) exercises all three.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shim_tests::cgroups::{self, Cgroup};
use shim_tests::environment::systemd_booted;
use shim_tests::leaks::{cgroups_and_units_left, units_naming};
use shim_tests::{unique_id, NAMESPACE};

/// Polls `check` until it finds nothing, for up to 10 s; the last answer.
fn wait_until_gone(check: impl Fn() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = check();
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `mkdir -p dir`; the directories it made, deepest last.
fn make_cgroup(dir: &Path) -> Vec<PathBuf> {
    let made: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    made.into_iter().rev().collect()
}

fn remove_cgroups(made: &[PathBuf]) {
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

#[test]
fn a_cgroup_left_where_containerd_puts_one_is_found() {
    let id = unique_id("leak-check");
    let dir = Cgroup::container(NAMESPACE, &id).dirs("memory")[0].clone();
    let made = make_cgroup(&dir);
    let found = cgroups::left(NAMESPACE, &[&id]);
    remove_cgroups(&made);
    assert!(
        found.contains(&format!("cgroup {}", dir.display())),
        "{dir:?} not found: {found:?}"
    );
    assert_eq!(cgroups::left(NAMESPACE, &[&id]), Vec::<String>::new());
    eprintln!("checked: a cgroup at {}", dir.display());
}

#[test]
fn on_cgroup_v2_a_cgroup_named_after_a_container_is_found_anywhere() {
    if cgroups::unified_dirs().is_empty() {
        eprintln!("not checked: this host has no pure cgroup v2 tree");
        return;
    }
    let id = unique_id("leak-check");
    let dir = Path::new("/sys/fs/cgroup/wasmtime-leak-check.slice").join(format!("x-{id}.scope"));
    let made = make_cgroup(&dir);
    let found = cgroups::left(NAMESPACE, &[&id]);
    remove_cgroups(&made);
    assert_eq!(found, vec![format!("cgroup {}", dir.display())]);
    assert_eq!(cgroups::left(NAMESPACE, &[&id]), Vec::<String>::new());
    eprintln!("checked: a cgroup at {}", dir.display());
}

#[test]
fn under_systemd_a_scope_named_after_a_container_is_found() {
    if !systemd_booted() {
        eprintln!("not checked: systemd is not PID 1 here");
        return;
    }
    let id = unique_id("leak-check");
    let unit = format!("wasmtime-test-{id}.scope");
    // A scope as the shim's systemd driver makes one, with a process in it.
    let mut scope = Command::new("systemd-run")
        .args(["--scope", "--quiet", "--unit", &unit, "--", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("systemd-run");
    // Once systemd has started it (a starting scope has no cgroup yet).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = units_naming(&[&id]);
    while !found.iter().any(|u| u.contains(" active running ")) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        found = units_naming(&[&id]);
    }
    let both = cgroups_and_units_left(NAMESPACE, &[&id]);
    // systemd-run execs the command in the scope: its PID is the sleep's.
    let _ = scope.kill();
    let _ = scope.wait();
    assert!(
        found.len() == 1 && found[0].starts_with(&format!("unit {unit} loaded active")),
        "{unit} not found: {found:?}"
    );
    assert!(
        both.iter()
            .any(|l| l.starts_with("cgroup ") && l.ends_with(&unit)),
        "the scope's cgroup not found: {both:?}"
    );
    let after = wait_until_gone(|| cgroups_and_units_left(NAMESPACE, &[&id]));
    assert_eq!(after, Vec::<String>::new(), "once {unit} is gone");
    eprintln!("checked: the unit {unit} and its cgroup");
}
