//! The shim's side of a create or an exec: has the pod's zygote fork a
//! create helper ([`crate::zygote`]), or, without a zygote, runs the shim
//! binary as the helper ([`crate::helper::main`]), and reads its answer.

use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::helper::HELPER_ARG;
use crate::request::{parse_response, Request};
use crate::Error;

/// Shim side: has the pod's zygote fork a helper (or, without a zygote,
/// runs the helper binary) and returns the container init's host PID.
pub(crate) fn spawn(request: &Request, stdin: Option<OwnedFd>) -> Result<i32, Error> {
    request.check_ids().map_err(Error::Create)?;
    if let Some(result) = through_zygote(request, &stdin) {
        return result;
    }
    let stdin = stdin.map_or_else(Stdio::null, Stdio::from);
    let json = serde_json::to_string(request).map_err(|e| Error::Helper(e.to_string()))?;
    let mut child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(json)
        .current_dir(request.bundle())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Helper(format!("cannot start the create helper: {e}")))?;
    // The helper is reaped by the shim's SIGCHLD reaper; its answer is on stdout.
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    parse_response(
        &out,
        &format!("the create helper ended without an answer: {}", err.trim()),
    )
}

/// Shim side: has the zygote fork a create helper for `request`; `None` if
/// there is no zygote (the caller then executes the helper itself).
fn through_zygote(request: &Request, stdin: &Option<OwnedFd>) -> Option<Result<i32, Error>> {
    let zygote = crate::zygote::socket()?;
    let json = serde_json::to_vec(request).ok()?;
    let stdin = match stdin {
        Some(fd) => fd.try_clone().ok()?,
        None => std::fs::File::open("/dev/null").ok()?.into(),
    };
    let (mut reply, child_end) = UnixStream::pair().ok()?;
    let fds = [stdin.as_raw_fd(), child_end.as_raw_fd()];
    let sent = sendmsg::<()>(
        zygote.as_raw_fd(),
        &[IoSlice::new(&json)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    if let Err(e) = sent {
        log::warn!("the zygote is gone ({e}); creating through a new process");
        return None;
    }
    // Only the helper holds the write end now: its exit ends the answer.
    drop(child_end);
    drop(stdin);
    // One JSON value, read to its end and no further: the container's init
    // (cloned by the helper) holds the write end too, until it closes it.
    let answer = serde_json::Deserializer::from_reader(&mut reply)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .map(|value| value.to_string())
        .unwrap_or_default();
    Some(parse_response(
        &answer,
        "the zygote's create helper ended without an answer",
    ))
}
