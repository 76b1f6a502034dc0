//! The node's code cache, served from outside the container.
//!
//! Whoever holds the cache directory or its HMAC key can forge code that
//! every pod on the node would load, and a directory descriptor of the host
//! is a way out of any container (`openat(fd, "../..")`). So neither ever
//! enters a container's process. The create helper forks a *code server*
//! (comm `shim-code`) before libcontainer clones the container's process;
//! only the server opens the cache and reads the key, after the fork, so the
//! container's process never has them even in its memory. The container's
//! process keeps one end of a socket pair and asks ([`RemoteCache`], the
//! engine's [`CodeSource`]): it sends the guest's bytes as a sealed memfd,
//! and receives the verified native code as a sealed memfd, which it maps.
//!
//! The server joins the cgroups of the process that asks (its credentials
//! come with the request, translated by the kernel), so a compile is charged
//! to the container's memory and CPU limits, as it was when the container's
//! process compiled. It serves until the container's process closes its end
//! (right after the guest is prepared), then exits; it is a child of the
//! helper and, once the helper has exited, of the shim, which reaps it.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixCredentials,
};
use serde::{Deserialize, Serialize};
use shim_engine::{Artifact, CodeSource, Engine, Kind, NodeConfig, Outcome};

/// The server's answer to one request.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// The code, as the one descriptor of the message.
    Code(Outcome),
    /// The guest does not compile.
    Invalid(String),
    /// The cache cannot serve; the container's process compiles for itself.
    Failed(String),
}

/// The largest reply: a compiler's error message.
const MAX_REPLY: usize = 1 << 20;

/// What the code server opens, and for whom it logs.
struct Server<'a> {
    /// The node's cache: [`NodeConfig::root`], bounded to its limit.
    root: &'a Path,
    limit: u64,
    /// The container whose log lines the server writes, and at which level.
    id: &'a str,
    debug: bool,
}

/// Forks the code server for one container's (or exec's) process, `id`,
/// logging at debug level if `debug`; returns the end that process keeps.
/// `None` (the node's cache is off, or the fork failed): the process
/// compiles for itself.
///
/// Call only while the process is single-threaded (the create helper).
pub fn spawn(
    node: &NodeConfig,
    id: &str,
    debug: bool,
    engine: Option<&Engine>,
) -> Option<RemoteCache> {
    let config = Server {
        root: node.root.as_deref()?,
        limit: node.limit,
        id,
        debug,
    };
    let (container_end, server_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| log::warn!("no code cache: socketpair: {e}"))
    .ok()?;
    // SAFETY: the helper is single-threaded; the child only serves and exits.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(container_end);
            serve(server_end, &config, engine)
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(server_end);
            Some(RemoteCache {
                socket: Mutex::new(Some(container_end)),
            })
        }
        Err(e) => {
            log::warn!("no code cache: cannot fork its server: {e}");
            None
        }
    }
}

/// The container's side: asks the code server. The socket is the only
/// thing of the cache the container's process ever holds.
#[derive(Debug)]
pub struct RemoteCache {
    socket: Mutex<Option<OwnedFd>>,
}

impl RemoteCache {
    /// The socket's descriptor number, while it is open.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.lock().as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Hangs up: the server exits.
    pub fn close(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OwnedFd>> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CodeSource for RemoteCache {
    fn artifact(
        &self,
        _engine: &wasmtime::Engine,
        kind: Kind,
        bytes: &[u8],
    ) -> std::io::Result<Artifact> {
        let guard = self.lock();
        let socket = guard
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the code server is gone"))?;
        let wasm = shim_engine::memfd::sealed_copy(&mut &bytes[..])?;
        let kind = format!("{kind:?}");
        let credentials = UnixCredentials::new();
        sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(kind.as_bytes())],
            &[
                ControlMessage::ScmRights(&[wasm.as_raw_fd()]),
                ControlMessage::ScmCredentials(&credentials),
            ],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        drop(wasm);
        let mut buffer = vec![0u8; MAX_REPLY];
        let (reply, mut fds, _) = receive(socket.as_raw_fd(), &mut buffer)?;
        let reply: Reply = serde_json::from_slice(reply)
            .map_err(|_| std::io::Error::other("the code server ended without an answer"))?;
        match reply {
            Reply::Code(outcome) => {
                let code = fds
                    .pop()
                    .map(File::from)
                    .ok_or_else(|| std::io::Error::other("the code server sent no code"))?;
                // Only a sealed memfd: code nobody can change under the guest.
                if !shim_engine::memfd::is_sealed(&code) {
                    return Err(std::io::Error::other(
                        "the code server's code is not sealed",
                    ));
                }
                Ok(Artifact::Code(code, outcome))
            }
            Reply::Invalid(reason) => Ok(Artifact::Invalid(reason)),
            Reply::Failed(reason) => Err(std::io::Error::other(reason)),
        }
    }
}

/// One message: its bytes, the descriptors that came with it, and its
/// sender's pid (in this process's PID namespace) when it sent credentials.
fn receive(
    socket: RawFd,
    buffer: &mut [u8],
) -> std::io::Result<(&[u8], Vec<OwnedFd>, Option<i32>)> {
    let mut space = nix::cmsg_space!([RawFd; 1], libc::ucred);
    let (len, fds, credentials) = {
        let mut iov = [IoSliceMut::new(buffer)];
        let msg = loop {
            match recvmsg::<()>(
                socket,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other?,
            }
        };
        let mut fds = Vec::new();
        let mut credentials = None;
        for cmsg in msg.cmsgs()? {
            match cmsg {
                ControlMessageOwned::ScmRights(received) => fds.extend(
                    received
                        .into_iter()
                        // SAFETY: SCM_RIGHTS descriptors are new and ours.
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                ),
                ControlMessageOwned::ScmCredentials(c) => credentials = Some(c.pid()),
                _ => {}
            }
        }
        (msg.bytes, fds, credentials)
    };
    Ok((&buffer[..len], fds, credentials))
}

/// The server's life: answer requests until the container's process hangs up.
fn serve(socket: OwnedFd, config: &Server, engine: Option<&Engine>) -> ! {
    crate::process::set_name(c"shim-code");
    crate::process::close_other_descriptors(socket.as_raw_fd());
    crate::process::stdio_to_null();
    crate::process::open_shim_log(config.debug, config.id);
    let _ = setsockopt(&socket, sockopt::PassCred, &true);
    let engine = match engine {
        Some(engine) => Ok(engine.clone()),
        None => shim_engine::EngineOptions::from_env().and_then(|o| Engine::new(&o)),
    };
    let cache = shim_engine::Cache::open(config.root, config.limit);
    let mut joined = false;
    let mut buffer = vec![0u8; 64];
    loop {
        let (request, fds, sender) = match receive(socket.as_raw_fd(), &mut buffer) {
            Ok((&[], ..)) => std::process::exit(0),
            Ok((request, fds, sender)) => {
                (String::from_utf8_lossy(request).into_owned(), fds, sender)
            }
            Err(_) => std::process::exit(0),
        };
        if !joined {
            joined = true;
            if let Some(pid) = sender {
                if let Err(e) = join_cgroups_of(pid) {
                    log::warn!("the code server stays outside the container's cgroup: {e}");
                }
            }
        }
        let (reply, code) = match (&engine, &cache) {
            (Err(e), _) => (Reply::Failed(format!("no engine: {e}")), None),
            (_, Err(e)) => (
                Reply::Failed(format!("cannot open {}: {e}", config.root.display())),
                None,
            ),
            (Ok(engine), Ok(cache)) => answer(cache, engine, &request, fds),
        };
        let json = serde_json::to_vec(&reply).unwrap_or_default();
        let fds: Vec<RawFd> = code.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsgs: &[ControlMessage] = if fds.is_empty() {
            &[]
        } else {
            &[ControlMessage::ScmRights(&fds)]
        };
        if sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(&json)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_err()
        {
            std::process::exit(0);
        }
    }
}

/// Looks up or compiles the guest sent as the (sealed memfd) descriptor.
fn answer(
    cache: &shim_engine::Cache,
    engine: &Engine,
    kind: &str,
    fds: Vec<OwnedFd>,
) -> (Reply, Option<File>) {
    let Some(wasm) = fds.into_iter().next().map(File::from) else {
        return (Reply::Failed("no guest was sent".into()), None);
    };
    // Mapped, not copied: a large guest would count twice against the
    // container's memory limit. Sealed, so it cannot shrink under the map.
    if !shim_engine::memfd::is_sealed(&wasm) {
        return (Reply::Failed("the guest was not sent sealed".into()), None);
    }
    let bytes = match Mapped::new(&wasm) {
        Ok(bytes) => bytes,
        Err(e) => return (Reply::Failed(format!("cannot read the guest: {e}")), None),
    };
    drop(wasm);
    let bytes = bytes.as_slice();
    // The kind is checked here again: the bytes decide, not the request.
    let kind = match Kind::detect("the guest", bytes) {
        Ok(detected) if format!("{detected:?}") == kind => detected,
        Ok(_) => {
            return (
                Reply::Failed("the guest's kind does not match".into()),
                None,
            )
        }
        Err(e) => return (Reply::Invalid(e.to_string()), None),
    };
    match cache.artifact(engine.wasmtime(), kind, bytes) {
        Ok(Artifact::Code(file, outcome)) => (Reply::Code(outcome), Some(file)),
        Ok(Artifact::Invalid(reason)) => (Reply::Invalid(reason), None),
        Err(e) => (Reply::Failed(e.to_string()), None),
    }
}

/// A read-only private mapping of a whole (sealed) file.
struct Mapped {
    at: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &File) -> std::io::Result<Mapped> {
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Ok(Mapped {
                at: std::ptr::null_mut(),
                len,
            });
        }
        // SAFETY: a new read-only mapping of `len` bytes of a file we hold;
        // the kernel picks the address.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { at, len })
    }

    fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `len` readable bytes at `at`, mapped until `self` drops;
        // the file is sealed, so they stay there.
        unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `new` made.
            unsafe { libc::munmap(self.at, self.len) };
        }
    }
}

/// Moves this process into every cgroup of process `pid`: cgroup v2, and
/// each hierarchy of v1, wherever the host mounts them.
fn join_cgroups_of(pid: i32) -> Result<(), String> {
    let memberships = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read the cgroups of {pid}: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let me = std::process::id().to_string();
    let mut failed = Vec::new();
    for line in memberships.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(mount) = hierarchy_mount(&mountinfo, controllers) else {
            continue;
        };
        // Every hierarchy it can: one that fails leaves the others joined.
        let procs = mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, &me) {
            failed.push(format!("{}: {e}", procs.display()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Where the hierarchy of `controllers` (a line of /proc/PID/cgroup: empty
/// for v2, `cpu,cpuacct` or `name=systemd` for v1) is mounted, at its root.
fn hierarchy_mount(mountinfo: &str, controllers: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        let fs_type = fields.get(separator + 1)?;
        let options = fields.get(separator + 3)?;
        if *root != "/" {
            return None;
        }
        let matches = match *fs_type {
            "cgroup2" => controllers.is_empty(),
            "cgroup" if !controllers.is_empty() => {
                let mounted: Vec<&str> = options.split(',').collect();
                controllers.split(',').all(|c| mounted.contains(&c))
            }
            _ => false,
        };
        matches.then(|| Path::new(point).to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hierarchy_is_found_where_it_is_mounted() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 /inner /elsewhere rw - cgroup cgroup rw,memory";
        assert_eq!(
            hierarchy_mount(mountinfo, ""),
            Some("/sys/fs/cgroup/unified".into())
        );
        assert_eq!(
            hierarchy_mount(mountinfo, "cpu,cpuacct"),
            Some("/sys/fs/cgroup/cpu,cpuacct".into())
        );
        assert_eq!(
            hierarchy_mount(mountinfo, "name=systemd"),
            Some("/sys/fs/cgroup/systemd".into())
        );
        assert_eq!(
            hierarchy_mount(mountinfo, "memory"),
            None,
            "not at its root"
        );
    }
}
