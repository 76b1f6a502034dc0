//! What a wasm guest, and the process that runs it, can reach.
//!
//! A preopened directory is a capability to everything beneath it, mounts
//! included: with the container's root preopened, `/proc/self/mem` would be
//! a plain file the guest could open read-write and patch the runtime's own
//! machine code through. So in a wasm container's process (and a wasm
//! exec's), after libcontainer has set the container up and before the
//! guest runs:
//!
//! - [`guest_root`]: the guest's `/` is a private copy of the container's
//!   mount tree from which every kernel pseudo-filesystem (`proc`, `sysfs`,
//!   `devpts`, `mqueue`, `cgroup`, `devtmpfs`, ...) and everything under
//!   `/proc`, `/sys` and `/dev` has been removed, those three covered by
//!   empty read-only directories. The copy is detached: no path leads to it,
//!   only the descriptor. The container's own mount namespace is untouched
//!   (libcontainer, execs and the runtime itself still use /proc).
//! - [`open_preopen`]: each preopen is opened once, inside that copy,
//!   refusing symlinks in a path the pod's annotation lists, and checked by
//!   what the open descriptor is (never a pseudo-filesystem); instances get
//!   that descriptor, not the path (see `shim_engine::Preopen::dir`).
//! - [`InheritedFds`]: every descriptor the process inherited (the helper's
//!   log, sockets, anything libcontainer left) is closed before the guest
//!   runs; what remains is stdio, the preopens, the HTTP listener and the
//!   guest's code.
//! - [`make_undumpable`]: no other process of the pod (a sidecar sharing the
//!   PID namespace) may read its memory or descriptors through `/proc`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Filesystem types a guest never reaches.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "devtmpfs",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "configfs",
    "fusectl",
    "pstore",
    "efivarfs",
    "binfmt_misc",
    "hugetlbfs",
    "nsfs",
    "selinuxfs",
    "autofs",
    "rpc_pipefs",
];

/// Directories a guest never sees into, whatever is mounted there.
pub const HIDDEN_DIRS: &[&str] = &["/proc", "/sys", "/dev"];

/// Whether `fs_type` is a kernel pseudo-filesystem (by name, as mountinfo
/// and the spec's mounts name them).
pub fn is_pseudo_filesystem(fs_type: &str) -> bool {
    PSEUDO_FILESYSTEMS.contains(&fs_type)
}

/// Whether `path` is, or is under, one of [`HIDDEN_DIRS`].
pub fn is_hidden(path: &Path) -> bool {
    HIDDEN_DIRS.iter().any(|dir| path.starts_with(dir))
}

/// Where the copy of the mount tree is attached while it is pruned: the
/// first of these directories the container has (containerd's specs mount
/// all three). Nothing else runs in the container then (its process is
/// being created, or an exec is built under the container's exec lock).
const SCRATCH: [&std::ffi::CStr; 2] = [c"/dev", c"/sys"];

/// The guest's root: a detached copy of the process's mount tree without
/// pseudo-filesystems or anything under /proc, /sys and /dev. Needs
/// `CAP_SYS_ADMIN` over the mount namespace: call it before the
/// capabilities are dropped.
///
/// The work happens in a mount namespace of this process's own, made
/// private first: nothing of it is seen by the container's other processes
/// (a native container's, when this is a wasm exec into it) or propagates to
/// peers of a shared mount, and a process killed half-way leaves nothing
/// behind. Execs into the container join this namespace, a copy of the
/// container's with the same mounts.
pub fn guest_root() -> Result<OwnedFd, String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    let tree = clone_tree(Path::new("/"))?;
    let scratch = SCRATCH
        .into_iter()
        .find(|dir| Path::new(dir.to_str().unwrap_or_default()).is_dir())
        .ok_or("the container has neither /dev nor /sys")?;
    let scratch_path = Path::new(scratch.to_str().unwrap_or_default());
    // Attached for a moment, so its mounts can be named and pruned.
    crate::detached::place(&tree, scratch_path).map_err(|e| format!("move_mount: {e}"))?;
    // Pruned, then copied once more: a detached copy keeps its mounts
    // (unmounting the attached one would take them with it), and only the
    // descriptor leads to it.
    let pruned = prune(scratch_path).and_then(|()| clone_tree(scratch_path));
    umount2(scratch_path, MntFlags::MNT_DETACH).map_err(|e| {
        format!(
            "cannot detach the guest's root from {}: {e}",
            scratch_path.display()
        )
    })?;
    pruned
}

/// A detached copy of the mount tree at `path`, submounts included (an
/// `O_PATH` descriptor of its root).
fn clone_tree(path: &Path) -> Result<OwnedFd, String> {
    crate::detached::clone_tree(path, true).map_err(|e| format!("open_tree: {e}"))
}

/// Removes the pseudo-filesystems and /proc, /sys, /dev from the copy of
/// the mount tree attached at `at`, and covers those three.
fn prune(at: &Path) -> Result<(), String> {
    let mut targets = Vec::new();
    for (mount, inside) in copy_mounts(at)? {
        if is_hidden(&inside) || is_pseudo_filesystem(&mount.fs_type) {
            log::debug!(
                "hidden from the guest: the {} mount at {}",
                mount.fs_type,
                inside.display()
            );
            targets.push(mount.point);
        }
    }
    // Deepest first; a detached parent takes its children with it.
    targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for target in &targets {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(format!("cannot unmount {}: {e}", target.display())),
        }
    }
    for dir in HIDDEN_DIRS {
        let dir = at.join(dir.trim_start_matches('/'));
        if !dir.is_dir() {
            continue;
        }
        mount(
            Some("none"),
            &dir,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=4k,nr_inodes=1,mode=0555"),
        )
        .map_err(|e| format!("cannot cover {}: {e}", dir.display()))?;
    }
    // What could not be unmounted (a mount locked by a user namespace) must
    // at least be under a covered directory: fail rather than show it.
    for (mount, inside) in copy_mounts(at)? {
        if is_pseudo_filesystem(&mount.fs_type) && !is_hidden(&inside) {
            return Err(format!(
                "the {} mount at {} cannot be removed from the guest's view",
                mount.fs_type,
                inside.display()
            ));
        }
    }
    Ok(())
}

/// The mounts of the copy of the mount tree attached at `at` (the last
/// mount there, and what descends from it), each with its path in the copy.
fn copy_mounts(at: &Path) -> Result<Vec<(Mount, PathBuf)>, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let root = mounts
        .iter()
        .rev()
        .find(|m| m.point == at)
        .ok_or("the copy of the mount tree is not where it was attached")?;
    let mut copy = vec![root.id];
    let mut found = Vec::new();
    for mount in mounts.iter().filter(|m| m.id != root.id) {
        if copy.contains(&mount.parent) {
            copy.push(mount.id);
            let inside = Path::new("/").join(mount.point.strip_prefix(at).unwrap_or(&mount.point));
            found.push((mount.clone(), inside));
        }
    }
    Ok(found)
}

/// One line of /proc/self/mountinfo.
#[derive(Clone)]
struct Mount {
    id: u64,
    parent: u64,
    point: PathBuf,
    fs_type: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        Some(Mount {
            id: fields.first()?.parse().ok()?,
            parent: fields.get(1)?.parse().ok()?,
            point: PathBuf::from(unescape(fields.get(4)?)),
            fs_type: fields.get(separator + 1)?.to_string(),
        })
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `statfs` magic numbers of the pseudo-filesystems (linux/magic.h).
const PSEUDO_MAGICS: &[i64] = &[
    0x9fa0,     // PROC_SUPER_MAGIC
    0x62656572, // SYSFS_MAGIC
    0x1cd1,     // DEVPTS_SUPER_MAGIC
    0x19800202, // MQUEUE_MAGIC
    0x27e0eb,   // CGROUP_SUPER_MAGIC
    0x63677270, // CGROUP2_SUPER_MAGIC
    0x73636673, // SECURITYFS_MAGIC
    0x64626720, // DEBUGFS_MAGIC
    0x74726163, // TRACEFS_MAGIC
    0xcafe4a11, // BPF_FS_MAGIC
    0x62656570, // CONFIGFS_MAGIC
    0x6165676c, // PSTOREFS_MAGIC
    0xde5e81e4, // EFIVARFS_MAGIC
    0x42494e4d, // BINFMTFS_MAGIC
    0x6e736673, // NSFS_MAGIC
    0xf97cff8c, // SELINUX_MAGIC
];

/// Whether the open directory `fd` lies on a pseudo-filesystem.
fn on_pseudo_filesystem(fd: RawFd) -> bool {
    // SAFETY: fstatfs fills the zeroed struct it is given.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is a descriptor this process owns.
    if unsafe { libc::fstatfs(fd, &mut stat) } != 0 {
        return true; // cannot tell: refuse
    }
    PSEUDO_MAGICS.contains(&(stat.f_type as i64))
}

/// Opens the directory `path` of the guest's `root` for a preopen, never
/// leaving `root`. `no_symlinks`: refuse a path with a symlink anywhere in
/// it (a path the pod's annotation lists: it must be the directory itself,
/// or `/data` -> `/` would grant the whole root). Refuses a directory on a
/// pseudo-filesystem.
pub fn open_preopen(
    root: &OwnedFd,
    path: &Path,
    no_symlinks: bool,
) -> Result<OwnedFd, std::io::Error> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let c_path = CString::new(relative.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("a NUL byte in the path"))?;
    let mut how = zeroed_open_how();
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT
        | libc::RESOLVE_NO_MAGICLINKS
        | if no_symlinks {
            libc::RESOLVE_NO_SYMLINKS
        } else {
            0
        };
    let fd = loop {
        // SAFETY: openat2 reads the path and the open_how struct of the
        // given size and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            break unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    };
    if on_pseudo_filesystem(fd.as_raw_fd()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it is on a kernel pseudo-filesystem, which a guest never sees",
        ));
    }
    Ok(fd)
}

fn zeroed_open_how() -> libc::open_how {
    // SAFETY: open_how is a plain C struct of integers; zero is valid.
    unsafe { std::mem::zeroed() }
}

/// The descriptors a process held when it became the container's (or an
/// exec's) process: all inherited, none the guest's.
pub struct InheritedFds(Vec<RawFd>);

impl InheritedFds {
    /// Lists them now (from /proc, else by probing).
    pub fn snapshot() -> Self {
        Self(
            crate::process::open_descriptors()
                .into_iter()
                .filter(|&fd| fd > 2)
                .collect(),
        )
    }

    /// Closes one of them early (the caller owned it); it is not closed twice.
    pub fn forget(&mut self, fd: RawFd) {
        self.0.retain(|&f| f != fd);
    }

    /// Closes every one still open, but `keep`. Logging stops first: the
    /// shim's log is one of them.
    pub fn close_all(self, keep: &[RawFd]) {
        log::set_max_level(log::LevelFilter::Off);
        for fd in self.0.into_iter().filter(|fd| !keep.contains(fd)) {
            // SAFETY: descriptors inherited from the helper or libcontainer,
            // which nothing in this process uses any more.
            unsafe { libc::close(fd) };
        }
    }
}

/// Makes the process non-dumpable: only a process with `CAP_SYS_PTRACE`
/// over it (the host's root) may read its memory or its descriptors
/// through /proc.
pub fn make_undumpable() -> Result<(), String> {
    // SAFETY: PR_SET_DUMPABLE only sets this process's attribute.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!(
            "cannot make the process non-dumpable: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_ids_point_and_type() {
        let line = "36 25 0:32 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw";
        let mount = Mount::parse(line).unwrap();
        assert_eq!((mount.id, mount.parent), (36, 25));
        assert_eq!(
            (mount.point.as_path(), mount.fs_type.as_str()),
            (Path::new("/proc"), "proc")
        );
        let line = "40 25 0:5 / /data\\040dir rw shared:2 - tmpfs tmpfs rw";
        assert_eq!(Mount::parse(line).unwrap().point, Path::new("/data dir"));
        assert!(is_hidden(Path::new("/dev/shm")) && !is_hidden(Path::new("/devices")));
        assert!(is_pseudo_filesystem("cgroup2") && !is_pseudo_filesystem("tmpfs"));
    }

    #[test]
    fn a_preopen_on_proc_is_refused_and_a_symlinked_one_when_asked() {
        let root: OwnedFd = std::fs::File::open("/").unwrap().into();
        let err = open_preopen(&root, Path::new("/proc/self"), false).unwrap_err();
        assert!(err.to_string().contains("pseudo-filesystem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_preopen(&root, &link, false).is_ok());
        assert!(open_preopen(&root, &link, true).is_err());
        assert!(
            open_preopen(&root, &link.join("."), true).is_err(),
            "a symlink mid-path"
        );
        assert!(open_preopen(&root, &real, true).is_ok());
        // An absolute symlink resolves inside the root it is opened in.
        let inner: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        std::os::unix::fs::symlink("/real", dir.path().join("abs")).unwrap();
        assert!(open_preopen(&inner, Path::new("/abs"), false).is_ok());
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        assert!(
            open_preopen(&inner, Path::new("/etc"), false).is_err(),
            "no /etc in there"
        );
    }
}
