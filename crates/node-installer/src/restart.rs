//! Restarting the node's containerd (or the k3s/rke2/k0s service that runs
//! it) through the host's own init, from inside the pod: with `hostPID`,
//! PID 1 is the host's init, and `nsenter -t 1` runs `systemctl` in its
//! namespaces, so the host's systemctl talks to the host's systemd.
//!
//! Which init: `/proc/1/comm` is `systemd`, or the host has OpenRC's
//! `rc-service`. Anything else is refused: `--restart-command` names the
//! command for such hosts (and for tests).

use std::path::Path;
use std::process::Command;

use crate::host::Host;
use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restarter {
    /// `sh -c COMMAND` with `UNIT` in its environment.
    Command(String),
    Systemd,
    OpenRc,
}

impl Restarter {
    /// The operator's command if given, else the host's init.
    pub fn detect(host: &Host, command: Option<&str>) -> Result<Self, String> {
        if let Some(command) = command {
            return Ok(Restarter::Command(command.to_string()));
        }
        let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        let init = init.trim();
        if init == "systemd" {
            Ok(Restarter::Systemd)
        } else if host.exists(Path::new("/sbin/rc-service"))
            || host.exists(Path::new("/sbin/openrc-run"))
        {
            Ok(Restarter::OpenRc)
        } else {
            Err(format!(
                "PID 1 is {init:?}, neither systemd nor OpenRC (is the pod's hostPID set?); \
                 pass --restart-command"
            ))
        }
    }

    /// The command line that restarts `unit`.
    pub fn command(&self, unit: &str) -> Command {
        let nsenter = |args: &[&str]| {
            let mut c = Command::new("nsenter");
            c.args(["-t", "1", "-m", "-u", "-i", "-n", "-p", "--"])
                .args(args);
            c
        };
        match self {
            Restarter::Command(line) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(line).env("UNIT", unit);
                c
            }
            Restarter::Systemd => nsenter(&["systemctl", "restart", unit]),
            Restarter::OpenRc => nsenter(&["rc-service", unit, "restart"]),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_restart_runs_in_the_hosts_namespaces() {
        let c = Restarter::Systemd.command("k3s");
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
}
