//! The WASI view a guest gets: argv, environment and preopened directories.
//!
//! Stdio is inherited from the process: the container runtime has already put
//! containerd's fifos on fds 0, 1 and 2, so the guest writes straight into them
//! and nothing is buffered in the shim when it exits.
//!
//! The network is the container's: the process already sits in the network
//! namespace the spec names (the pod's), so WASI sockets (TCP, UDP, name
//! lookup through the container's /etc/resolv.conf) and outgoing wasi:http
//! reach exactly what a native container in that namespace would, unless the
//! invocation's [`NetworkPolicy`] narrows it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::budget::MemoryBudget;
use crate::network::NetworkPolicy;
use crate::Error;

/// A host directory made visible to the guest under `guest`.
#[derive(Debug, Clone)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    /// Refuse writes in WASI (the guest gets EPERM). The kernel would refuse
    /// them anyway on a read-only mount, but wasmtime-wasi reports the
    /// kernel's EROFS as a bare I/O error, which tells the guest nothing.
    pub read_only: bool,
    /// The directory, opened once before the guest first ran. Every instance
    /// (an exec, each HTTP request) is given this very directory, never
    /// whatever `host` names by then: a guest that can write a parent of
    /// `host` could have put a symlink there.
    pub dir: Option<Arc<OwnedFd>>,
}

impl PartialEq for Preopen {
    fn eq(&self, other: &Self) -> bool {
        let fd = |p: &Preopen| p.dir.as_ref().map(|d| d.as_raw_fd());
        (&self.host, &self.guest, self.read_only, fd(self))
            == (&other.host, &other.guest, other.read_only, fd(other))
    }
}

impl Eq for Preopen {}

/// wasmtime-wasi opens a preopen only by path; an opened directory is named
/// as `.` while it is the process's working directory. The working
/// directory is process-wide, so one preopen at a time.
static CWD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn preopen_held(
    builder: &mut WasiCtxBuilder,
    dir: &OwnedFd,
    guest: &str,
    perms: FsPerms,
) -> std::io::Result<()> {
    let _one_at_a_time = CWD.lock().unwrap_or_else(|e| e.into_inner());
    // O_PATH: a working directory the user may enter but not list is enough.
    let back = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(".")?;
    nix::unistd::fchdir(dir.as_raw_fd())?;
    let opened = builder
        .preopened_dir(".", guest, perms)
        .map(|_| ())
        .map_err(|e| std::io::Error::other(format!("{e:#}")));
    nix::unistd::fchdir(back.as_raw_fd())?;
    opened
}

/// Everything a guest sees of the world besides its stdio.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    /// The container's memory limit on all its linear memories together
    /// (see [`crate::budget`]): a guest past it gets a failed `memory.grow`
    /// (malloc returns NULL) instead of pushing the whole process into the
    /// kernel's OOM killer.
    pub memory: MemoryBudget,
    /// How long one instance may run (a command; each request of a server).
    pub deadline: Option<std::time::Duration>,
    /// What of the container's network the guest may use.
    pub network: NetworkPolicy,
}

impl Invocation {
    pub(crate) fn builder(&self) -> Result<WasiCtxBuilder, Error> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(&self.args)
            .envs(&self.env)
            .inherit_stdio()
            .inherit_network()
            .allow_tcp(self.network.tcp())
            .allow_udp(self.network.tcp())
            .allow_ip_name_lookup(self.network.dns())
            // The guest owns this process: blocking the current thread on
            // filesystem calls is cheaper than handing them to a thread pool.
            .allow_blocking_current_thread(true);
        if let NetworkPolicy::Limited { .. } = &self.network {
            let policy = std::sync::Arc::new(self.network.clone());
            builder.socket_addr_check(move |addr, use_| {
                let allowed = crate::network::allows(&policy, addr, use_);
                Box::pin(async move { allowed })
            });
        }
        for preopen in &self.preopens {
            let perms = if preopen.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            let opened = match &preopen.dir {
                Some(dir) => preopen_held(&mut builder, dir, &preopen.guest, perms),
                None => builder
                    .preopened_dir(&preopen.host, &preopen.guest, perms)
                    .map(|_| ())
                    .map_err(|e| std::io::Error::other(format!("{e:#}"))),
            };
            opened.map_err(|e| {
                Error::Wasi(format!(
                    "cannot preopen {} as {}: {e}",
                    preopen.host.display(),
                    preopen.guest
                ))
            })?;
        }
        Ok(builder)
    }
}
