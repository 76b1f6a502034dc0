//! OOM kills in a container's memory cgroup, as events.
//!
//! kubelet reports `OOMKilled` only if containerd saw a TaskOOM for the
//! container before it looked at its exit, so the shim watches the cgroup's
//! `oom_kill` counter (v2: `memory.events`; v1: `memory.oom_control`) and
//! reports each increase once: when the kernel says the file changed (v2:
//! inotify; v1: an eventfd registered on `memory.oom_control`), and again
//! before the container's exit is published ([`Watch::check`]). The kernel
//! counts the kill before the victim dies, but tells watchers later, from a
//! work queue: on a busy node the exit could otherwise overtake TaskOOM and
//! the pod show `Error` instead of `OOMKilled`.
//!
//! With the systemd driver, systemd removes a scope's cgroup as soon as its
//! last process is gone. A kill whose count is read only after that is lost:
//! the race runc's and conmon's watchers have too (opencontainers/runc#5071,
//! containers/conmon#426). The watcher is woken by the kill itself, before
//! the victim has finished dying, so it nearly always reads first; on a slow
//! node systemd sometimes won (seen in the cgroup v2 guest, 1 run in ~5). So
//! when the cgroup is gone at the exit, and the process died of a SIGKILL the
//! shim did not send, the parent cgroup's count decides
//! ([`Watch::check_exit`]): on v2 `memory.events` counts the kills of every
//! cgroup below too, and keeps them when that cgroup is removed.
//!
//! The watcher thread ends
//! when no process is left in the cgroup (v2: `populated 0` in
//! `cgroup.events`, which inotify reports too; a removed cgroup reports
//! nothing) or, on v1, when it is removed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::Error;

/// The OOM kills of one memory cgroup, each reported once.
pub struct Watch {
    /// The file with the `oom_kill` counter.
    counter: PathBuf,
    /// Its count when the watch began.
    initial: u64,
    /// On cgroup v2, the parent cgroup's `memory.events` and its count when
    /// the watch began.
    parent: Option<(PathBuf, u64)>,
    /// The count reported so far, and whom to tell.
    state: Mutex<(u64, Box<dyn Fn() + Send>)>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("counter", &self.counter)
            .finish()
    }
}

impl Watch {
    /// Reports the kills counted since the last report: whenever the
    /// counter may have moved, and before an exit is published.
    pub fn check(&self) {
        if let Some(count) = oom_kills(&self.counter) {
            self.report(count);
        }
    }

    /// At the container's exit, before it is published: [`Watch::check`];
    /// and if the cgroup is gone already (systemd removed it with its last
    /// process) and `unasked_sigkill` (its process died of a SIGKILL the shim
    /// was not asked to send), a kill its parent counted since the watch
    /// began is taken for its own, unless one was reported already.
    pub fn check_exit(&self, unasked_sigkill: bool) {
        if let Some(count) = oom_kills(&self.counter) {
            return self.report(count);
        }
        let Some((parent, before)) = self.parent.as_ref().filter(|_| unasked_sigkill) else {
            return;
        };
        if oom_kills(parent).is_some_and(|count| count > *before) {
            log::info!(
                "{}: gone with an OOM kill counted in {}",
                self.counter.display(),
                parent.display()
            );
            self.report(self.initial + 1);
        }
    }

    /// Reports a kill if `count` is past the count reported so far.
    fn report(&self, count: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if count > state.0 {
            state.0 = count;
            (state.1)();
        }
    }
}

/// Calls `on_oom` each time the OOM killer acts in the memory cgroup at
/// `dir` (v2 if it has `memory.events`, else v1); the watch, for
/// [`Watch::check`].
pub fn watch(dir: &Path, on_oom: impl Fn() + Send + 'static) -> Result<Arc<Watch>, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Runtime {
        what: "cannot watch for OOM kills",
        reason: format!("{what}: {e}"),
    };
    let events = dir.join("memory.events");
    let unified = events.exists();
    let counter = if unified {
        events.clone()
    } else {
        dir.join("memory.oom_control")
    };
    let seen = oom_kills(&counter).unwrap_or(0);
    let parent = dir
        .parent()
        .filter(|_| unified)
        .map(|p| p.join("memory.events"))
        .and_then(|file| oom_kills(&file).map(|count| (file, count)));
    let watch = Arc::new(Watch {
        counter,
        initial: seen,
        parent,
        state: Mutex::new((seen, Box::new(on_oom))),
    });
    let watcher = watch.clone();
    if unified {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| fail("inotify", &e))?;
        let cgroup_events = dir.join("cgroup.events");
        for file in [&events, &cgroup_events] {
            inotify
                .add_watch(file, AddWatchFlags::IN_MODIFY)
                .map_err(|e| fail(&file.display().to_string(), &e))?;
        }
        // Checked after the watches are in place: an exit before them
        // would never be told.
        if populated(&cgroup_events) {
            spawn(move || {
                while inotify.read_events().is_ok() {
                    watcher.check();
                    if !populated(&cgroup_events) {
                        break;
                    }
                }
            })?;
        }
    } else {
        let control = File::open(dir.join("memory.oom_control"))
            .map_err(|e| fail("memory.oom_control", &e))?;
        let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
            .map_err(|e| fail("eventfd", &e))?;
        let registration = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
        let event_control: PathBuf = dir.join("cgroup.event_control");
        std::fs::write(&event_control, registration)
            .map_err(|e| fail("cgroup.event_control", &e))?;
        // Kernels before 4.13 count no kills in memory.oom_control: each
        // event is then one.
        let counted = oom_kills(&watcher.counter).is_some();
        spawn(move || {
            let _control = control; // the registration lives as long as this fd
                                    // Removing the cgroup also signals the eventfd: only a live cgroup had an OOM.
            while eventfd.read().is_ok() && event_control.exists() {
                if counted {
                    watcher.check();
                } else {
                    let state = watcher.state.lock().unwrap_or_else(|e| e.into_inner());
                    (state.1)();
                }
            }
        })?;
    }
    Ok(watch)
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

/// Whether a v2 cgroup has processes (`populated 1` in its `cgroup.events`);
/// one that is gone has none.
fn populated(cgroup_events: &Path) -> bool {
    std::fs::read_to_string(cgroup_events)
        .map(|text| text.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// The `oom_kill` count in `memory.events` (v2) or `memory.oom_control` (v1).
fn oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_oom_kills(&text)
}

fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn reads_the_oom_kill_counter() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(super::parse_oom_kills(events), Some(1));
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(super::parse_oom_kills(control), Some(3));
        assert_eq!(super::parse_oom_kills("low 0\n"), None);
    }

    #[test]
    fn each_kill_is_reported_once_whoever_looks_first() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("memory.events");
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let cgroup_events = dir.path().join("cgroup.events");
        std::fs::write(&cgroup_events, "populated 1\nfrozen 0\n").unwrap();
        let reported = Arc::new(AtomicUsize::new(0));
        let counter = reported.clone();
        let watch = super::watch(dir.path(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // The kernel counts a kill; the exit path looks before inotify's
        // watcher does, then the watcher wakes: one report.
        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        watch.check();
        watch.check();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(reported.load(Ordering::SeqCst), 1);
        std::fs::write(&events, "oom 2\noom_kill 2\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while reported.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            reported.load(Ordering::SeqCst),
            2,
            "the watcher saw the second"
        );
        // The watcher ends once the cgroup has no process left.
        let threads = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "oom")
                })
                .count()
        };
        assert!(threads() >= 1);
        std::fs::write(&cgroup_events, "populated 0\nfrozen 0\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while threads() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(threads(), 0, "the watcher thread ended");
    }

    /// systemd removed the container's scope with its last process before
    /// the exit path read its count: the parent's count decides, for a
    /// SIGKILL the shim did not send, once.
    #[test]
    fn a_kill_in_a_removed_cgroup_is_found_in_its_parents_count() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("memory.events"), "oom 3\noom_kill 3\n").unwrap();
        let dir = parent.path().join("cri-containerd-1.scope");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.events"), "oom 0\noom_kill 0\n").unwrap();
        std::fs::write(dir.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        let reported = Arc::new(AtomicUsize::new(0));
        let counter = reported.clone();
        let watch = super::watch(&dir, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // Gone, with no kill counted below the parent meanwhile: nothing.
        std::fs::remove_dir_all(&dir).unwrap();
        watch.check_exit(true);
        assert_eq!(reported.load(Ordering::SeqCst), 0);
        // The parent counted one: a SIGKILL the shim sent is not an OOM kill.
        std::fs::write(parent.path().join("memory.events"), "oom 4\noom_kill 4\n").unwrap();
        watch.check_exit(false);
        assert_eq!(reported.load(Ordering::SeqCst), 0);
        // One nobody asked for is, and is reported once.
        watch.check_exit(true);
        watch.check_exit(true);
        assert_eq!(reported.load(Ordering::SeqCst), 1);
    }
}
