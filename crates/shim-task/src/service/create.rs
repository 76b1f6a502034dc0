//! Create: containerd's bundle and request, checked, become a container and
//! a task. Everything that can be refused is refused before the container
//! exists, with an error that names the container and what is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::protos::events::task::{TaskCreate, TaskIO, TaskOOM};
use containerd_shim::protos::protobuf::MessageField;
use shim_container::rootfs::RootfsMount;
use shim_container::{Bundle, CreateRequest, Outputs};

use crate::error::TaskError;
use crate::events::EventSink;
use crate::options::RuntimeOptions;
use crate::runtime::{Container, Runtime};
use crate::stdin::StdinForwarder;
use crate::tty::{Console, ConsoleSocket};

use super::process::Process;
use super::tasks::Task;
use super::TaskService;

/// containerd's fifo path, `None` when it gave none.
pub(super) fn fifo(path: &str) -> Option<PathBuf> {
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Starts forwarding containerd's stdin fifo `path`, if any: the forwarder
/// and the read end the process gets.
pub(super) fn forward_stdin(
    shown: &str,
    path: &str,
) -> Result<Option<(StdinForwarder, std::os::fd::OwnedFd)>, TaskError> {
    fifo(path)
        .map(|path| {
            StdinForwarder::start(path).map_err(|e| TaskError::InvalidArgument {
                id: shown.to_string(),
                reason: format!("cannot set up stdin: {e}"),
            })
        })
        .transpose()
}

/// Where the create helper points a process's stdout and stderr. With a
/// terminal, nowhere: the pty is its stdio, and only the shim's copy
/// (`Console`) opens containerd's fifo. The helper opening it as well would
/// end a reader that came meanwhile (ctr's) with EOF when it exits.
pub(super) fn outputs(terminal: bool, stdout: &str, stderr: &str) -> Outputs {
    match terminal {
        true => Outputs::default(),
        false => Outputs {
            stdout: fifo(stdout),
            stderr: fifo(stderr),
        },
    }
}

/// The terminal libcontainer made for a process, connected to containerd's
/// stdin and stdout.
pub(super) fn attach_console(
    socket: &ConsoleSocket,
    stdin: &str,
    stdout: &str,
) -> std::io::Result<Console> {
    Console::start(socket.receive()?, fifo(stdin), fifo(stdout))
}

impl<R: Runtime, E: EventSink> TaskService<R, E> {
    pub(super) fn create_task(&self, req: &CreateTaskRequest) -> Result<u32, TaskError> {
        let id = req.id.clone();
        let invalid = |reason: String| TaskError::InvalidArgument {
            id: id.clone(),
            reason,
        };
        // The id names the container's state directory and its cgroup;
        // every other call finds the task by id.
        TaskError::check_id(&id, "task", &id)?;
        let reservation = self.tasks.reserve(&id)?;
        // A spec that cannot be read fails here, with its own error, rather
        // than later with one about what it was taken to mean.
        let bundle = Bundle::load(Path::new(&req.bundle)).map_err(invalid)?;
        // containerd passes `terminal` on only when its client asked for a
        // TTY itself; a spec given whole may ask in `process.terminal`.
        let terminal = req.terminal || bundle.terminal();
        let systemd_cgroup = RuntimeOptions::from_any(req.options.as_ref())
            .map(|options| options.systemd(bundle.cgroups_path().as_deref()))
            .map_err(invalid)?;
        let rootfs: Vec<_> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                options: m.options.clone(),
            })
            .collect();
        let layer = self
            .runtime
            .wasm_layer(&id, &bundle, &rootfs)
            .map_err(invalid)?;
        let console_socket = terminal
            .then(|| ConsoleSocket::bind(bundle.dir(), "init"))
            .transpose()
            .map_err(|e| invalid(format!("cannot set up its terminal: {e}")))?;
        // With a terminal, stdin goes to the pty (`Console`), not a pipe.
        let (stdin, guest_stdin) = match terminal {
            true => (None, None),
            false => forward_stdin(&id, &req.stdin)?.unzip(),
        };
        let request = CreateRequest {
            id: id.clone(),
            bundle: bundle.dir().to_path_buf(),
            rootfs,
            outputs: outputs(terminal, &req.stdout, &req.stderr),
            console_socket: console_socket.as_ref().map(|s| s.path().to_path_buf()),
            systemd_cgroup,
            debug: self.debug,
            layer,
        };
        let container = self
            .runtime
            .create(&request, guest_stdin)
            .map_err(|source| {
                if let Some(stdin) = &stdin {
                    stdin.close();
                }
                TaskError::Container {
                    id: id.clone(),
                    source,
                }
            })?;
        let console = console_socket
            .map(|socket| attach_console(&socket, &req.stdin, &req.stdout))
            .transpose()
            .inspect_err(|_| {
                // Leave nothing behind.
                if let Err(e) = container.delete() {
                    log::warn!("container {id}: cleanup after a failed create: {e}");
                }
            })
            .map_err(|e| invalid(format!("cannot set up its terminal: {e}")))?;
        let pid = container.pid();
        log::info!("container {id}: created, guest pid {pid}");
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let init = Process::init(&id, stdio, stdin, pid);
        if let Some(console) = console {
            init.set_console(console);
        }
        let task = Arc::new(Task::new(id.clone(), req.bundle.clone(), container, init));
        // Published before the exit an early exit would record.
        self.publish(TaskCreate {
            container_id: id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: pid as u32,
            ..Default::default()
        });
        self.watch_oom(&task);
        self.tasks.add(task, reservation);
        Ok(pid as u32)
    }

    /// Publishes TaskOOM whenever the kernel's OOM killer acts in the
    /// task's cgroup: what makes CRI report `OOMKilled`.
    fn watch_oom(&self, task: &Task<R::Container>) {
        let tasks = self.tasks.clone();
        let id = task.id.clone();
        let watched = task.container.watch_oom(Box::new(move || {
            log::warn!("container {id}: the kernel's OOM killer acted in its cgroup");
            tasks.events.publish(Box::new(TaskOOM {
                container_id: id.clone(),
                ..Default::default()
            }));
        }));
        if let Err(e) = watched {
            // The container runs either way; only the OOMKilled reason would be missing.
            log::warn!("container {}: {e}", task.id);
        }
    }
}
