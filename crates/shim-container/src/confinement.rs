//! The process's security context: its seccomp filter and capabilities,
//! applied by the executor instead of by libcontainer.
//!
//! Why not libcontainer: its tenant (exec) builder rebuilds `linux` from a
//! few fields and drops `linux.seccomp`, so an exec would escape the
//! container's filter (`kubectl exec`, exec probes); and a wasm container's
//! process has work to do with privileges after libcontainer's set-up and
//! before the guest runs (hiding pseudo-filesystems, [`crate::guest_view`]).
//! So the create helper takes both out of what libcontainer sees
//! ([`Confinement::take_from_spec`], [`Confinement::take_from_process`]) and
//! the executor applies them in `validate`, for the container's process and
//! for every exec alike, in runc's order: without `noNewPrivileges` the
//! filter is installed while the process still has `CAP_SYS_ADMIN`, then the
//! capabilities are dropped; with it, capabilities first, filter last.
//! `noNewPrivileges`, the user, AppArmor and the rest stay libcontainer's.

use libcontainer::syscall::syscall::create_syscall;
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

/// What is applied to a container's process, or an exec's, in `validate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Confinement {
    pub seccomp: Option<LinuxSeccomp>,
    pub capabilities: Option<LinuxCapabilities>,
    pub no_new_privileges: bool,
}

impl Confinement {
    /// Takes the filter and the process's capabilities out of `spec`, so
    /// that libcontainer applies neither.
    pub fn take_from_spec(spec: &mut Spec) -> Self {
        let seccomp = spec.linux_mut().as_mut().and_then(|linux| {
            let seccomp = linux.seccomp().clone();
            linux.set_seccomp(None);
            seccomp
        });
        let mut confinement = spec
            .process_mut()
            .as_mut()
            .map(Self::take_from_process)
            .unwrap_or_default();
        confinement.seccomp = seccomp;
        confinement
    }

    /// Takes an exec's capabilities out of its process; its filter is the
    /// container's (`seccomp`, from the container's spec).
    pub fn take_from_process(process: &mut Process) -> Self {
        let capabilities = process.capabilities().clone();
        process.set_capabilities(None);
        Self {
            seccomp: None,
            capabilities,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
        }
    }

    /// Installs the filter and drops the capabilities, in runc's order.
    /// Called once per process, after libcontainer's set-up, before the
    /// guest (or the native program) runs.
    pub fn apply(&self) -> Result<(), String> {
        if let Some(seccomp) = &self.seccomp {
            if libcontainer::seccomp::is_notify(seccomp) {
                return Err(
                    "the seccomp profile hands syscalls to a listener (SCMP_ACT_NOTIFY), which \
                     this shim does not support"
                        .into(),
                );
            }
        }
        if !self.no_new_privileges {
            self.install_filter()?;
        }
        if let Some(capabilities) = &self.capabilities {
            libcontainer::capabilities::drop_privileges(capabilities, create_syscall().as_ref())
                .map_err(|e| format!("cannot drop capabilities: {e}"))?;
        }
        if self.no_new_privileges {
            self.install_filter()?;
        }
        Ok(())
    }

    fn install_filter(&self) -> Result<(), String> {
        let Some(seccomp) = &self.seccomp else {
            return Ok(());
        };
        libcontainer::seccomp::initialize_seccomp(seccomp)
            .map(drop)
            .map_err(|e| format!("cannot install the seccomp filter: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_and_capabilities_move_out_of_the_spec() {
        let mut spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "cwd": "/", "args": ["x"], "noNewPrivileges": true,
                "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}
            },
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["link"], "action": "SCMP_ACT_ERRNO"}]}}
        }))
        .unwrap();
        let original = serde_json::to_value(&spec).unwrap();
        let confinement = Confinement::take_from_spec(&mut spec);
        assert!(confinement.no_new_privileges);
        assert!(confinement.seccomp.is_some() && confinement.capabilities.is_some());
        let stripped = serde_json::to_value(&spec).unwrap();
        assert!(stripped["linux"].get("seccomp").is_none(), "{stripped}");
        assert!(
            stripped["process"].get("capabilities").is_none(),
            "{stripped}"
        );
        assert_eq!(stripped["linux"]["seccomp"], serde_json::Value::Null);
        assert_ne!(stripped, original);
    }
}
