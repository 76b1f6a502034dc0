//! Execs: `exec` records a process in a running task, `start` runs it in
//! the container (as runc's shim does); state, wait, kill, close_io and
//! delete treat it as any [`Process`].

use std::path::Path;
use std::sync::Arc;

use containerd_shim::api::ExecProcessRequest;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted};
use shim_container::ExecProcess;

use crate::error::TaskError;
use crate::events::EventSink;
use crate::lifecycle::{InvalidTransition, Phase, Transition};
use crate::runtime::{Container, Runtime};
use crate::tty::ConsoleSocket;

use super::create::{attach_console, forward_stdin, outputs};
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
                            Phase::Paused => "is paused (resume it first)",
                            _ => "has exited: there is nothing to exec into",
                        },
                    },
                })
            }
        }
        // Either containerd's flag or the process's own asks for a terminal;
        // libcontainer reads the process's.
        let terminal = req.terminal || process["terminal"] == serde_json::Value::Bool(true);
        let mut process = process;
        process["terminal"] = terminal.into();
        let spec = ExecProcess {
            exec_id: req.exec_id.clone(),
            process,
            outputs: outputs(terminal, &req.stdout, &req.stderr),
            // Set by `start`, which makes the socket.
            console_socket: None,
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
        let mut spec = exec.spec.clone().expect("an exec has its process");
        let terminal = spec.process["terminal"] == serde_json::Value::Bool(true);
        exec.transition(Transition::Start, || {
            let invalid = |e: std::io::Error| TaskError::InvalidArgument {
                id: exec.shown.clone(),
                reason: format!("cannot set up its terminal: {e}"),
            };
            let name = format!("exec-{}", exec.id());
            let console_socket = terminal
                .then(|| ConsoleSocket::bind(Path::new(&task.bundle), &name))
                .transpose()
                .map_err(invalid)?;
            spec.console_socket = console_socket.as_ref().map(|s| s.path().to_path_buf());
            // With a terminal, stdin goes to the pty (`Console`), not a pipe.
            let guest_stdin = match terminal {
                true => None,
                false => {
                    forward_stdin(&exec.shown, &exec.stdio[0])?.map(|(forwarder, read_end)| {
                        exec.set_stdin(forwarder);
                        read_end
                    })
                }
            };
            let pid = task.container.exec(&spec, guest_stdin).map_err(|source| {
                exec.close_stdin();
                TaskError::Container {
                    id: exec.shown.clone(),
                    source,
                }
            })?;
            exec.set_pid(pid);
            if let Some(socket) = console_socket {
                // It runs; without its terminal nobody could reach it.
                let console = attach_console(&socket, &exec.stdio[0], &exec.stdio[1])
                    .inspect_err(|_| {
                        let _ = task.container.signal(pid, libc::SIGKILL);
                    })
                    .map_err(invalid)?;
                exec.set_console(console);
            }
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
