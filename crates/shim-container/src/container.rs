//! The shim's handle on a created container: start, signal, stats and
//! delete it, with plain syscalls and file operations that never fork.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, FreezerState,
};
use libcgroups::v2;
use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::notify_socket::NOTIFY_FILE;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use shim_engine::budget::WasmMetrics;
use shim_engine::MemoryBudget;

use crate::request::{CreateRequest, ExecProcess, ExecRequest, Request};
use crate::state::{budget_file, cleanup, state_root};
use crate::{cgroup, oom, spawn, Error, Stats};

/// A created Linux container whose init process will run a wasm guest.
#[derive(Debug, Clone)]
pub struct LinuxContainer {
    id: String,
    bundle: PathBuf,
    pid: i32,
    debug: bool,
    /// Its memory cgroup, where its process was put (whichever driver put it).
    memory_cgroup: Option<PathBuf>,
    /// Whether that is a cgroup v2 directory (a unified host).
    unified: bool,
    /// Whether systemd made its cgroup (the systemd driver, on cgroup v2):
    /// libcontainer then reaches it through systemd ([`LinuxContainer::delete`]).
    systemd: bool,
    oom: Arc<OnceLock<Arc<oom::Watch>>>,
    /// Whether containerd had the shim send its init a SIGKILL: one it dies
    /// of otherwise came from the kernel (or from outside containerd).
    sigkill_sent: Arc<AtomicBool>,
    /// The memory budget its guests' linear memories draw on, shared with
    /// its processes (`shim_engine::budget`); `None` if it could not be
    /// mapped.
    memory: Option<MemoryBudget>,
    /// Held while resources change: one update at a time.
    updating: Arc<Mutex<()>>,
}

impl LinuxContainer {
    /// Mounts the rootfs and creates the container; the guest is compiled and
    /// linked, and waits for [`LinuxContainer::start`]. `stdin` becomes the guest's stdin.
    pub fn create(request: &CreateRequest, stdin: Option<OwnedFd>) -> Result<Self, Error> {
        let pid = spawn::spawn(&Request::Create(request.clone()), stdin)?;
        let unified = matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified));
        Ok(Self {
            id: request.id.clone(),
            bundle: request.bundle.clone(),
            pid,
            debug: request.debug,
            // Read while the process waits to be started, so it is there.
            memory_cgroup: cgroup::memory_dir_of(pid),
            unified,
            systemd: unified && request.systemd_cgroup,
            oom: Arc::default(),
            sigkill_sent: Arc::default(),
            memory: MemoryBudget::open(&budget_file(&request.bundle, &request.id))
                .inspect_err(|e| {
                    log::warn!(
                        "container {}: cannot map its memory budget: {e}",
                        request.id
                    )
                })
                .ok(),
            updating: Arc::default(),
        })
    }

    /// Starts an exec's process in the running container; returns its host PID.
    pub fn exec(&self, process: &ExecProcess, stdin: Option<OwnedFd>) -> Result<i32, Error> {
        let request = ExecRequest {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            debug: self.debug,
            native_allowed: self.runs_native(),
            process: process.clone(),
        };
        spawn::spawn(&Request::Exec(request), stdin)
    }

    /// Whether the container's process runs a native program: the executor
    /// names a wasm container's process `wasm-container` before `create`
    /// returns, and it never `execve`s, so it keeps that name (a guest
    /// cannot change it); a native one is renamed then and again by its
    /// program. Its executable would not do: a native container's process
    /// is still the shim's from `start` until it `execve`s. A process that
    /// is gone gets the narrower answer.
    pub fn runs_native(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/comm", self.pid)) {
            Ok(comm) => crate::WASM_PROCESS_NAME.to_str() != Ok(comm.trim_end()),
            Err(_) => false,
        }
    }

    /// The host PID of the container's init process (the guest).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn dir(&self) -> PathBuf {
        state_root(&self.bundle).join(&self.id)
    }

    fn load(&self) -> Result<Container, Error> {
        // libcontainer refreshes the status from /proc/<pid>: it opens the
        // process, then reads its stat. A guest that exits and is reaped in
        // between (a short one, right after start) fails the load with
        // "File not found: /proc/<pid>/stat"; once it is gone, the next load
        // sees it stopped. So a failed load is tried again, a few times.
        let mut tries = 0;
        loop {
            match Container::load(self.dir()) {
                Ok(container) => return Ok(container),
                Err(_) if tries < 3 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(tries));
                }
                Err(e) => return Err(Error::runtime("cannot load container state", e)),
            }
        }
    }

    /// Releases the guest: it is waiting on libcontainer's notify socket.
    pub fn start(&self) -> Result<(), Error> {
        // libcontainer's own `start` chdirs to reach a socket path that may be
        // longer than sun_path allows; chdir is process-wide and the shim is
        // multi-threaded, so the socket is reached through a directory fd instead.
        let dir =
            File::open(self.dir()).map_err(|e| Error::runtime("cannot open container state", e))?;
        let socket = format!("/proc/self/fd/{}/{NOTIFY_FILE}", dir.as_raw_fd());
        UnixStream::connect(&socket)
            .and_then(|mut stream| stream.write_all(b"start container"))
            .map_err(|e| Error::runtime("cannot signal the container to start", e))?;
        let mut container = self.load()?;
        container
            .set_status(ContainerStatus::Running)
            .save()
            .map_err(|e| Error::runtime("cannot save container state", e))?;
        let config = YoukiConfig::load(&container.root)
            .map_err(|e| Error::runtime("cannot load container config", e))?;
        if let Some(hooks) = config.hooks.as_ref() {
            libcontainer::hooks::run_hooks(
                hooks.poststart().as_ref(),
                Some(&container.state),
                Some(&container.root),
                None,
                None,
            )
            .map_err(|e| Error::runtime("poststart hook failed", e))?;
        }
        Ok(())
    }

    /// Sends `signal` to the guest, or to every process in its cgroup with `all`.
    pub fn kill(&self, signal: i32, all: bool) -> Result<(), Error> {
        let signal = Signal::try_from(signal).map_err(|_| Error::Signal(signal))?;
        if all {
            if signal == Signal::SIGKILL {
                self.sigkill_sent.store(true, Ordering::SeqCst);
            }
            if let Some(manager) = self.v2_cgroup()? {
                // systemd removes a scope's cgroup with its last process.
                if self.cgroup_gone() {
                    return Ok(());
                }
                return signal_all(&manager, signal);
            }
            return self
                .load()?
                .kill(signal, true)
                .map_err(|e| Error::runtime("cannot signal the container's processes", e));
        }
        self.signal(self.pid, signal as i32)
    }

    /// Sends `signal` to one process of the container (its init or an
    /// exec's) by host PID; one that is gone is [`Error::NotRunning`].
    pub fn signal(&self, pid: i32, signal: i32) -> Result<(), Error> {
        let signal = Signal::try_from(signal).map_err(|_| Error::Signal(signal))?;
        if signal == Signal::SIGKILL && pid == self.pid {
            self.sigkill_sent.store(true, Ordering::SeqCst);
        }
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(Error::NotRunning),
            Err(e) => Err(Error::runtime("cannot signal the process", e)),
        }
    }

    /// On cgroup v2, libcgroups' v2 manager over the directory the
    /// container's process is in, whichever driver made it: no connection to
    /// systemd (libcgroups 0.7's systemd client leaks one each, see
    /// [`cgroup`], and the shim lives as long as its pod).
    fn v2_cgroup(&self) -> Result<Option<v2::manager::Manager>, Error> {
        let Some(dir) = self.memory_cgroup.as_ref().filter(|_| self.unified) else {
            return Ok(None);
        };
        let root = Path::new(cgroup::ROOT);
        let relative = dir.strip_prefix(root).unwrap_or(dir);
        v2::manager::Manager::new(root.to_path_buf(), relative.to_path_buf())
            .map(Some)
            .map_err(|e| Error::runtime("cannot open the container's cgroup", e))
    }

    fn cgroup(&self) -> Result<AnyCgroupManager, Error> {
        if let Some(manager) = self.v2_cgroup()? {
            return Ok(AnyCgroupManager::V2(manager));
        }
        let container = self.load()?;
        let config = YoukiConfig::load(&container.root)
            .map_err(|e| Error::runtime("cannot load container config", e))?;
        create_cgroup_manager(CgroupConfig {
            cgroup_path: config.cgroup_path,
            systemd_cgroup: container.systemd(),
            container_name: self.id.clone(),
        })
        .map_err(|e| Error::runtime("cannot open the container's cgroup", e))
    }

    /// Freezes every process in the container's cgroup (Pause), or thaws
    /// them (Resume): the v1 freezer, v2's `cgroup.freeze`.
    pub fn freeze(&self, frozen: bool) -> Result<(), Error> {
        let (state, what) = if frozen {
            (FreezerState::Frozen, "cannot pause the container")
        } else {
            (FreezerState::Thawed, "cannot resume the container")
        };
        self.cgroup()?
            .freeze(state)
            .map_err(|e| Error::runtime(what, e))
    }

    /// Changes the container's resources (containerd's Update, which CRI's
    /// UpdateContainerResources, an in-place pod resize, calls with the
    /// container's whole `linux.resources`): its cgroup's limits, whichever
    /// driver made it, and the memory limit of its guests' linear memories.
    /// A memory limit below what those hold is refused, and nothing changes.
    /// Devices are left as they are, as `runc update` leaves them.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let mut resources = resources.clone();
        resources.set_devices(None);
        // `None`: unchanged; `Some(None)`: no limit (a negative one).
        let memory = resources
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .map(|limit| u64::try_from(limit).ok());
        let budget = self.memory.as_ref();
        let before = budget.map(MemoryBudget::limit);
        let lowered = match (memory, before) {
            (Some(new), Some(old)) => new.unwrap_or(u64::MAX) < old.unwrap_or(u64::MAX),
            _ => false,
        };
        // Lowered: the guests first, which may refuse; raised: the cgroup
        // first, so no guest grows past the limit the kernel still has.
        if let (true, Some(budget), Some(Some(limit))) = (lowered, budget, memory) {
            budget.set_limit(Some(limit)).map_err(|held| {
                Error::Resources(format!(
                    "cannot lower the memory limit to {}: its wasm guests hold {} of                      linear memory",
                    mib(limit),
                    mib(held.held)
                ))
            })?;
        }
        let applied = self.cgroup().and_then(|cgroup| {
            cgroup
                .apply(&ControllerOpt {
                    resources: &resources,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                })
                .map_err(|e| Error::runtime("cannot update the container's cgroup", e))
        });
        match (applied, budget, memory) {
            (Err(e), Some(budget), _) => {
                if lowered {
                    let _ = budget.set_limit(before.flatten());
                }
                Err(e)
            }
            (Err(e), None, _) => Err(e),
            (Ok(()), Some(budget), Some(limit)) if !lowered => {
                // Raising never fails.
                let _ = budget.set_limit(limit);
                Ok(())
            }
            (Ok(()), _, _) => Ok(()),
        }
    }

    /// The container's wasm numbers (its task metrics); `None` for a
    /// native container, whose process runs no guest.
    pub fn wasm_metrics(&self) -> Option<WasmMetrics> {
        if self.runs_native() {
            return None;
        }
        self.memory.as_ref().map(MemoryBudget::metrics)
    }

    /// Calls `on_oom` whenever the kernel's OOM killer acts in the container's cgroup.
    pub fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<(), Error> {
        let dir = self.memory_cgroup.as_ref().ok_or_else(|| {
            Error::runtime(
                "cannot watch for OOM kills",
                "the container's cgroup is unknown",
            )
        })?;
        let watch = oom::watch(dir, on_oom)?;
        let _ = self.oom.set(watch);
        Ok(())
    }

    /// Reports, through [`LinuxContainer::watch_oom`]'s `on_oom`, a kill the
    /// kernel counted but has not told the watcher of yet: called with the
    /// init's exit status before its exit is published, so TaskOOM comes
    /// first (see [`oom::Watch::check_exit`]).
    pub fn check_oom(&self, exit_status: u32) {
        let sigkilled = exit_status == 128 + Signal::SIGKILL as u32;
        if let Some(watch) = self.oom.get() {
            watch.check_exit(sigkilled && !self.sigkill_sent.load(Ordering::SeqCst));
        }
    }

    /// Whether the container's cgroup is known and gone: on cgroup v2
    /// systemd removes a scope's cgroup once its last process has exited.
    fn cgroup_gone(&self) -> bool {
        self.memory_cgroup.as_ref().is_some_and(|dir| !dir.exists())
    }

    /// The host PIDs of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        if self.cgroup_gone() {
            return Ok(Vec::new());
        }
        let pids = self
            .cgroup()?
            .get_all_pids()
            .map_err(|e| Error::runtime("cannot list the container's processes", e))?;
        Ok(pids.into_iter().map(Pid::as_raw).collect())
    }

    /// CPU, memory and pids usage from the container's cgroup: on cgroup v2
    /// from the controllers it has ([`cgroup::v2_stats`]), on v1 through
    /// libcgroups.
    pub fn stats(&self) -> Result<Stats, Error> {
        match &self.memory_cgroup {
            Some(dir) if self.unified => cgroup::v2_stats(dir)
                .map_err(|e| Error::runtime("cannot read the container's cgroup stats", e)),
            _ => self
                .cgroup()?
                .stats()
                .map_err(|e| Error::runtime("cannot read the container's cgroup stats", e)),
        }
    }

    /// Removes everything the container owns (see [`cleanup`]); when
    /// systemd made its cgroup, in a create helper rather than in the shim
    /// (libcontainer reaches systemd there: see [`cgroup`]).
    pub fn delete(&self) -> Result<(), Error> {
        if !self.systemd {
            return cleanup(&self.bundle, &self.id);
        }
        let request = Request::Cleanup {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
        };
        spawn::spawn(&request, None).map(drop).map_err(|e| match e {
            Error::Create(reason) => Error::runtime("cannot delete the container", reason),
            other => other,
        })
    }
}

/// Bytes as MiB, to one decimal, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `signal` to every process in the cgroup, frozen meanwhile so none forks
/// past it: what libcontainer's kill of all processes does.
fn signal_all(manager: &v2::manager::Manager, signal: Signal) -> Result<(), Error> {
    let frozen = manager.freeze(FreezerState::Frozen);
    let pids = manager.get_all_pids();
    let sent = pids
        .map_err(|e| Error::runtime("cannot list the container's processes", e))
        .and_then(|pids| {
            pids.into_iter()
                .try_for_each(|pid| match kill(pid, signal) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                    Err(e) => Err(Error::runtime("cannot signal the container's processes", e)),
                })
        });
    if frozen.is_ok() {
        if let Err(e) = manager.freeze(FreezerState::Thawed) {
            log::warn!("cannot thaw the container's cgroup: {e}");
        }
    }
    sent
}
