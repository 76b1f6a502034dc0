//! The one place that knows where cgroupfs keeps a cgroup, so that no test
//! hard-codes a layout: cgroup v1 (a hierarchy per controller, `cpu` and
//! `cpuacct` apart or co-mounted as `cpu,cpuacct`), the hybrid layout's v2
//! tree at `/sys/fs/cgroup/unified`, or a pure v2 machine's
//! `/sys/fs/cgroup`. Tests read a container's limits and usage here, find
//! the processes in its cgroup, and check that no cgroup is left of it.

use std::fs;
use std::path::{Path, PathBuf};

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
    /// The cgroup of container `id` under the cgroupfs parent `parent`.
    pub fn container(parent: &str, id: &str) -> Self {
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
        let used = match self.read("cpuacct", "cpuacct.usage") {
            Some(ns) => ns.trim().parse().ok()?,
            None => self.stat("cpu", "cpu.stat", "usage_usec")? * 1000,
        };
        Some((used, throttled))
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

/// The cgroup directories left of `ids` under the cgroupfs parent `parent`
/// (`default` for ctr's containers, `k8s.io` for CRI's), as `cgroup <dir>`.
pub fn left(parent: &str, ids: &[impl AsRef<str>]) -> Vec<String> {
    ids.iter()
        .flat_map(|id| Cgroup::container(parent, id.as_ref()).existing_dirs())
        .map(|dir| format!("cgroup {}", dir.display()))
        .collect()
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
