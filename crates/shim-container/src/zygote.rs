//! The zygote: a single-threaded process forked from the shim before the
//! shim starts any thread, which forks the create helper for each container.
//!
//! Without it, every create re-executes the shim binary: the dynamic loader
//! maps it and applies its ~65 000 relocations again, and the pages that
//! holds (about 1 MiB of relocated read-only data, plus the allocator's and
//! wasmtime's start-up state) stay private to that container's process for
//! its whole life. A child of the zygote starts with all of that already
//! done and shares it, copy-on-write, with the shim and every other
//! container of the pod; it also inherits a wasmtime engine created once
//! here (the warm engine), so a container's process does no engine set-up.
//!
//! Forking is safe here for the reason the exec'd helper exists: the zygote
//! has exactly one thread, so no lock can be held by a thread that does not
//! come along. It is forked at the very start of `main`, before the shim's
//! runtime or logger exist.
//!
//! Protocol: the shim sends one `SOCK_SEQPACKET` message per create, the JSON
//! [`Request`] with two descriptors: the guest's stdin and the write
//! end of a reply socket. The zygote forks; the child is the create helper
//! (see [`crate::helper`]) and writes its JSON answer to the reply socket.
//! The container's init, cloned by that child, is re-parented to the shim
//! (a child subreaper; the zygote is none) when the child exits.

use std::io::{IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

use crate::helper;
use crate::process::{close_other_descriptors, remember_reply, set_name, stdio_to_null};
use crate::request::{CreateResponse, Request};

/// The largest create request: a JSON spec of mounts and paths, far below this.
const MAX_REQUEST: usize = 1 << 20;

/// The shim's end of the zygote's socket, once [`start`] has forked it.
static ZYGOTE: OnceLock<OwnedFd> = OnceLock::new();

/// The shim's end of the zygote's socket; `None` without a zygote.
pub(crate) fn socket() -> Option<&'static OwnedFd> {
    ZYGOTE.get()
}

/// Forks the zygote. Call first thing in the shim server's `main`, while the
/// process has one thread. Without a zygote (the fork failed), every create
/// falls back to re-executing the binary.
pub fn start() {
    let (shim_end, zygote_end) = match socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("no zygote: socketpair: {e}");
            return;
        }
    };
    // SAFETY: the process is single-threaded (see above); the child only
    // continues in `serve`, which never returns.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(shim_end);
            serve(zygote_end)
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(zygote_end);
            let _ = ZYGOTE.set(shim_end);
        }
        Err(e) => eprintln!("no zygote: fork: {e}"),
    }
}

/// The zygote's life: fork a helper per request until the shim goes away.
fn serve(socket: OwnedFd) -> ! {
    // Die with the shim, and never keep a descriptor of its (the ttrpc
    // listener, containerd's pipes) alive.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets this process's attribute.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() == 1 {
        std::process::exit(0);
    }
    close_other_descriptors(socket.as_raw_fd());
    set_name(c"shim-zygote");
    // Not the first container's bundle, which goes away before the pod does.
    let _ = std::env::set_current_dir("/");
    // The shim's stdio at this point is `start`'s pipe, which containerd
    // reads to its end: holding it would hang every `start`.
    stdio_to_null();
    // Helpers are reaped by the kernel: the zygote never waits for them.
    // SAFETY: sets the disposition of SIGCHLD for this process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    helper::warm_up();
    let mut buffer = vec![0u8; MAX_REQUEST];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let (len, truncated, fds) = match received {
            Ok(msg) if msg.bytes == 0 => std::process::exit(0), // the shim closed its end
            Ok(msg) => {
                let fds: Vec<OwnedFd> = msg
                    .cmsgs()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds,
                        _ => Vec::new(),
                    })
                    // SAFETY: SCM_RIGHTS descriptors are new and ours.
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                    .collect();
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC)
                    || msg.flags.contains(MsgFlags::MSG_CTRUNC);
                (msg.bytes, truncated, fds)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(1),
        };
        let [stdin, reply]: [OwnedFd; 2] = match fds.try_into() {
            Ok(fds) => fds,
            Err(_) => continue, // not from the shim's `create`: nothing to answer to
        };
        let request = if truncated {
            Err("the create request is too large".to_string())
        } else {
            serde_json::from_slice::<Request>(&buffer[..len]).map_err(|e| e.to_string())
        };
        // SAFETY: single-threaded; the child runs the helper and exits.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(socket);
                // SAFETY: back to the default, so libcontainer can wait for
                // the processes it clones.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                remember_reply(reply.as_raw_fd());
                set_name(c"shim-create");
                let response = match request {
                    Ok(request) => helper::run_in_child(&request, stdin),
                    Err(e) => CreateResponse::Failed {
                        error: format!("bad create request: {e}"),
                    },
                };
                let mut reply = UnixStream::from(reply);
                let _ = serde_json::to_writer(&mut reply, &response);
                let _ = reply.flush();
                std::process::exit(0);
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => {}
            Err(e) => {
                let mut reply = UnixStream::from(reply);
                let failed = CreateResponse::Failed {
                    error: format!("cannot fork the create helper: {e}"),
                };
                let _ = serde_json::to_writer(&mut reply, &failed);
            }
        }
    }
}
