//! The one place that knows where cgroupfs keeps a cgroup, so that no test
//! hard-codes a layout: cgroup v1 (a hierarchy per controller, `cpu` and
//! `cpuacct` apart or co-mounted as `cpu,cpuacct`), the hybrid layout's v2
//! tree at `/sys/fs/cgroup/unified`, or a pure v2 machine's
//! `/sys/fs/cgroup`; and, with the systemd driver, a container's scope
//! wherever its slice put it. Tests read a container's limits and usage
//! here, find the processes in its cgroup, and check that no cgroup is left
//! of it: on a pure v2 machine anywhere in the tree, by name.

use std::fs;
use std::path::{Path, PathBuf};

use crate::environment::{cgroup_driver, CgroupDriver};

const ROOT: &str = "/sys/fs/cgroup";

/// The controllers whose directories a container must not leave behind.
const CHECKED_FOR_LEAKS: [&str; 3] = ["memory", "pids", "cpu"];

/// A cgroup, by where it is in each hierarchy.
#[derive(Clone, Debug)]
pub enum Cgroup {
    /// The same path in every hierarchy: where containerd puts a container
    /// when no cgroup parent is set (`<namespace>/<id>`: `default/<id>` for
    /// ctr's containers, `k8s.io/<id>` for CRI's).
    Path(PathBuf),
    /// Wherever `/proc/<pid>/cgroup` says the process is, per hierarchy.
    Process(i32),
}

impl Cgroup {
    /// The cgroup of container `id`: with the cgroupfs driver under the
    /// cgroupfs parent `parent`; with the systemd driver its scope
    /// (`<prefix>-<id>.scope`) in whatever slice holds it.
    pub fn container(parent: &str, id: &str) -> Self {
        if cgroup_driver() == CgroupDriver::Systemd {
            let scope = format!("-{id}.scope");
            if let Some(dir) = unified_dirs().into_iter().find(|dir| {
                dir.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(&scope))
            }) {
                return Self::Path(dir.strip_prefix(ROOT).unwrap_or(&dir).to_path_buf());
            }
        }
        Self::Path(Path::new(parent).join(id))
    }

    /// The cgroups process `pid` is in.
    pub fn of_process(pid: i32) -> Self {
        Self::Process(pid)
    }

    /// The directories that may hold `controller`'s files for this cgroup:
    /// its v1 hierarchy's first, then the v2 tree's.
    pub fn dirs(&self, controller: &str) -> Vec<PathBuf> {
        match self {
            Self::Path(path) => v1_hierarchies(controller)
                .into_iter()
                .chain(v2_root())
                .map(|root| root.join(path))
                .collect(),
            Self::Process(pid) => {
                let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                let mut dirs = Vec::new();
                // `<id>:<controllers>:<path>`; v2's line is `0::<path>`.
                for line in cgroups.lines() {
                    let mut fields = line.splitn(3, ':');
                    let (Some(_), Some(controllers), Some(path)) =
                        (fields.next(), fields.next(), fields.next())
                    else {
                        continue;
                    };
                    let path = path.trim_start_matches('/');
                    if controllers.split(',').any(|c| c == controller) {
                        dirs.insert(0, Path::new(ROOT).join(controllers).join(path));
                    } else if controllers.is_empty() {
                        dirs.extend(v2_root().map(|root| root.join(path)));
                    }
                }
                dirs
            }
        }
    }

    /// `file` of `controller` (`cpu.stat`, `memory.peak`), from the first
    /// directory of [`Cgroup::dirs`] that has it.
    pub fn read(&self, controller: &str, file: &str) -> Option<String> {
        self.dirs(controller)
            .iter()
            .find_map(|dir| fs::read_to_string(dir.join(file)).ok())
    }

    /// The value of `key` in a flat-keyed file of `controller`
    /// (`nr_throttled` in `cpu.stat`).
    pub fn stat(&self, controller: &str, file: &str, key: &str) -> Option<u64> {
        self.read(controller, file)?.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.next()?.parse().ok())?
        })
    }

    /// CPU time used (ns: v1's `cpuacct.usage`, else v2's `usage_usec`) and
    /// the number of periods the CPU quota throttled.
    pub fn cpu_usage(&self) -> Option<(u64, u64)> {
        let throttled = self.stat("cpu", "cpu.stat", "nr_throttled")?;
        Some((self.cpu_time()?, throttled))
    }

    /// CPU time used, in ns: v1's `cpuacct.usage`, else v2's `usage_usec`
    /// (in `cpu.stat` with or without the cpu controller).
    pub fn cpu_time(&self) -> Option<u64> {
        match self.read("cpuacct", "cpuacct.usage") {
            Some(ns) => ns.trim().parse().ok(),
            None => Some(self.stat("cpu", "cpu.stat", "usage_usec")? * 1000),
        }
    }

    /// The CPU quota and its period, in µs: v1's `cpu.cfs_quota_us` and
    /// `cpu.cfs_period_us`, else v2's `cpu.max`; a quota of `None` is none.
    pub fn cpu_max(&self) -> Option<(Option<u64>, u64)> {
        if let (Some(quota), Some(period)) = (
            self.read("cpu", "cpu.cfs_quota_us"),
            self.read("cpu", "cpu.cfs_period_us"),
        ) {
            return Some((quota.trim().parse().ok(), period.trim().parse().ok()?));
        }
        let max = self.read("cpu", "cpu.max")?;
        let mut words = max.split_whitespace();
        let quota = words.next()?.parse().ok();
        Some((quota, words.next()?.parse().ok()?))
    }

    /// The memory limit in bytes: v1's `memory.limit_in_bytes`, else v2's
    /// `memory.max`; `None` for none ("max", or v1's page-rounded maximum).
    pub fn memory_max(&self) -> Option<u64> {
        let text = self
            .read("memory", "memory.limit_in_bytes")
            .or_else(|| self.read("memory", "memory.max"))?;
        text.trim()
            .parse()
            .ok()
            .filter(|&bytes: &u64| bytes < 1 << 62)
    }

    /// The PIDs in the cgroup: `cgroup.procs` of the pids hierarchy and of
    /// the v2 tree (a PID in both is listed twice).
    pub fn pids(&self) -> Vec<i32> {
        self.dirs("pids")
            .iter()
            .flat_map(|dir| {
                fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// The directories of this cgroup that exist, in the hierarchies of
    /// the memory, pids and cpu controllers and the v2 tree.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = Vec::new();
        for controller in CHECKED_FOR_LEAKS {
            for dir in self.dirs(controller) {
                if dir.exists() && !found.contains(&dir) {
                    found.push(dir);
                }
            }
        }
        found
    }
}

/// The cgroup directories left of `ids`, as `cgroup <dir>`: under the
/// cgroupfs parent `parent` (`default` for ctr's containers, `k8s.io` for
/// CRI's) in every hierarchy; and on a pure v2 machine, any cgroup in the
/// tree whose name holds one of `ids` (a systemd scope, a cgroup under
/// another parent).
pub fn left(parent: &str, ids: &[impl AsRef<str>]) -> Vec<String> {
    let mut found: Vec<PathBuf> = Vec::new();
    for id in ids {
        // A systemd scope is found by the walk below.
        let cgroupfs = Cgroup::Path(Path::new(parent).join(id.as_ref()));
        for dir in cgroupfs.existing_dirs() {
            if !found.contains(&dir) {
                found.push(dir);
            }
        }
    }
    for dir in unified_dirs() {
        let named = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        if named.is_some_and(|n| ids.iter().any(|id| n.contains(id.as_ref())))
            && !found.contains(&dir)
        {
            found.push(dir);
        }
    }
    found
        .into_iter()
        .map(|dir| format!("cgroup {}", dir.display()))
        .collect()
}

/// Where systemd keeps the cgroup of `slice`: `a-b.slice` is
/// `/sys/fs/cgroup/a.slice/a-b.slice` (a `-` nests a slice in another).
pub fn slice_dir(slice: &str) -> PathBuf {
    let name = slice.trim_end_matches(".slice");
    let mut dir = PathBuf::from(ROOT);
    let mut prefix = String::new();
    for part in name.split('-') {
        prefix.push_str(part);
        dir.push(format!("{prefix}.slice"));
        prefix.push('-');
    }
    dir
}

/// Every cgroup of a pure v2 machine's tree, the root's children first;
/// none elsewhere (v1 and hybrid hosts keep containers at known paths).
pub fn unified_dirs() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    if !root.join("cgroup.controllers").exists() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
                pending.push(entry.path());
            }
        }
    }
    found
}

/// The v1 hierarchies `controller` is mounted in: the directories of
/// /sys/fs/cgroup named after it alone or with others (`cpu,cpuacct`) that
/// hold v1's `tasks` file.
fn v1_hierarchies(controller: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .split(',')
                .any(|c| c == controller)
        })
        .map(|e| e.path())
        .filter(|dir| dir.join("tasks").exists())
        .collect();
    found.sort();
    found
}

/// The root of the v2 tree: `unified` in the hybrid layout, else
/// /sys/fs/cgroup itself on a pure v2 machine; none on a v1-only machine.
fn v2_root() -> Option<PathBuf> {
    [Path::new(ROOT).join("unified"), PathBuf::from(ROOT)]
        .into_iter()
        .find(|root| root.join("cgroup.controllers").exists())
}

#[cfg(test)]
mod tests {
    use super::Cgroup;

    #[test]
    fn a_slice_nests_in_the_slices_its_name_names() {
        assert_eq!(
            super::slice_dir("kubepods-besteffort-podab_c.slice"),
            std::path::Path::new(
                "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_c.slice"
            )
        );
    }

    #[test]
    fn finds_this_process_in_its_own_cgroups() {
        let me = std::process::id().to_string();
        let cgroup = Cgroup::of_process(std::process::id() as i32);
        for controller in ["memory", "pids", "cpu"] {
            let procs = cgroup.read(controller, "cgroup.procs").unwrap_or_else(|| {
                panic!("no {controller} cgroup in {:?}", cgroup.dirs(controller))
            });
            assert!(procs.lines().any(|p| p == me), "{controller}: {procs}");
        }
    }
}
