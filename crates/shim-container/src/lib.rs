//! Linux isolation for wasm containers.
//!
//! Each container is a real Linux container built by youki's `libcontainer`
//! from the OCI bundle: namespaces, cgroups from `linux.cgroupsPath` and
//! `linux.resources`, `pivot_root` into the rootfs with the spec's mounts.
//! Its init process does not `execve` a binary; it runs the wasm guest
//! through [`executor::WasmExecutor`].
//!
//! Where each step runs (see docs/architecture.md):
//! - create: in the single-threaded [`helper`] process (it forks), itself
//!   forked by the pod's [`zygote`];
//! - start, kill, pids, stats, delete: in the shim, as plain syscalls and
//!   file operations that never fork.
//!
//! libcontainer keeps its state under `<bundle>/libcontainer/<id>`, so it is
//! private to the bundle and goes away with it.

pub mod code;
pub mod confinement;
pub mod executor;
pub mod guest_view;
pub mod helper;
pub mod oom;
pub mod rootfs;
pub mod zygote;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use libcgroups::common::{create_cgroup_manager, CgroupConfig, CgroupManager};
use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::notify_socket::NOTIFY_FILE;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use helper::{CreateRequest, ExecProcess};

/// The name (`comm`) of a wasm container's process, which never `execve`s.
/// A guest cannot change it.
pub const WASM_PROCESS_NAME: &std::ffi::CStr = c"wasm-container";
/// The name of a native container's process from `create` until it
/// `execve`s its program (which renames it).
pub const NATIVE_PROCESS_NAME: &std::ffi::CStr = c"native-init";
pub use libcgroups::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Create(String),
    #[error("{0}")]
    Helper(String),
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error("the container's process has already exited")]
    NotRunning,
    #[error("invalid signal {0}")]
    Signal(i32),
    #[error("{what}: {reason}")]
    Runtime { what: &'static str, reason: String },
}

impl Error {
    fn runtime(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Runtime {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Where libcontainer keeps the state of the containers of `bundle`.
pub(crate) fn state_root(bundle: &Path) -> PathBuf {
    bundle.join("libcontainer")
}

/// A created Linux container whose init process will run a wasm guest.
#[derive(Debug, Clone)]
pub struct LinuxContainer {
    id: String,
    bundle: PathBuf,
    pid: i32,
}

impl LinuxContainer {
    /// Mounts the rootfs and creates the container; the guest is compiled and
    /// linked, and waits for [`LinuxContainer::start`]. `stdin` becomes the guest's stdin.
    pub fn create(request: &CreateRequest, stdin: Option<OwnedFd>) -> Result<Self, Error> {
        let pid = helper::spawn_create(request, stdin)?;
        Ok(Self {
            id: request.id.clone(),
            bundle: request.bundle.clone(),
            pid,
        })
    }

    /// Starts an exec's process in the running container; returns its host PID.
    /// `request` carries the exec's stdio and process (see [`ExecProcess`]).
    pub fn exec(&self, request: &CreateRequest, stdin: Option<OwnedFd>) -> Result<i32, Error> {
        helper::spawn_create(request, stdin)
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
            return self
                .load()?
                .kill(signal, true)
                .map_err(|e| Error::runtime("cannot signal the container's processes", e));
        }
        match kill(Pid::from_raw(self.pid), signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(Error::NotRunning),
            Err(e) => Err(Error::runtime("cannot signal the container", e)),
        }
    }

    fn cgroup(
        &self,
    ) -> Result<impl CgroupManager<Error = libcgroups::common::AnyManagerError>, Error> {
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

    /// Calls `on_oom` whenever the kernel's OOM killer acts in the container's cgroup.
    pub fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<(), Error> {
        let container = self.load()?;
        let config = YoukiConfig::load(&container.root)
            .map_err(|e| Error::runtime("cannot load container config", e))?;
        oom::watch(&config.cgroup_path, on_oom)
    }

    /// The host PIDs of every process in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        let pids = self
            .cgroup()?
            .get_all_pids()
            .map_err(|e| Error::runtime("cannot list the container's processes", e))?;
        Ok(pids.into_iter().map(Pid::as_raw).collect())
    }

    /// CPU, memory and pids usage from the container's cgroup.
    pub fn stats(&self) -> Result<Stats, Error> {
        self.cgroup()?
            .stats()
            .map_err(|e| Error::runtime("cannot read the container's cgroup stats", e))
    }

    /// Removes everything the container owns (see [`cleanup`]).
    pub fn delete(&self) -> Result<(), Error> {
        cleanup(&self.bundle, &self.id)
    }
}

/// Kills what is left of container `id`, removes its cgroup and state, and
/// unmounts its rootfs. Safe to call again, and after a shim crash (the
/// `delete` action of the shim binary calls it).
pub fn cleanup(bundle: &Path, id: &str) -> Result<(), Error> {
    shim_image::validate_id("task", id).map_err(|e| Error::Create(format!("invalid id: {e}")))?;
    let state = cleanup_state(bundle, id);
    rootfs::unmount_rootfs(bundle)?;
    state
}

/// How long cleanup keeps trying: SIGKILLed processes take a moment to die
/// and be reaped (by the shim, or by init after a shim crash), and a cgroup v1
/// directory cannot be removed before they are; libcontainer alone retries
/// for about a second, which a loaded node can outlast.
const CLEANUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) fn cleanup_state(bundle: &Path, id: &str) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + CLEANUP_PATIENCE;
    loop {
        match try_cleanup_state(bundle, id) {
            Err(e) if std::time::Instant::now() < deadline => {
                log::debug!("container {id}: cleanup not done yet ({e}); retrying");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

fn try_cleanup_state(bundle: &Path, id: &str) -> Result<(), Error> {
    let root = state_root(bundle);
    let dir = root.join(id);
    if dir.exists() {
        match Container::load(dir.clone()) {
            Ok(mut container) => container
                .delete(true)
                .map_err(|e| Error::runtime("cannot delete the container", e))?,
            // State written only half-way: there is nothing in it to run hooks with.
            Err(_) => std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::runtime("cannot remove container state", e))?,
        }
    }
    // A create that failed half-way can leave the cgroup without any state
    // that points to it; the spec still names it.
    remove_spec_cgroup(bundle, id)?;
    match std::fs::remove_dir(&root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::runtime("cannot remove container state", e))
        }
        _ => Ok(()),
    }
}

/// Kills whatever is in the cgroup the bundle's spec names and removes it.
fn remove_spec_cgroup(bundle: &Path, id: &str) -> Result<(), Error> {
    let Ok(spec) = oci_spec::runtime::Spec::load(bundle.join("config.json")) else {
        return Ok(()); // no spec, so nothing was created from it
    };
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let cgroup_path = libcontainer::utils::get_cgroup_path(linux.cgroups_path(), id);
    // containerd writes cgroupfs paths absolute ("/k8s.io/<id>") and systemd
    // ones as "slice:prefix:name"; with no state left, the shape tells which.
    let systemd_cgroup = cgroup_path
        .to_str()
        .is_some_and(|p| !p.starts_with('/') && p.split(':').count() == 3);
    let manager = create_cgroup_manager(CgroupConfig {
        cgroup_path,
        systemd_cgroup,
        container_name: id.to_string(),
    })
    .map_err(|e| Error::runtime("cannot open the container's cgroup", e))?;
    manager
        .remove()
        .map_err(|e| Error::runtime("cannot remove the container's cgroup", e))
}
