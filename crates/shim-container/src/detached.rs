//! Detached mounts (the kernel's new mount API): a copy of a mount tree
//! held only by a descriptor (`open_tree`), its attributes set while no
//! path leads to it (`mount_setattr`), then placed (`move_mount`). Used for
//! the guest's pruned root ([`crate::guest_view`]), the bind mounts of a pod
//! with its own user namespace ([`crate::userns`]) and idmapped layers
//! ([`crate::idmap`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

/// A detached copy of the mount at `path`; with `recursive`, its submounts too.
pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the path and returns a new descriptor or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as i32) })
}

/// Sets `attr` on the detached `tree`; with `recursive`, on its submounts too.
pub fn set_attributes(tree: &OwnedFd, attr: &libc::mount_attr, recursive: bool) -> io::Result<()> {
    let mut at = libc::AT_EMPTY_PATH;
    if recursive {
        at |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr on our tree with an attr of its size.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if set < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts the detached `tree` on `at`, which must exist.
pub fn place(tree: &OwnedFd, at: &Path) -> io::Result<()> {
    let target = c_path(at)?;
    // SAFETY: move_mount reads the path; the descriptor is ours.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
