//! Leak checks: what a container could leave on the node once it is gone
//! (mounts, processes, cgroups, systemd scopes and slices, bundles, fifos,
//! shim sockets) and what a test looks for in containerd's log (panics).
//! Every suite ends with one of these, so a shim that cleans up badly fails
//! the test that caused it, on every kind of host: cgroups are looked for in
//! each v1 hierarchy and, on a pure v2 host, anywhere in the tree by name;
//! units wherever systemd is PID 1 (tests/leak_checks.rs shows that each
//! of these finds what is left on purpose).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::cgroups;
use crate::daemon::is_daemon;
use crate::environment::systemd_booted;
use crate::harness::{Containerd, NAMESPACE};
use crate::procfs::{mounts_under, processes_naming};

impl Containerd {
    /// Everything this containerd's containers could have left behind on the
    /// host: mounts under its directory, processes naming it, cgroups and
    /// bundles of `ids`.
    pub fn leftovers(&self, ids: &[&str]) -> Vec<String> {
        let mut found = left_under(self.dir());
        found.extend(cgroups_and_units_left(NAMESPACE, ids));
        for id in ids {
            let bundle = self
                .dir()
                .join("state/io.containerd.runtime.v2.task")
                .join(NAMESPACE)
                .join(id);
            if bundle.exists() {
                found.push(format!("bundle {}", bundle.display()));
            }
        }
        found
    }

    /// Asserts that nothing of `ids` is left, giving the shim a moment to exit.
    pub fn assert_clean(&self, ids: &[&str]) {
        wait_until_clean(
            Duration::from_secs(5),
            || self.leftovers(ids),
            || self.log(),
        );
    }

    /// What `ids` left behind, while other tasks (a pod's shim) may still
    /// run: their mounts, cgroups and bundles, and fifos naming them.
    pub fn leftovers_of(&self, ids: &[impl AsRef<str>]) -> Vec<String> {
        let mounts = mounts_under(self.dir());
        let fifos = fifos_under(self.dir());
        let bundles = self.bundles();
        let mut found = cgroups_and_units_left(NAMESPACE, ids);
        for id in ids {
            let id = id.as_ref();
            found.extend(
                mounts
                    .iter()
                    .filter(|m| m.contains(id))
                    .map(|m| format!("mount {m}")),
            );
            found.extend(
                fifos
                    .iter()
                    .filter(|f| f.to_string_lossy().contains(id))
                    .map(|f| format!("fifo {}", f.display())),
            );
            if bundles.iter().any(|b| b == id) {
                found.push(format!("bundle {id}"));
            }
        }
        found
    }

    /// Waits up to `patience` until [`Containerd::leftovers_of`] is empty.
    pub fn assert_clean_of(&self, ids: &[impl AsRef<str>], patience: Duration) {
        wait_until_clean(patience, || self.leftovers_of(ids), || self.log());
    }

    /// The bundle directories containerd holds for namespace `default`
    /// (`<state>/io.containerd.runtime.v2.task/default/<id>`).
    pub fn bundles(&self) -> Vec<String> {
        dir_names(
            &self
                .dir()
                .join("state/io.containerd.runtime.v2.task")
                .join(NAMESPACE),
        )
    }
}

/// Mounts under `dir`, and processes (other than containerd and its tini)
/// whose command line names it: shims, helpers and guests all do.
pub(crate) fn left_under(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = mounts_under(dir)
        .into_iter()
        .map(|m| format!("mount {m}"))
        .collect();
    found.extend(
        processes_naming(&dir.to_string_lossy())
            .into_iter()
            .filter(|(_, cmd)| !is_daemon(cmd))
            .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
    );
    found
}

/// The cgroups ([`cgroups::left`]) and systemd units ([`units_naming`])
/// left of `ids`; `parent` is their cgroupfs parent.
pub fn cgroups_and_units_left(parent: &str, ids: &[impl AsRef<str>]) -> Vec<String> {
    let mut found = cgroups::left(parent, ids);
    found.extend(units_naming(ids));
    found
}

/// The systemd units (scopes and slices, loaded, in any state) whose names
/// hold one of `ids`, as `unit <name> <load> <active> <sub>`: a container's
/// scope (`cri-containerd-<id>.scope`, `wasmtime-test-<id>.scope`) outlives
/// it if its cgroup is not removed through systemd. None where systemd is
/// not PID 1; a `systemctl` that fails is a leftover too, so the check
/// cannot pass by not looking.
pub fn units_naming(ids: &[impl AsRef<str>]) -> Vec<String> {
    if ids.is_empty() || !systemd_booted() {
        return Vec::new();
    }
    let out = Command::new("systemctl")
        .args(["list-units", "--type=scope,slice", "--all", "--plain"])
        .args(["--no-legend", "--no-pager"])
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return vec![format!(
                "systemctl list-units failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )]
        }
        Err(e) => return vec![format!("systemctl list-units: {e}")],
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            let unit = line.split_whitespace().next().unwrap_or_default();
            ids.iter().any(|id| unit.contains(id.as_ref()))
        })
        .map(|line| {
            format!(
                "unit {}",
                line.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

/// Polls `leftovers` until it is empty; panics after `patience` with what is
/// left and containerd's `log`.
pub(crate) fn wait_until_clean(
    patience: Duration,
    leftovers: impl Fn() -> Vec<String>,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + patience;
    loop {
        let left = leftovers();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {left:#?}\ncontainerd log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The names of the entries of `dir` (none if it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every fifo at or under `dir`.
pub fn fifos_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_fifo() {
                found.push(entry.path());
            }
        }
    }
    found
}

/// Where a shim groups the tasks of `grouping` (a pod's sandbox id, or a
/// task id): `/run/containerd/s/<sha256 of <containerd socket>/<ns>/<grouping>>`,
/// as containerd-shim's `socket_address` computes it.
pub fn shim_socket(containerd_socket: &Path, namespace: &str, grouping: &str) -> PathBuf {
    let key = containerd_socket.join(namespace).join(grouping);
    let hash = sha2::Sha256::digest(key.display().to_string().as_bytes());
    PathBuf::from("/run/containerd/s").join(format!("{hash:x}"))
}

/// Lines of a containerd log (shim logs included) that tell of a panic.
pub fn panics_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panic") || l.contains("rust_backtrace")
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_shim_socket_is_where_containerd_shim_puts_it() {
        // `echo -n /run/containerd/containerd.sock/k8s.io/abc | sha256sum`
        assert_eq!(
            super::shim_socket(Path::new("/run/containerd/containerd.sock"), "k8s.io", "abc"),
            Path::new(
                "/run/containerd/s/a99a1752d3a0fadfb1f869026f16760475df03a572e20f4ccea9e6c1e5470b72"
            )
        );
    }
}
