//! Opening a path inside the host root as the node itself would see it.
//!
//! The host root is a mount of the node's `/`, so its symlinks are the node's:
//! `/usr/local -> /opt/local` or `/etc/containerd -> /data/containerd` name
//! host paths, and followed naively from here they would leave the mount
//! (into the installer's own filesystem) or, relative and with `..`, climb
//! out of it. Every path is resolved with `openat2(RESOLVE_IN_ROOT)` from a
//! descriptor of the host root: the kernel treats that directory as `/` for
//! absolute symlinks and `..`, so nothing outside it can be reached, and
//! magic links (`/proc/<pid>/root`) are refused outright.
//!
//! A kernel without `openat2` (before 5.6; `ENOSYS`) gets the same rules
//! from a walk in user space, one component at a time with `O_NOFOLLOW`,
//! holding a descriptor for each directory so that `..` never goes above
//! the root.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

/// As the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// Opens `path` (relative: normal components only) under `root` with
/// `flags`, symlinks resolved as if `root` were `/`. Never creates.
pub(crate) fn open_in_root(root: BorrowedFd, path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let flags = flags | OFlag::O_CLOEXEC;
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // EAGAIN: a rename or mount raced the lookup and the kernel would not
    // vouch for it; looking up again is what it asks for.
    for _ in 0..16 {
        match openat2(root.as_raw_fd(), path, how) {
            Ok(fd) => return Ok(owned(fd)),
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(Errno::ENOSYS) => {
                log::debug!(
                    "no openat2 in this kernel: resolving {} in user space",
                    path.display()
                );
                return walk_in_root(root, path, flags);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Errno::EAGAIN.into())
}

/// `open_in_root` without `openat2`: the path walked one component at a
/// time, a symlink's target spliced into what is left of the path (an
/// absolute one from the root again), `..` popping a directory held open
/// and stopping at the root.
pub(crate) fn walk_in_root(root: BorrowedFd, path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    // What is left to resolve, next component last.
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path);
    // The directories below the root the walk is in, innermost last.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            dirs.pop();
            continue;
        }
        let at = dirs.last().map_or(root, |d| d.as_fd());
        let fd = owned(openat(
            Some(at.as_raw_fd()),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
        let kind = SFlag::from_bits_truncate(fstat(fd.as_raw_fd())?.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = readlinkat(Some(fd.as_raw_fd()), "")?;
            if Path::new(&target).is_absolute() {
                dirs.clear();
            }
            push_components(&mut todo, Path::new(&target));
            continue;
        }
        if !todo.is_empty() {
            if kind != SFlag::S_IFDIR {
                return Err(Errno::ENOTDIR.into());
            }
            dirs.push(fd);
            continue;
        }
        if flags.contains(OFlag::O_PATH) {
            if flags.contains(OFlag::O_DIRECTORY) && kind != SFlag::S_IFDIR {
                return Err(Errno::ENOTDIR.into());
            }
            return Ok(fd);
        }
        // Opened again for I/O; a symlink swapped in meanwhile is refused.
        return Ok(owned(openat(
            Some(at.as_raw_fd()),
            name.as_os_str(),
            flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )?));
    }
    // The path named a directory already walked (or the root itself).
    let at = dirs.last().map_or(root, |d| d.as_fd());
    Ok(owned(openat(
        Some(at.as_raw_fd()),
        ".",
        flags,
        Mode::empty(),
    )?))
}

/// Puts `path`'s components on `todo` so that its first is popped next.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// Takes ownership of a descriptor nix just returned.
pub(crate) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned by
    // nothing else; from here the OwnedFd closes it, once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A host root with absolute, relative and climbing symlinks, and a
    /// directory outside it that none of them may reach.
    struct Fixture {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
        outside: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("data/bin")).unwrap();
        std::fs::create_dir_all(outside.join("bin")).unwrap();
        std::fs::write(root.join("etc/name"), "inside").unwrap();
        std::fs::write(outside.join("bin/x"), "outside").unwrap();
        std::fs::write(root.join("data/bin/x"), "inside").unwrap();
        // Absolute: the node's /data, never the installer's.
        symlink("/data", root.join("abs")).unwrap();
        // Climbing: `..` stops at the root.
        symlink("../../../../../../data", root.join("etc/up")).unwrap();
        // Absolute to a path that exists only outside.
        symlink(&outside, root.join("escape")).unwrap();
        symlink("/etc/name", root.join("etc/link")).unwrap();
        Fixture {
            _dir: dir,
            root,
            outside,
        }
    }

    fn read_in(
        open: fn(BorrowedFd, &Path, OFlag) -> io::Result<OwnedFd>,
        root: &Path,
        path: &str,
    ) -> io::Result<String> {
        let root = std::fs::File::open(root).unwrap();
        let fd = open(root.as_fd(), Path::new(path), OFlag::O_RDONLY)?;
        std::io::read_to_string(std::fs::File::from(fd))
    }

    #[test]
    fn symlinks_resolve_inside_the_root_with_or_without_openat2() {
        let f = fixture();
        for open in [open_in_root, walk_in_root] {
            let read = |path| read_in(open, &f.root, path);
            assert_eq!(read("etc/name").unwrap(), "inside");
            assert_eq!(read("abs/bin/x").unwrap(), "inside");
            assert_eq!(read("etc/up/bin/x").unwrap(), "inside");
            assert_eq!(read("etc/link").unwrap(), "inside");
            assert_eq!(read("data/bin/../../etc/name").unwrap(), "inside");
            let escaped = read("escape/bin/x");
            assert_eq!(
                escaped.unwrap_err().kind(),
                io::ErrorKind::NotFound,
                "{} is outside",
                f.outside.display()
            );
            let root = std::fs::File::open(&f.root).unwrap();
            let dir = open(root.as_fd(), Path::new(""), OFlag::O_PATH).unwrap();
            assert_eq!(
                fstat(dir.as_raw_fd()).unwrap().st_ino,
                fstat(root.as_raw_fd()).unwrap().st_ino
            );
        }
    }

    #[test]
    fn a_symlink_loop_ends() {
        let f = fixture();
        symlink("/loop", f.root.join("loop")).unwrap();
        for open in [open_in_root, walk_in_root] {
            let err = read_in(open, &f.root, "loop/x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        }
    }

    #[test]
    fn magic_links_are_refused() {
        let root = std::fs::File::open("/").unwrap();
        let err =
            open_in_root(root.as_fd(), Path::new("proc/self/root/etc"), OFlag::O_PATH).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }
}
