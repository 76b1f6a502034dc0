//! The shim v2 Task service: containerd's calls, mapped onto tasks.
//!
//! Handlers are synchronous and short: create and delete do the container
//! work, `wait` blocks its own ttrpc thread, and exits arrive from the
//! shim's SIGCHLD reaper through [`Tasks::exited`]. A task's init and its
//! execs are each a [`Process`]; containerd names one by `(id, exec_id)`.
//! The service is generic over the [`Runtime`] that makes containers and
//! the [`EventSink`] events go to, so its logic is unit-tested (`tests`).
//!
//! Lock order, where a call holds more than one: the registry
//! ([`Tasks`]), then a task's exec table, then a process's phase. A
//! process's phase is held while its container is started, signalled or
//! deleted, so that no exit is recorded in between; nothing under a phase
//! takes the registry.
//!
//! - [`create`]: a task from containerd's bundle;
//! - [`exec`]: adding, starting and deleting execs;
//! - [`tasks`]: the registry and exit routing;
//! - [`process`]: one process's phase, pid, stdio and waiters.

mod create;
mod exec;
mod process;
mod tasks;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    WaitRequest, WaitResponse,
};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::error::TaskError;
use crate::events::{EventSink, Publisher};
use crate::layers::ContainerdApi;
use crate::lifecycle::{InvalidTransition, Phase, Transition};
use crate::runtime::{Container, Linux, Runtime};
use crate::stats::metrics_any;

use process::timestamp;
use tasks::Tasks;

pub struct TaskService<R: Runtime = Linux, E: EventSink = Publisher> {
    runtime: R,
    debug: bool,
    tasks: Arc<Tasks<R::Container, E>>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// The service containerd talks to: Linux containers, events to
    /// containerd, exits from the shim's reaper.
    pub fn new(
        api: ContainerdApi,
        debug: bool,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let events = Publisher::start(publisher, api.namespace.clone());
        let service = Self::with(Linux { api }, events, debug, exit);
        service.watch_exits();
        service
    }

    /// Routes exit statuses from the shim's reaper to tasks.
    fn watch_exits(&self) {
        let subscription = match containerd_shim::monitor::monitor_subscribe(Topic::Pid) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch container exits: {e}");
                return;
            }
        };
        let tasks = self.tasks.clone();
        std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for event in subscription.rx.iter() {
                    if let Subject::Pid(pid) = event.subject {
                        tasks.exited(pid, event.exit_code as u32);
                    }
                }
            })
            .expect("spawn the exit watcher");
    }
}

impl<R: Runtime, E: EventSink> TaskService<R, E> {
    pub fn with(runtime: R, events: E, debug: bool, exit: Arc<ExitSignal>) -> Self {
        Self {
            runtime,
            debug,
            tasks: Arc::new(Tasks::new(events)),
            exit,
        }
    }

    fn publish(&self, event: impl containerd_shim::event::Event + Send + 'static) {
        self.tasks.events.publish(Box::new(event));
    }

    fn start_process(&self, req: &StartRequest) -> Result<u32, TaskError> {
        let task = self.tasks.get(&req.id)?;
        let process = task.process(&req.exec_id)?;
        if process.exec_id().is_some() {
            return self.start_exec(&task, &process);
        }
        process.transition(Transition::Start, || {
            task.container
                .start()
                .map_err(|source| TaskError::Container {
                    id: task.id.clone(),
                    source,
                })
        })?;
        let pid = process.pid();
        self.publish(TaskStart {
            container_id: task.id.clone(),
            pid,
            ..Default::default()
        });
        Ok(pid)
    }

    fn process_state(&self, req: &StateRequest) -> Result<StateResponse, TaskError> {
        let task = self.tasks.get(&req.id)?;
        let process = task.process(&req.exec_id)?;
        let mut phase = *process.phase();
        // An exec of a paused container is frozen with it.
        if phase == Phase::Running
            && process.exec_id().is_some()
            && *task.init.phase() == Phase::Paused
        {
            phase = Phase::Paused;
        }
        let mut response = StateResponse {
            id: process.id().to_string(),
            exec_id: req.exec_id.clone(),
            bundle: task.bundle.clone(),
            pid: process.pid(),
            stdin: process.stdio[0].clone(),
            stdout: process.stdio[1].clone(),
            stderr: process.stdio[2].clone(),
            ..Default::default()
        };
        response.set_status(match phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Paused => Status::PAUSED,
            Phase::Stopped { .. } | Phase::Deleted { .. } => Status::STOPPED,
        });
        if let Some((code, at)) = phase.exit() {
            response.exit_status = code;
            response.exited_at = timestamp(at);
        }
        Ok(response)
    }

    fn signal_process(&self, req: &KillRequest) -> Result<(), TaskError> {
        let task = self.tasks.get(&req.id)?;
        let process = task.process(&req.exec_id)?;
        let error = |source| TaskError::Container {
            id: process.shown.clone(),
            source,
        };
        // Held while signalling: the exit cannot be recorded in between.
        let phase = process.phase();
        let paused = *phase == Phase::Paused;
        match *phase {
            Phase::Running | Phase::Paused => {}
            // A created task's process exists and may be killed; a created
            // exec's does not yet.
            Phase::Created if process.exec_id().is_none() => {}
            Phase::Created => {
                return Err(TaskError::Transition {
                    id: process.shown.clone(),
                    source: InvalidTransition {
                        action: "kill",
                        state: "is not started",
                    },
                })
            }
            // As runc's shim: an exited process is NOT_FOUND, which CRI's
            // ExecSync timeout path expects.
            Phase::Stopped { .. } | Phase::Deleted { .. } => {
                return Err(error(shim_container::Error::NotRunning))
            }
        }
        let signal = req.signal as i32;
        let sent = if req.all && process.exec_id().is_none() {
            task.container.signal_all(signal).map_err(error)
        } else {
            task.container
                .signal(process.pid() as i32, signal)
                .map_err(error)
        };
        if paused {
            // On cgroup v1 a frozen process dies of SIGKILL only once
            // thawed; signalling every process thaws the cgroup (it is
            // frozen meanwhile so nothing forks past the signal): frozen again.
            let frozen = match (signal == libc::SIGKILL, req.all) {
                (true, _) => Some(false),
                (false, true) => Some(true),
                (false, false) => None,
            };
            if let Some(Err(e)) = frozen.map(|frozen| task.container.freeze(frozen)) {
                log::warn!("container {}: {e}", task.id);
            }
        }
        sent
    }

    /// Pause (`frozen`) or Resume: every process of the task frozen or
    /// thawed, its phase Paused or Running again, and the event containerd
    /// expects, as runc's shim publishes it.
    fn freeze_task(&self, id: &str, frozen: bool) -> Result<(), TaskError> {
        let task = self.tasks.get(id)?;
        let transition = if frozen {
            Transition::Pause
        } else {
            Transition::Resume
        };
        task.init.transition(transition, || {
            task.container
                .freeze(frozen)
                .map_err(|source| TaskError::Container {
                    id: task.id.clone(),
                    source,
                })
        })?;
        let container_id = task.id.clone();
        if frozen {
            log::info!("container {id}: paused");
            self.publish(TaskPaused {
                container_id,
                ..Default::default()
            });
        } else {
            log::info!("container {id}: resumed");
            self.publish(TaskResumed {
                container_id,
                ..Default::default()
            });
        }
        Ok(())
    }

    /// New resources for a task (an in-place resize): containerd sends the
    /// container's whole `linux.resources`, as runtime-spec JSON.
    fn update_task(&self, req: &api::UpdateTaskRequest) -> Result<(), TaskError> {
        let task = self.tasks.get(&req.id)?;
        let resources =
            linux_resources(&req.resources).map_err(|reason| TaskError::InvalidArgument {
                id: task.id.clone(),
                reason,
            })?;
        task.init.transition(Transition::Update, || {
            task.container
                .update(&resources)
                .map_err(|source| TaskError::Container {
                    id: task.id.clone(),
                    source,
                })
        })?;
        log::info!("container {}: resources updated", req.id);
        Ok(())
    }

    fn delete_process(&self, req: &DeleteRequest) -> Result<DeleteResponse, TaskError> {
        let task = self.tasks.get(&req.id)?;
        let process = task.process(&req.exec_id)?;
        let deleted = process.transition(Transition::Delete, || match process.exec_id() {
            Some(_) => Ok(()),
            None => task
                .container
                .delete()
                .map_err(|source| TaskError::Container {
                    id: task.id.clone(),
                    source,
                }),
        })?;
        process.close_stdin();
        match process.exec_id() {
            Some(exec_id) => {
                task.execs().remove(exec_id);
                self.tasks.exec_deleted(&process);
            }
            None => {
                self.tasks.remove(&task);
                log::info!("container {}: deleted", task.id);
            }
        }
        let event = process.deleted(deleted);
        let response = DeleteResponse {
            pid: event.pid,
            exit_status: event.exit_status,
            exited_at: event.exited_at.clone(),
            ..Default::default()
        };
        self.publish(event);
        Ok(response)
    }

    fn task_pids(&self, req: &PidsRequest) -> Result<Vec<i32>, TaskError> {
        let task = self.tasks.get(&req.id)?;
        if task.init.phase().exit().is_some() {
            return Ok(Vec::new());
        }
        task.container
            .pids()
            .map_err(|source| TaskError::Container {
                id: task.id.clone(),
                source,
            })
    }
}

fn reply<T>(result: Result<T, TaskError>) -> TtrpcResult<T> {
    result.map_err(Into::into)
}

impl<R: Runtime, E: EventSink> Task for TaskService<R, E> {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = self.create_task(&req)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self.start_process(&req)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        reply(self.process_state(&req))
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let process = self.tasks.get(&req.id)?.process(&req.exec_id)?;
        let (code, at) = process.wait();
        Ok(WaitResponse {
            exit_status: code,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.signal_process(&req)?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        reply(self.delete_process(&req))
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.task_pids(&req)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let task = self.tasks.get(&req.id)?;
        let stats = task
            .container
            .stats()
            .map_err(|source| TaskError::Container {
                id: task.id.clone(),
                source,
            })?;
        Ok(StatsResponse {
            stats: MessageField::some(
                metrics_any(&stats, task.container.wasm_metrics().as_ref())
                    .map_err(|e| ttrpc::Error::Others(e.to_string()))?,
            ),
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.tasks
            .get(&req.id)?
            .process(&req.exec_id)?
            .close_stdin();
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .tasks
            .get(&req.id)
            .map(|t| t.init.pid())
            .unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        if req.now || self.tasks.is_empty() {
            log::info!("shutting down");
            self.exit.signal();
        }
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        self.add_exec(&req)?;
        Ok(Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.freeze_task(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.freeze_task(&req.id, false)?;
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.update_task(&req)?;
        Ok(Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported {
            operation: "checkpoint",
        }
        .into())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        let process = self.tasks.get(&req.id)?.process(&req.exec_id)?;
        process.resize(req.width, req.height)?;
        Ok(Empty::new())
    }
}

/// The resources of an Update: runtime-spec `LinuxResources` as JSON, which
/// is what containerd's client sends (`typeurl` names the type).
fn linux_resources(
    resources: &MessageField<Any>,
) -> Result<oci_spec::runtime::LinuxResources, String> {
    let any = resources.as_ref().ok_or("an update without resources")?;
    if !any.type_url.ends_with("/LinuxResources") {
        return Err(format!(
            "resources of type {:?}: only runtime-spec LinuxResources apply to a Linux container",
            any.type_url
        ));
    }
    serde_json::from_slice(&any.value).map_err(|e| format!("the new resources are not valid: {e}"))
}
