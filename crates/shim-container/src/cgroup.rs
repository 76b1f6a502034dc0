//! A container's cgroup as the kernel shows it, whichever driver made it.
//!
//! With the cgroupfs driver the spec's `cgroupsPath` is the cgroup's path;
//! with the systemd driver it is `slice:prefix:name`, and systemd decides
//! where the scope goes. So the shim asks the kernel instead: the cgroup the
//! container's process is in (`/proc/<pid>/cgroup`), found once, while it
//! waits to be started. The OOM watch ([`crate::oom`]) and, on cgroup v2,
//! the stats read it there.
//!
//! What needs libcontainer to reach systemd (deleting a container whose
//! cgroup is a systemd unit) runs apart from the shim, in a create helper
//! forked by the pod's zygote (`Request::Cleanup`): libcgroups 0.7's systemd
//! client never closes its socket to systemd (youki-dev/youki#3630), each
//! use leaks a descriptor, and the shim lives as long as its pod. The rest
//! (signalling every process, listing them, stats) reads the cgroup's v2
//! directory directly.
//!
//! cgroup v2 stats are read from the controllers the cgroup has: systemd
//! enables in a scope only the controllers it manages (not `hugetlb`), and
//! libcgroups' v2 stats fail as a whole when any controller's files are
//! missing, which left kubelet with no stats at all for a container under
//! the systemd driver. CPU times are given in nanoseconds, as v1's are, so
//! the task layer converts both the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::Stats;

/// Where cgroupfs is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// Creates the parents of a cgroup the cgroupfs driver names
/// (`/default/<id>`) on cgroup v2, whether or not they exist. libcgroups
/// 0.7's v2 manager checks for each parent and then creates it, so two
/// containers created at once under a new parent failed with `failed to
/// create dir /sys/fs/cgroup/default: File exists` (seen in the cgroup v2
/// guest); with the parents made, it only enables their controllers. A
/// systemd-driver path (`slice:prefix:name`), one with `..` and cgroup v1
/// are left alone.
pub fn create_parents(cgroups_path: &str) -> std::io::Result<()> {
    create_parents_in(Path::new(ROOT), cgroups_path)
}

fn create_parents_in(root: &Path, cgroups_path: &str) -> std::io::Result<()> {
    // A path that climbs out of the tree is libcgroups' to refuse.
    let climbs = Path::new(cgroups_path)
        .components()
        .any(|c| c == std::path::Component::ParentDir);
    if climbs || cgroups_path.contains(':') || !root.join("cgroup.controllers").exists() {
        return Ok(());
    }
    let dir = root.join(cgroups_path.trim_start_matches('/'));
    match dir.parent() {
        Some(parent) if parent != root => std::fs::create_dir_all(parent),
        _ => Ok(()),
    }
}

/// The directory of the memory cgroup of process `pid`: on cgroup v2 its
/// cgroup in the unified tree at /sys/fs/cgroup; on v1 (or a hybrid host) its
/// cgroup in the memory hierarchy.
pub fn memory_dir_of(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let unified = Path::new(ROOT).join("cgroup.controllers").exists();
    memory_dir_in(&text, unified)
}

/// [`memory_dir_of`] from the text of `/proc/<pid>/cgroup`
/// (`<id>:<controllers>:<path>` lines; v2's is `0::<path>`).
fn memory_dir_in(proc_cgroup: &str, unified: bool) -> Option<PathBuf> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let relative = path.trim_start_matches('/');
        if unified && controllers.is_empty() {
            Some(Path::new(ROOT).join(relative))
        } else if !unified && controllers.split(',').any(|c| c == "memory") {
            Some(Path::new(ROOT).join("memory").join(relative))
        } else {
            None
        }
    })
}

/// Usage of the cgroup v2 cgroup at `dir`, from the controllers it has: a
/// controller that is not enabled there (its files are missing) reports
/// nothing. Errors only if the cgroup itself is gone.
pub fn v2_stats(dir: &Path) -> std::io::Result<Stats> {
    // The one file every cgroup has: missing, the cgroup is gone.
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    let mut stats = Stats::default();
    let number = |file: &str| read_number(&dir.join(file));
    let keyed = |file: &str| read_keyed(&dir.join(file));

    // cpu.stat's usage lines are there without the cpu controller too.
    let cpu = keyed("cpu.stat");
    let usec = |key: &str| cpu.get(key).copied().unwrap_or_default();
    stats.cpu.usage.usage_total = usec("usage_usec") * 1000;
    stats.cpu.usage.usage_user = usec("user_usec") * 1000;
    stats.cpu.usage.usage_kernel = usec("system_usec") * 1000;
    stats.cpu.throttling.periods = usec("nr_periods");
    stats.cpu.throttling.throttled_periods = usec("nr_throttled");
    stats.cpu.throttling.throttled_time = usec("throttled_usec") * 1000;

    if has("memory") {
        let memory = &mut stats.memory;
        memory.memory.usage = number("memory.current").unwrap_or_default();
        memory.memory.limit = number("memory.max").unwrap_or(u64::MAX);
        memory.memory.max_usage = number("memory.peak").unwrap_or_default();
        memory.memory.fail_count = keyed("memory.events")
            .get("oom")
            .copied()
            .unwrap_or_default();
        memory.memswap.usage = number("memory.swap.current").unwrap_or_default();
        memory.memswap.limit = number("memory.swap.max").unwrap_or(u64::MAX);
        memory.hierarchy = true;
        memory.stats = keyed("memory.stat");
    }
    if has("pids") {
        stats.pids.current = number("pids.current").unwrap_or_default();
        // "max" is no limit, which the stats give as 0.
        stats.pids.limit = number("pids.max")
            .filter(|&n| n != u64::MAX)
            .unwrap_or_default();
    }
    Ok(stats)
}

/// A file holding one number, or `max` (`u64::MAX`).
fn read_number(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// A flat-keyed file (`key value` lines); empty if it is missing.
fn read_keyed(file: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn finds_the_memory_cgroup_of_each_layout() {
        let v2 = "0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-ab.scope\n";
        assert_eq!(
            memory_dir_in(v2, true).as_deref(),
            Some(Path::new(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/cri-containerd-ab.scope"
            ))
        );
        let hybrid = "12:pids:/k8s.io/ab\n5:memory:/k8s.io/ab\n1:name=systemd:/\n0::/k8s.io/ab\n";
        assert_eq!(
            memory_dir_in(hybrid, false).as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory/k8s.io/ab"))
        );
        assert_eq!(memory_dir_in("0::/x\n", false), None);
    }

    #[test]
    fn v2_stats_read_the_controllers_there_and_give_nanoseconds() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
        // A systemd scope: no hugetlb or io files, cpu.stat without the cpu
        // controller's throttling lines.
        write("cgroup.controllers", "memory pids\n");
        write(
            "cpu.stat",
            "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
        );
        write("memory.current", "4096\n");
        write("memory.max", "max\n");
        write("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        write("memory.stat", "anon 1024\nfile 2048\ninactive_file 512\n");
        write("pids.current", "2\n");
        write("pids.max", "max\n");
        let stats = v2_stats(dir.path()).unwrap();
        assert_eq!(stats.cpu.usage.usage_total, 2_500_000);
        assert_eq!(stats.cpu.usage.usage_kernel, 500_000);
        assert_eq!(stats.memory.memory.usage, 4096);
        assert_eq!(stats.memory.memory.limit, u64::MAX);
        assert_eq!(stats.memory.memory.fail_count, 1);
        assert_eq!(stats.memory.stats.get("inactive_file"), Some(&512));
        assert_eq!((stats.pids.current, stats.pids.limit), (2, 0));
        assert!(v2_stats(&dir.path().join("gone")).is_err());
    }

    #[test]
    fn a_cgroupfs_cgroups_parents_are_made_whether_or_not_they_exist() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        // Not a cgroup v2 root: nothing is made.
        super::create_parents_in(root, "/default/c1").unwrap();
        assert!(!root.join("default").exists());
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        super::create_parents_in(root, "/default/c1").unwrap();
        super::create_parents_in(root, "/default/c2").unwrap();
        super::create_parents_in(root, "/k8s.io/pod/c3").unwrap();
        assert!(root.join("default").is_dir() && root.join("k8s.io/pod").is_dir());
        assert!(
            !root.join("default/c1").exists(),
            "the cgroup is libcgroups' to make"
        );
        super::create_parents_in(root, "/default/../../escape/c5").unwrap();
        assert!(
            !root.parent().unwrap().join("escape").exists(),
            "nothing outside the tree"
        );
        super::create_parents_in(root, "system.slice:cri-containerd:c4").unwrap();
        assert!(
            !root.join("system.slice").exists(),
            "systemd's paths are systemd's"
        );
    }
}
