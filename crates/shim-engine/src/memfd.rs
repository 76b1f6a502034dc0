//! Sealed memfds: how compiled code and guests' bytes cross between the
//! code server and a container's process.
//!
//! A sealed memfd (`F_SEAL_WRITE|GROW|SHRINK|SEAL`) is a copy nobody, not
//! even its holder or root reopening it through /proc, can change: what was
//! verified is what runs (docs/architecture.md, "The node's code cache").

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};

/// A memfd holding everything `from` reads, sealed so nobody can write,
/// grow or shrink it again: what a container maps as its guest's code.
pub fn sealed_copy(from: &mut impl Read) -> io::Result<File> {
    let mut file = code_memfd()?;
    io::copy(from, &mut file)?;
    seal(&file)?;
    // Whoever reads it next starts at the beginning.
    io::Seek::rewind(&mut file)?;
    Ok(file)
}

/// A new memfd that may be sealed and mapped executable.
fn code_memfd() -> io::Result<File> {
    let name = c"wasmtime-code";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) keeps the memfd executable where
    // vm.memfd_noexec would make new ones non-executable; older kernels
    // refuse the flag and make them executable anyway.
    const MFD_EXEC: libc::c_uint = 0x10;
    for flags in [base | MFD_EXEC, base] {
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new fd.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: the descriptor is new and ours alone.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Err(io::Error::other("memfd_create refuses sealable memfds"))
}

/// Seals `file` (a memfd): no write, grow, shrink, or further seal changes.
pub fn seal(file: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl F_ADD_SEALS on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `file` is a memfd sealed as [`seal`] seals it.
pub fn is_sealed(file: &File) -> bool {
    let wanted = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl F_GET_SEALS only reads the descriptor's seals.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & wanted == wanted
}
