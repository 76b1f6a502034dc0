//! Small things every process of the shim does to itself: its name, its
//! descriptors, its children, its log.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI32, Ordering};

/// The name (`comm`) of a wasm container's process, which never `execve`s.
/// A guest cannot change it.
pub const WASM_PROCESS_NAME: &std::ffi::CStr = c"wasm-container";
/// The name of a native container's process from `create` until it
/// `execve`s its program (which renames it).
pub const NATIVE_PROCESS_NAME: &std::ffi::CStr = c"native-init";

/// The helper's reply socket, which the container's init inherits when the
/// helper clones it (no `execve` closes it for a wasm guest).
static INHERITED_REPLY: AtomicI32 = AtomicI32::new(-1);

/// In the container's init: closes the reply socket inherited from the
/// helper, so the container holds nothing of the shim's.
pub(crate) fn close_inherited() {
    let fd = INHERITED_REPLY.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the descriptor was the helper's; in the init nothing else uses it.
        unsafe { libc::close(fd) };
    }
}

/// Names this process (`ps -o comm`, /proc/PID/comm): its command line is
/// the shim's, which would otherwise make it look like a second shim.
pub(crate) fn set_name(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Closes every descriptor but stdio and `keep`.
pub(crate) fn close_other_descriptors(keep: RawFd) {
    for fd in open_descriptors()
        .into_iter()
        .filter(|&fd| fd > 2 && fd != keep)
    {
        // SAFETY: closes descriptors nothing in this process uses any more.
        unsafe { libc::close(fd) };
    }
}

/// Every open descriptor of this process.
pub(crate) fn open_descriptors() -> Vec<RawFd> {
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let mut fds: Vec<RawFd> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        // The directory's own descriptor was among them; it is closed now.
        fds.retain(|&fd| {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0
        });
        return fds;
    }
    // SAFETY: getrlimit writes the plain struct it is given.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let open_max = match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur.min(1 << 16) as RawFd,
        _ => 1024,
    };
    (0..open_max)
        // SAFETY: F_GETFD only reads the descriptor's flags.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .collect()
}

/// Points stdin, stdout and stderr at /dev/null: a process of the shim that
/// must not hold what it inherited there (containerd's `start` pipe, the
/// guest's stdin).
pub(crate) fn stdio_to_null() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Remembers the helper's reply socket, which the container's process
/// inherits and closes first thing ([`close_inherited`]).
pub(crate) fn remember_reply(fd: RawFd) {
    INHERITED_REPLY.store(fd, Ordering::Relaxed);
}

/// Logs to the shim log, the fifo `log` in the bundle (the cwd). The logger
/// opens it blocking; check first that containerd is reading, or create
/// would hang.
pub(crate) fn open_shim_log(debug: bool, id: &str) {
    let reader = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    if reader.is_ok() {
        if let Err(e) = containerd_shim::logger::init(debug, "info", "", id) {
            eprintln!("no shim log: {e}");
        }
    }
}

/// Reaps the helper's exited children, waiting up to two seconds for those
/// still dying (libcontainer SIGKILLs them on a failed create); how each ended.
pub(crate) fn reap_children() -> Vec<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut exits = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return exits,
            Ok(status) => exits.push(status),
        }
    }
}
