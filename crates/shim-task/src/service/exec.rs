//! Execs: `exec` records a process in a running task, `start` runs it in
//! the container (as runc's shim does); state, wait, kill, close_io and
//! delete treat it as any [`Process`].

use std::sync::Arc;

use containerd_shim::api::ExecProcessRequest;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted};
use shim_container::{ExecProcess, Outputs};

use crate::error::TaskError;
use crate::events::EventSink;
use crate::lifecycle::{InvalidTransition, Phase, Transition};
use crate::runtime::{Container, Runtime};

use super::create::{fifo, forward_stdin};
use super::process::Process;
use super::tasks::Task;
use super::TaskService;

impl<R: Runtime, E: EventSink> TaskService<R, E> {
    /// `exec`: checks and records the process; it runs from `start`.
    pub(super) fn add_exec(&self, req: &ExecProcessRequest) -> Result<(), TaskError> {
        let task = self.tasks.get(&req.id)?;
        // The exec id names files in the bundle (`.exec-<id>.json`).
        TaskError::check_id(&task.id, "exec", &req.exec_id)?;
        let shown = format!("{} (exec {:?})", task.id, req.exec_id);
        if req.terminal {
            return Err(TaskError::Terminal { id: shown });
        }
        let invalid = |reason: String| TaskError::InvalidArgument {
            id: shown.clone(),
            reason,
        };
        let process = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid("no process spec".into()))
            .and_then(|any| {
                serde_json::from_slice::<oci_spec::runtime::Process>(&any.value)
                    .map_err(|e| invalid(format!("the process spec is not valid: {e}")))
            })
            .and_then(|process| {
                if process.args().as_ref().is_none_or(|a| a.is_empty()) {
                    return Err(invalid("the process has no command".into()));
                }
                serde_json::to_value(process).map_err(|e| invalid(e.to_string()))
            })?;
        match *task.init.phase() {
            Phase::Running => {}
            phase => {
                return Err(TaskError::Transition {
                    id: task.id.clone(),
                    source: InvalidTransition {
                        action: "exec",
                        state: match phase {
                            Phase::Created => "is created and not started",
                            _ => "has exited: there is nothing to exec into",
                        },
                    },
                })
            }
        }
        let spec = ExecProcess {
            exec_id: req.exec_id.clone(),
            process,
            outputs: Outputs {
                stdout: fifo(&req.stdout),
                stderr: fifo(&req.stderr),
            },
        };
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        {
            let mut execs = task.execs();
            if execs.contains_key(&req.exec_id) {
                return Err(TaskError::AlreadyExists(shown));
            }
            let exec = Process::exec(&task.id, spec, stdio);
            execs.insert(req.exec_id.clone(), Arc::new(exec));
        }
        log::info!("container {shown}: added");
        self.publish(TaskExecAdded {
            container_id: task.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    /// `start` of an exec: its process runs in the container.
    pub(super) fn start_exec(
        &self,
        task: &Task<R::Container>,
        exec: &Process,
    ) -> Result<u32, TaskError> {
        let spec = exec.spec.as_ref().expect("an exec has its process");
        exec.transition(Transition::Start, || {
            let guest_stdin =
                forward_stdin(&exec.shown, &exec.stdio[0])?.map(|(forwarder, read_end)| {
                    exec.set_stdin(forwarder);
                    read_end
                });
            let pid = task.container.exec(spec, guest_stdin).map_err(|source| {
                exec.close_stdin();
                TaskError::Container {
                    id: exec.shown.clone(),
                    source,
                }
            })?;
            exec.set_pid(pid);
            Ok(())
        })?;
        let pid = exec.pid();
        log::info!("container {}: started, pid {pid}", exec.shown);
        // Published before the exit an early exit would record.
        self.publish(TaskExecStarted {
            container_id: task.id.clone(),
            exec_id: exec.id().to_string(),
            pid,
            ..Default::default()
        });
        self.tasks.exec_started(task, exec);
        Ok(pid)
    }
}
