//! OOM kills in a container's memory cgroup, as events.
//!
//! kubelet reports `OOMKilled` only if containerd saw a TaskOOM for the
//! container before it exited, so the shim watches the cgroup: on cgroup v1
//! (and the v1 memory hierarchy of a hybrid host) through an eventfd
//! registered on `memory.oom_control`; on cgroup v2 through inotify on
//! `memory.events` and its `oom_kill` counter. The watcher thread ends when
//! the cgroup is removed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libcgroups::common::{get_cgroup_setup, CgroupSetup};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::Error;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Calls `on_oom` each time the OOM killer acts in the cgroup at
/// `cgroup_path` (the spec's `linux.cgroupsPath`, cgroupfs driver).
pub fn watch(cgroup_path: &Path, on_oom: impl Fn() + Send + 'static) -> Result<(), Error> {
    let relative = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let unified = matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified));
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Runtime {
        what: "cannot watch for OOM kills",
        reason: format!("{what}: {e}"),
    };
    if unified {
        let events = Path::new(CGROUP_ROOT).join(relative).join("memory.events");
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| fail("inotify", &e))?;
        inotify
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
            .map_err(|e| fail(&events.display().to_string(), &e))?;
        let mut seen = oom_kills(&events).unwrap_or(0);
        spawn(move || {
            while inotify.read_events().is_ok() {
                let Some(count) = oom_kills(&events) else {
                    return;
                };
                if count > seen {
                    seen = count;
                    on_oom();
                }
            }
        })
    } else {
        let dir = Path::new(CGROUP_ROOT).join("memory").join(relative);
        let control = File::open(dir.join("memory.oom_control"))
            .map_err(|e| fail("memory.oom_control", &e))?;
        let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
            .map_err(|e| fail("eventfd", &e))?;
        let registration = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
        let event_control: PathBuf = dir.join("cgroup.event_control");
        std::fs::write(&event_control, registration)
            .map_err(|e| fail("cgroup.event_control", &e))?;
        spawn(move || {
            let _control = control; // the registration lives as long as this fd
                                    // Removing the cgroup also signals the eventfd: only a live cgroup had an OOM.
            while eventfd.read().is_ok() && event_control.exists() {
                on_oom();
            }
        })
    }
}

fn spawn(watcher: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("oom".into())
        .spawn(watcher)
        .map(drop)
        .map_err(|e| Error::Runtime {
            what: "cannot watch for OOM kills",
            reason: e.to_string(),
        })
}

/// The `oom_kill` count in a cgroup v2 `memory.events` file.
fn oom_kills(events: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(events).ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_oom_kill_counter() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(super::parse_oom_kills(events), Some(1));
        assert_eq!(super::parse_oom_kills("low 0\n"), None);
    }
}
