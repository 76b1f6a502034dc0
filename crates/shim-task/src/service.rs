//! The shim v2 Task service: containerd's calls, mapped onto tasks.
//!
//! Handlers are synchronous and short: create and delete do the container
//! work, `wait` blocks its own ttrpc thread on a condition variable, and exits
//! arrive from the shim's SIGCHLD reaper through [`TaskService::watch_exits`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    WaitRequest, WaitResponse,
};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::Options as RuncOptions;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, ExitSignal, Task, TtrpcContext, TtrpcResult};
use shim_container::{CreateRequest, LinuxContainer};

use crate::layers::ContainerdApi;

use crate::error::TaskError;
use crate::events::Publisher;
use crate::lifecycle::{Phase, Transition};
use crate::stats::metrics_any;
use crate::stdin::StdinForwarder;

/// Exits of processes the service does not know (yet) are kept this long, so
/// an exit that races its task's registration is not lost.
const MAX_EARLY_EXITS: usize = 1024;

struct TaskState {
    id: String,
    bundle: String,
    container: LinuxContainer,
    stdio: [String; 3],
    stdin: Option<StdinForwarder>,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl TaskState {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the task through `transition`. `effect` runs first, with the
    /// phase held so that no exit slips in between; the phase changes only if
    /// the transition is valid and `effect` succeeds.
    fn transition(
        &self,
        transition: Transition,
        effect: impl FnOnce() -> Result<(), TaskError>,
    ) -> Result<Phase, TaskError> {
        let mut phase = self.phase();
        let next = phase
            .apply(transition)
            .map_err(|source| TaskError::Transition {
                id: self.id.clone(),
                source,
            })?;
        effect()?;
        *phase = next;
        self.changed.notify_all();
        Ok(next)
    }

    fn container_error(&self, source: shim_container::Error) -> TaskError {
        TaskError::Container {
            id: self.id.clone(),
            source,
        }
    }
}

#[derive(Default)]
struct Registry {
    tasks: HashMap<String, Arc<TaskState>>,
    by_pid: HashMap<i32, String>,
    early_exits: HashMap<i32, u32>,
}

pub struct TaskService {
    debug: bool,
    api: ContainerdApi,
    registry: Arc<Mutex<Registry>>,
    publisher: Publisher,
    exit: Arc<ExitSignal>,
}

fn ts(at: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(at))
}

/// Whether the runtime options containerd passes with CreateTask (the
/// `options` table of the runtime in containerd's config, encoded as runc's
/// `containerd.runc.v1.Options`) ask for the systemd cgroup driver, as runc
/// reads `SystemdCgroup`.
fn systemd_cgroup(options: &MessageField<Any>) -> Result<bool, String> {
    let Some(any) = options.as_ref() else {
        return Ok(false);
    };
    if !any.type_url.ends_with("containerd.runc.v1.Options") {
        return Err(format!(
            "unsupported runtime options type {:?} (expected containerd.runc.v1.Options)",
            any.type_url
        ));
    }
    let options = RuncOptions::parse_from_bytes(&any.value)
        .map_err(|e| format!("malformed runtime options: {e}"))?;
    log::debug!(
        "cgroup driver from runtime options: {}",
        if options.systemd_cgroup {
            "systemd"
        } else {
            "cgroupfs"
        }
    );
    Ok(options.systemd_cgroup)
}

fn reject_exec(id: &str, exec_id: &str) -> Result<(), TaskError> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(TaskError::InvalidArgument {
            id: id.to_string(),
            reason: format!("exec process {exec_id:?} does not exist (exec is not supported by the wasmtime shim)"),
        })
    }
}

impl TaskService {
    pub fn new(
        api: ContainerdApi,
        debug: bool,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let namespace = api.namespace.clone();
        let service = Self {
            debug,
            api,
            registry: Arc::default(),
            publisher: Publisher::start(publisher, namespace),
            exit,
        };
        service.watch_exits();
        service
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn task(&self, id: &str) -> Result<Arc<TaskState>, TaskError> {
        self.registry()
            .tasks
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(id.to_string()))
    }

    /// Routes exit statuses from the shim's reaper to tasks, and publishes TaskExit.
    fn watch_exits(&self) {
        let subscription = match containerd_shim::monitor::monitor_subscribe(Topic::Pid) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot watch container exits: {e}");
                return;
            }
        };
        let registry = self.registry.clone();
        let publisher = self.publisher.clone();
        std::thread::Builder::new()
            .name("exits".into())
            .spawn(move || {
                for event in subscription.rx.iter() {
                    let Subject::Pid(pid) = event.subject else {
                        continue;
                    };
                    let code = event.exit_code as u32;
                    let task = {
                        let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
                        match registry
                            .by_pid
                            .remove(&pid)
                            .and_then(|id| registry.tasks.get(&id).cloned())
                        {
                            Some(task) => task,
                            None => {
                                if registry.early_exits.len() >= MAX_EARLY_EXITS {
                                    registry.early_exits.clear();
                                }
                                registry.early_exits.insert(pid, code);
                                continue;
                            }
                        }
                    };
                    record_exit(&task, &publisher, code);
                }
            })
            .expect("spawn the exit watcher");
    }
}

fn record_exit(task: &TaskState, publisher: &Publisher, code: u32) {
    let at = SystemTime::now();
    if task
        .transition(Transition::Exit { code, at }, || Ok(()))
        .is_err()
    {
        return; // deleted before the reaper saw it
    }
    log::info!("container {}: exited with status {code}", task.id);
    publisher.publish(TaskExit {
        container_id: task.id.clone(),
        id: task.id.clone(),
        pid: task.container.pid() as u32,
        exit_status: code,
        exited_at: ts(at),
        ..Default::default()
    });
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        if self.registry().tasks.contains_key(&id) {
            return Err(TaskError::AlreadyExists(id).into());
        }
        if req.terminal {
            return Err(TaskError::InvalidArgument {
                id,
                reason:
                    "a terminal (tty) is not supported by the wasmtime shim yet; run without -t"
                        .into(),
            }
            .into());
        }
        let systemd_cgroup =
            systemd_cgroup(&req.options).map_err(|reason| TaskError::InvalidArgument {
                id: id.clone(),
                reason,
            })?;
        let fifo = |path: &str| (!path.is_empty()).then(|| PathBuf::from(path));
        let (stdin, guest_stdin) = match fifo(&req.stdin) {
            Some(path) => {
                let (forwarder, read_end) =
                    StdinForwarder::start(path).map_err(|e| TaskError::InvalidArgument {
                        id: id.clone(),
                        reason: format!("cannot set up stdin: {e}"),
                    })?;
                (Some(forwarder), Some(read_end))
            }
            None => (None, None),
        };
        let bundle = PathBuf::from(&req.bundle);
        let rootfs: Vec<_> = req
            .rootfs
            .iter()
            .map(|m| shim_container::rootfs::RootfsMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                target: m.target.clone(),
                options: m.options.clone(),
            })
            .collect();
        // An image containerd could not unpack (a wasm OCI artifact) leaves
        // the root empty: its wasm is a layer in the content store.
        let layer = if crate::layers::root_is_empty(&bundle, &rootfs) {
            let store = crate::layers::store_dir(&bundle);
            self.api
                .wasm_layer(&id, &store)
                .map(Some)
                .map_err(|reason| TaskError::InvalidArgument {
                    id: id.clone(),
                    reason,
                })
        } else {
            Ok(None)
        };
        let created = layer.and_then(|layer| {
            let request = CreateRequest {
                id: id.clone(),
                bundle,
                rootfs,
                stdout: fifo(&req.stdout),
                stderr: fifo(&req.stderr),
                systemd_cgroup,
                debug: self.debug,
                layer,
            };
            LinuxContainer::create(&request, guest_stdin).map_err(|source| TaskError::Container {
                id: id.clone(),
                source,
            })
        });
        let container = created.inspect_err(|_| {
            if let Some(stdin) = &stdin {
                stdin.close();
            }
        })?;
        let pid = container.pid();
        log::info!("container {id}: created, guest pid {pid}");
        let task = Arc::new(TaskState {
            id: id.clone(),
            bundle: req.bundle.clone(),
            container,
            stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
            stdin,
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
        });
        let early_exit = {
            let mut registry = self.registry();
            registry.tasks.insert(id.clone(), task.clone());
            registry.by_pid.insert(pid, id.clone());
            registry.early_exits.remove(&pid)
        };
        self.publisher.publish(TaskCreate {
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
        let (publisher, oom_id) = (self.publisher.clone(), id.clone());
        let watched = task.container.watch_oom(move || {
            log::warn!("container {oom_id}: the kernel's OOM killer acted in its cgroup");
            publisher.publish(TaskOOM {
                container_id: oom_id.clone(),
                ..Default::default()
            });
        });
        if let Err(e) = watched {
            // The container runs either way; only the OOMKilled reason would be missing.
            log::warn!("container {id}: {e}");
        }
        if let Some(code) = early_exit {
            record_exit(&task, &self.publisher, code);
        }
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        reject_exec(&req.id, &req.exec_id)?;
        let task = self.task(&req.id)?;
        task.transition(Transition::Start, || {
            task.container.start().map_err(|e| task.container_error(e))
        })?;
        let pid = task.container.pid() as u32;
        self.publisher.publish(TaskStart {
            container_id: task.id.clone(),
            pid,
            ..Default::default()
        });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        reject_exec(&req.id, &req.exec_id)?;
        let task = self.task(&req.id)?;
        let phase = *task.phase();
        let status = match phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped { .. } | Phase::Deleted { .. } => Status::STOPPED,
        };
        let mut response = StateResponse {
            id: task.id.clone(),
            bundle: task.bundle.clone(),
            pid: task.container.pid() as u32,
            stdin: task.stdio[0].clone(),
            stdout: task.stdio[1].clone(),
            stderr: task.stdio[2].clone(),
            ..Default::default()
        };
        response.set_status(status);
        if let Some((code, at)) = phase.exit() {
            response.exit_status = code;
            response.exited_at = ts(at);
        }
        Ok(response)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        reject_exec(&req.id, &req.exec_id)?;
        let task = self.task(&req.id)?;
        let mut phase = task.phase();
        let (code, at) = loop {
            if let Some(exit) = phase.exit() {
                break exit;
            }
            phase = task.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
        };
        Ok(WaitResponse {
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        reject_exec(&req.id, &req.exec_id)?;
        let task = self.task(&req.id)?;
        if task.phase().exit().is_some() {
            return Err(task
                .container_error(shim_container::Error::NotRunning)
                .into());
        }
        task.container
            .kill(req.signal as i32, req.all)
            .map_err(|e| task.container_error(e))?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        reject_exec(&req.id, &req.exec_id)?;
        let task = self.task(&req.id)?;
        let deleted = task.transition(Transition::Delete, || {
            task.container.delete().map_err(|e| task.container_error(e))
        })?;
        if let Some(stdin) = &task.stdin {
            stdin.close();
        }
        {
            let mut registry = self.registry();
            registry.tasks.remove(&task.id);
            registry.by_pid.remove(&task.container.pid());
        }
        let (code, at) = deleted.exit().unwrap_or((0, SystemTime::now()));
        let pid = task.container.pid() as u32;
        log::info!("container {}: deleted", task.id);
        self.publisher.publish(TaskDelete {
            container_id: task.id.clone(),
            id: task.id.clone(),
            pid,
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        });
        Ok(DeleteResponse {
            pid,
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let task = self.task(&req.id)?;
        let pids = match *task.phase() {
            Phase::Created | Phase::Running => {
                task.container.pids().map_err(|e| task.container_error(e))?
            }
            Phase::Stopped { .. } | Phase::Deleted { .. } => Vec::new(),
        };
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
        let task = self.task(&req.id)?;
        let stats = task
            .container
            .stats()
            .map_err(|e| task.container_error(e))?;
        Ok(StatsResponse {
            stats: MessageField::some(
                metrics_any(&stats).map_err(|e| ttrpc::Error::Others(e.to_string()))?,
            ),
            ..Default::default()
        })
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        reject_exec(&req.id, &req.exec_id)?;
        let task = self.task(&req.id)?;
        if let Some(stdin) = &task.stdin {
            stdin.close();
        }
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .task(&req.id)
            .map(|t| t.container.pid() as u32)
            .unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        if req.now || self.registry().tasks.is_empty() {
            log::info!("shutting down");
            self.exit.signal();
        }
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, _req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported { operation: "exec" }.into())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported { operation: "pause" }.into())
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported {
            operation: "resume",
        }
        .into())
    }

    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported {
            operation: "update",
        }
        .into())
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

    fn resize_pty(&self, _ctx: &TtrpcContext, _req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        Err(TaskError::Unsupported {
            operation: "resize_pty",
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(systemd: bool) -> MessageField<Any> {
        let options = RuncOptions {
            systemd_cgroup: systemd,
            ..Default::default()
        };
        MessageField::some(Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: options.write_to_bytes().unwrap(),
            ..Default::default()
        })
    }

    #[test]
    fn systemd_cgroup_is_read_from_runc_options() {
        assert_eq!(systemd_cgroup(&MessageField::none()), Ok(false));
        assert_eq!(systemd_cgroup(&options(false)), Ok(false));
        assert_eq!(systemd_cgroup(&options(true)), Ok(true));
        let mut other = options(true);
        other.as_mut().unwrap().type_url = "example.Options".into();
        assert!(systemd_cgroup(&other)
            .unwrap_err()
            .contains("unsupported runtime options type"));
        let mut broken = options(true);
        broken.as_mut().unwrap().value = vec![0xff, 0xff];
        assert!(systemd_cgroup(&broken)
            .unwrap_err()
            .contains("malformed runtime options"));
    }
}
