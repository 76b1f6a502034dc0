//! Why a create failed, in words a user can act on. libcontainer's errors
//! from the container's process lose their cause on the way (its init sends
//! only the outermost message); what the helper can still tell is added here.

// The messages of libcontainer 0.7 that are matched below. The container's
// process reports its failure across a process boundary as text, so there is
// no typed error to match; `libcontainers_messages_are_the_ones_matched`
// fails when libcontainer words them differently.
/// The container's process died before it was ready.
const INIT_DIED: &str = "waiting for init ready";
/// libcontainer could not set up the root (a mount).
const ROOTFS_FAILED: &str = "failed to prepare rootfs";
/// libcontainer appends its own cleanup's failure after this.
const CLEANUP_FAILED: &str = ". error during cleanup: ";

/// libcontainer wraps the init process's error (ours, from the executor's
/// `validate`) in channel errors; the innermost message is the useful one.
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut messages = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        messages.push(e.to_string());
        source = e.source();
    }
    messages.dedup();
    messages.join(": ")
}

/// libcontainer appends its own cleanup's failure to a create error (". error
/// during cleanup: ..."): typically a cgroup v1 directory it cannot remove
/// while the container's process is an unreaped zombie. Once the helper's
/// cleanup, which reaps first, has removed everything, that is only noise
/// that hides the real error.
pub(crate) fn without_cleanup_complaint(error: String) -> String {
    match error.split_once(CLEANUP_FAILED) {
        Some((cause, _)) => cause.to_string(),
        None => error,
    }
}

/// libcontainer's errors from the container's process lose their cause on
/// the way: its init sends only the outermost message ("failed to prepare
/// rootfs"), and a process that dies sends nothing ("waiting for init ready").
/// Adds what can be told from here: the mount that cannot work, or how the
/// process died (`exits`: the statuses of the helper's reaped children).
pub(crate) fn explain(
    error: String,
    spec: Option<&oci_spec::runtime::Spec>,
    exits: &[nix::sys::wait::WaitStatus],
) -> String {
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    if error.contains(ROOTFS_FAILED) {
        return match spec.and_then(mount_problem) {
            Some(cause) => format!("{error}: {cause}"),
            None => format!("{error} (one of the spec's mounts could not be set up)"),
        };
    }
    if !error.contains(INIT_DIED) {
        return error;
    }
    // The process died before it could report anything; libcontainer kills
    // what is left only after that, so a SIGKILL here came from elsewhere:
    // under a memory limit, the OOM killer (its cgroup, and so its OOM count,
    // is already gone).
    let signal = exits.iter().find_map(|status| match status {
        WaitStatus::Signaled(_, signal, _) => Some(*signal),
        _ => None,
    });
    let how = match (signal, spec.and_then(shim_image::memory_limit)) {
        (Some(Signal::SIGKILL), Some(limit)) => format!(
            "it was killed (SIGKILL), most likely by the OOM killer at the container's memory \
             limit of {} MiB; reading and compiling WebAssembly takes memory of the order of \
             the binary's size, several times that for large data segments",
            limit >> 20
        ),
        (Some(signal), _) => format!("it was killed by {signal}"),
        (None, _) => return error,
    };
    format!("the container's process died while it prepared the guest: {how} ({error})")
}

/// Which of the spec's mounts cannot work, when the host can tell: a bind
/// mount whose source is missing, or a filesystem type the kernel does not
/// know (checked after the failed mount, which would have loaded its module).
fn mount_problem(spec: &oci_spec::runtime::Spec) -> Option<String> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    spec.mounts().iter().flatten().find_map(|mount| {
        let kind = mount.typ().as_deref().unwrap_or_default();
        let bind = kind == "bind"
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        let destination = mount.destination().display();
        match mount.source() {
            Some(source) if bind && !source.exists() => Some(format!(
                "the bind mount at {destination}: its source {} does not exist on the host",
                source.display()
            )),
            _ if !bind
                && !kind.is_empty()
                && !filesystems.is_empty()
                && !filesystems
                    .lines()
                    .any(|l| l.split_whitespace().last() == Some(kind)) =>
            {
                Some(format!(
                    "the mount at {destination}: filesystem type {kind:?} is not supported by \
                     this kernel (not in /proc/filesystems)"
                ))
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::Spec;

    #[test]
    fn libcontainers_messages_are_the_ones_matched() {
        use libcontainer::process::channel::main_channel;
        use libcontainer::process::init::error::InitProcessError;
        use libcontainer::rootfs::RootfsError;
        // The container's process gone before it is ready, as the helper
        // sees it: its end of the channel closed.
        let (sender, mut receiver) = main_channel().unwrap();
        sender.close().unwrap();
        let died = receiver.wait_for_init_ready().unwrap_err().to_string();
        assert!(died.contains(INIT_DIED), "{died}");
        let rootfs = InitProcessError::RootFS(RootfsError::UnknownRootfsPropagation("x".into()));
        assert_eq!(rootfs.to_string(), ROOTFS_FAILED);
        // (CLEANUP_FAILED is written by CreateContainerError's Display, which
        // has no public constructor: pinned by libcontainer's own test.)
    }

    fn spec_with(mounts: serde_json::Value, memory_limit: Option<i64>) -> Spec {
        let mut spec = serde_json::json!({"ociVersion": "1.0.2", "mounts": mounts});
        if let Some(limit) = memory_limit {
            spec["linux"] = serde_json::json!({"resources": {"memory": {"limit": limit}}});
        }
        serde_json::from_value(spec).unwrap()
    }
    #[test]
    fn a_mount_that_failed_is_named_with_its_problem() {
        let fail = "failed to create container: exec process failed with error error in \
                    executing process : failed to prepare rootfs";
        let spec = spec_with(
            serde_json::json!([
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/x", "type": "bind", "source": "/no/such/dir", "options": ["rbind", "ro"]}
            ]),
            None,
        );
        let message = explain(fail.into(), Some(&spec), &[]);
        assert!(
            message.ends_with(
                "failed to prepare rootfs: the bind mount at /x: its source /no/such/dir does \
                 not exist on the host"
            ),
            "{message}"
        );
        let spec = spec_with(
            serde_json::json!([{"destination": "/y", "type": "nosuchfs", "source": "none"}]),
            None,
        );
        let message = explain(fail.into(), Some(&spec), &[]);
        assert!(
            message.contains("filesystem type \"nosuchfs\" is not supported by this kernel"),
            "{message}"
        );
        let spec = spec_with(
            serde_json::json!([{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=bogus"]}]),
            None,
        );
        let message = explain(fail.into(), Some(&spec), &[]);
        assert!(message.ends_with("(one of the spec's mounts could not be set up)"));
    }

    #[test]
    fn libcontainers_cleanup_complaint_goes_once_the_helper_cleaned_up() {
        let error = "failed to create container: exec process failed with error error in \
                     executing process : /x.wasm is not valid WebAssembly: bad. error during \
                     cleanup: failed to cleanup container: io error: at \
                     /sys/fs/cgroup/blkio/default/c1: could not delete";
        assert_eq!(
            without_cleanup_complaint(error.into()),
            "failed to create container: exec process failed with error error in executing \
             process : /x.wasm is not valid WebAssembly: bad"
        );
        assert_eq!(without_cleanup_complaint("plain".into()), "plain");
    }

    #[test]
    fn a_process_killed_while_preparing_the_guest_is_explained() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid;
        let broken = "failed to create container: failed to receive. \"waiting for init ready\". \
                      BrokenChannel";
        let killed = [WaitStatus::Signaled(
            Pid::from_raw(7),
            Signal::SIGKILL,
            false,
        )];
        let limited = spec_with(serde_json::json!([]), Some(64 << 20));
        let message = explain(broken.into(), Some(&limited), &killed);
        assert!(
            message.starts_with(
                "the container's process died while it prepared the guest: it was killed \
                 (SIGKILL), most likely by the OOM killer at the container's memory limit of 64 MiB"
            ),
            "{message}"
        );
        assert!(message.ends_with(&format!("({broken})")), "{message}");
        let segv = [WaitStatus::Signaled(
            Pid::from_raw(7),
            Signal::SIGSEGV,
            false,
        )];
        let message = explain(broken.into(), Some(&limited), &segv);
        assert!(message.contains("it was killed by SIGSEGV"), "{message}");
        // Nothing more is known: the error stays as it was.
        let exited = [WaitStatus::Exited(Pid::from_raw(7), 1)];
        assert_eq!(explain(broken.into(), Some(&limited), &exited), broken);
        assert_eq!(explain("other".into(), Some(&limited), &killed), "other");
    }
}
