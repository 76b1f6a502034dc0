//! Restarting the node's containerd (or the k3s/rke2/k0s service that runs
//! it) through the host's own init, from inside the pod: with `hostPID`,
//! PID 1 is the host's init, and `nsenter -t 1` runs `systemctl` in its
//! namespaces, so the host's systemctl talks to the host's systemd.
//!
//! The installer's image holds no `nsenter`: the host's is run, chrooted
//! into the host root (as `chroot /host nsenter ...` would), and entering
//! PID 1's mount namespace makes the host's `/` the root again.
//!
//! Which init: `/proc/1/comm` is `systemd`, or the host has OpenRC's
//! `rc-service`. Anything else is refused: `--restart-command` names the
//! command for such hosts (and for tests).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::Host;
use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarter {
    /// `sh -c COMMAND` with `UNIT` in its environment.
    Command(String),
    /// `systemctl restart UNIT` in the host's namespaces; the host's root is at the path.
    Systemd(PathBuf),
    /// `rc-service UNIT restart` likewise.
    OpenRc(PathBuf),
}

impl Restarter {
    /// The operator's command if given, else the host's init.
    pub fn detect(host: &Host, command: Option<&str>) -> Result<Self, String> {
        if let Some(command) = command {
            return Ok(Restarter::Command(command.to_string()));
        }
        let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        let init = init.trim();
        let root = host.root().to_path_buf();
        if init == "systemd" {
            Ok(Restarter::Systemd(root))
        } else if host.exists(Path::new("/sbin/rc-service"))
            || host.exists(Path::new("/sbin/openrc-run"))
        {
            Ok(Restarter::OpenRc(root))
        } else {
            Err(format!(
                "PID 1 is {init:?}, neither systemd nor OpenRC (is the pod's hostPID set?); \
                 pass --restart-command"
            ))
        }
    }

    /// The command line that restarts `unit`.
    pub fn command(&self, unit: &str) -> Command {
        match self {
            Restarter::Command(line) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(line).env("UNIT", unit);
                c
            }
            Restarter::Systemd(root) => in_namespaces_of(1, root, &["systemctl", "restart", unit]),
            Restarter::OpenRc(root) => in_namespaces_of(1, root, &["rc-service", unit, "restart"]),
        }
    }

    pub fn restart(&self, unit: &str) -> Result<(), Error> {
        let mut command = self.command(unit);
        log::info!("restarting {unit}: {command:?}");
        let out = command.output().map_err(|e| Error::Restart {
            unit: unit.to_string(),
            message: format!("cannot run {command:?}: {e}"),
        })?;
        if !out.status.success() {
            return Err(Error::Restart {
                unit: unit.to_string(),
                message: format!(
                    "{command:?} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }
}

/// `args` run by the host's `nsenter` in the namespaces of `pid` (1: the host's init).
fn in_namespaces_of(pid: u32, root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["-t", &pid.to_string(), "-m", "-u", "-i", "-n", "-p", "--"])
        .args(args);
    if root != Path::new("/") {
        chroot_before_exec(&mut c, root);
    }
    c
}

/// Makes the child chroot into `root` before it execs, so `nsenter` is
/// looked up and loaded from the host's filesystem.
fn chroot_before_exec(command: &mut Command, root: &Path) {
    let Ok(root) = CString::new(root.as_os_str().as_bytes()) else {
        return; // a path with a NUL cannot be a mount point; exec then fails visibly
    };
    // SAFETY: between fork and exec the closure calls only chroot(2) and
    // chdir(2), which are async-signal-safe; the strings were allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_restart_runs_in_the_hosts_namespaces() {
        let c = Restarter::Systemd("/host".into()).command("k3s");
        assert_eq!(c.get_program(), "nsenter");
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-t 1 -m -u -i -n -p -- systemctl restart k3s"
        );
    }

    #[test]
    fn a_custom_command_sees_the_unit_and_failures_name_it() {
        let r = Restarter::Command("test \"$UNIT\" = containerd && exit 3".into());
        let err = r.restart("containerd").unwrap_err().to_string();
        assert!(
            err.contains("restarting containerd") && err.contains("3"),
            "{err}"
        );
        Restarter::Command("test \"$UNIT\" = containerd".into())
            .restart("containerd")
            .unwrap();
    }

    #[test]
    #[ignore = "needs root (chroot, nsenter): make unit-test runs it, make check does not"]
    fn nsenter_is_run_from_the_host_root() {
        // A host root that is the real root through a symlink: chroot
        // follows it, and nsenter then runs `true` in this process's
        // namespaces (PID 1 of these test machines cannot be entered).
        assert!(
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
            "chroot and nsenter need root (make test runs as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        std::os::unix::fs::symlink("/", &root).unwrap();
        let status = in_namespaces_of(std::process::id(), &root, &["true"])
            .status()
            .unwrap();
        assert!(status.success());
        let missing =
            in_namespaces_of(std::process::id(), &dir.path().join("nowhere"), &["true"]).status();
        assert!(
            missing.is_err(),
            "a chroot into a missing root fails: {missing:?}"
        );
    }
}
