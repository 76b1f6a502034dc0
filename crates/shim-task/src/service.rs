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
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, ExitSignal, Task, TtrpcContext, TtrpcResult};
use shim_container::{CreateRequest, ExecProcess, LinuxContainer};

use crate::layers::ContainerdApi;
use crate::options::RuntimeOptions;

use crate::error::TaskError;
use crate::events::Publisher;
use crate::lifecycle::{Phase, Transition};
use crate::stats::metrics_any;
use crate::stdin::StdinForwarder;

/// Exits of processes the service does not know (yet) are kept this long, so
/// an exit that races its task's registration is not lost.
const MAX_EARLY_EXITS: usize = 1024;

/// The phase of a task or of one of its execs, and its waiters.
struct Life {
    /// How errors name it after "container": `X`, or `X (exec "E")`.
    shown: String,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl Life {
    fn new(shown: String) -> Self {
        Self {
            shown,
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves through `transition`. `effect` runs first, with the phase held
    /// so that no exit slips in between; the phase changes only if the
    /// transition is valid and `effect` succeeds.
    fn transition(
        &self,
        transition: Transition,
        effect: impl FnOnce() -> Result<(), TaskError>,
    ) -> Result<Phase, TaskError> {
        let mut phase = self.phase();
        let next = phase
            .apply(transition)
            .map_err(|source| TaskError::Transition {
                id: self.shown.clone(),
                source,
            })?;
        effect()?;
        *phase = next;
        self.changed.notify_all();
        Ok(next)
    }

    /// Blocks until the process has exited; its status and time.
    fn wait(&self) -> (u32, SystemTime) {
        let mut phase = self.phase();
        loop {
            if let Some(exit) = phase.exit() {
                return exit;
            }
            phase = self.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct TaskState {
    id: String,
    bundle: String,
    container: LinuxContainer,
    stdio: [String; 3],
    stdin: Option<StdinForwarder>,
    life: Life,
    execs: Mutex<HashMap<String, Arc<ExecState>>>,
}

impl TaskState {
    fn container_error(&self, source: shim_container::Error) -> TaskError {
        TaskError::Container {
            id: self.id.clone(),
            source,
        }
    }

    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<ExecState>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn exec(&self, exec_id: &str) -> Result<Arc<ExecState>, TaskError> {
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("{} (exec {exec_id:?})", self.id)))
    }
}

/// A process added to a running task by `exec`; it runs from `start`.
struct ExecState {
    id: String,
    request: CreateRequest,
    stdio: [String; 3],
    stdin: Mutex<Option<StdinForwarder>>,
    /// Its host PID once started, 0 before.
    pid: Mutex<u32>,
    life: Life,
}

impl ExecState {
    fn pid(&self) -> u32 {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_stdin(&self) {
        if let Some(stdin) = self
            .stdin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            stdin.close();
        }
    }
}

/// Whether process `pid` (a container's init) runs a native program: the
/// executor names a wasm container's process `wasm-container` in `validate`,
/// before `create` returns, and it never `execve`s, so it keeps that name (a
/// guest cannot change it); a native one is renamed then and again by its
/// program. Its executable would not do: a native container's process is
/// still the shim's from `start` until it `execve`s.
fn runs_native(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => shim_container::WASM_PROCESS_NAME.to_str() != Ok(comm.trim_end()),
        // Unknown (the process is gone): the narrower answer.
        Err(_) => false,
    }
}

#[derive(Default)]
struct Registry {
    tasks: HashMap<String, Arc<TaskState>>,
    /// A process's task, and its exec id when it is an exec.
    by_pid: HashMap<i32, (String, Option<String>)>,
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

/// `error` and its sources: oci-spec says only "serde failed" and keeps
/// what failed (the field, the value, where) in its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The spec's `linux.cgroupsPath`, which tells the cgroup driver when the
/// runtime options do not.
fn cgroups_path(spec: &oci_spec::runtime::Spec) -> Option<String> {
    let path = spec.linux().as_ref()?.cgroups_path().as_ref()?;
    Some(path.display().to_string())
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

    /// `exec`: records the process; it runs from `start` (as runc's shim does).
    fn add_exec(&self, req: api::ExecProcessRequest) -> Result<(), TaskError> {
        let task = self.task(&req.id)?;
        let invalid = |reason: String| TaskError::InvalidArgument {
            id: req.id.clone(),
            reason,
        };
        // The exec id names files in the bundle (`.exec-<id>.json`).
        TaskError::check_id(&task.id, "exec", &req.exec_id)?;
        if req.terminal {
            return Err(invalid(
                "exec: a terminal (tty) is not supported by the wasmtime shim; run without -t"
                    .into(),
            ));
        }
        let process: serde_json::Value = req
            .spec
            .as_ref()
            .ok_or_else(|| invalid("exec: no process spec".into()))
            .and_then(|any| {
                serde_json::from_slice::<oci_spec::runtime::Process>(&any.value)
                    .map_err(|e| invalid(format!("exec: the process spec is not valid: {e}")))
            })
            .and_then(|process| {
                if process.args().as_ref().is_none_or(|a| a.is_empty()) {
                    return Err(invalid("exec: the process has no command".into()));
                }
                serde_json::to_value(process).map_err(|e| invalid(e.to_string()))
            })?;
        match *task.life.phase() {
            Phase::Running => {}
            phase => {
                return Err(TaskError::Transition {
                    id: task.id.clone(),
                    source: crate::lifecycle::InvalidTransition {
                        action: "exec",
                        state: match phase {
                            Phase::Created => "is created and not started",
                            _ => "has exited: there is nothing to exec into",
                        },
                    },
                })
            }
        }
        let fifo = |path: &str| (!path.is_empty()).then(|| PathBuf::from(path));
        let exec = Arc::new(ExecState {
            id: req.exec_id.clone(),
            request: CreateRequest {
                id: task.id.clone(),
                bundle: PathBuf::from(&task.bundle),
                rootfs: Vec::new(),
                stdout: fifo(&req.stdout),
                stderr: fifo(&req.stderr),
                // libcontainer takes the driver from the container's state.
                systemd_cgroup: false,
                debug: self.debug,
                layer: None,
                exec: Some(ExecProcess {
                    exec_id: req.exec_id.clone(),
                    process,
                    native_allowed: runs_native(task.container.pid()),
                }),
            },
            stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
            stdin: Mutex::new(None),
            pid: Mutex::new(0),
            life: Life::new(format!("{} (exec {:?})", task.id, req.exec_id)),
        });
        {
            let mut execs = task.execs();
            if execs.contains_key(&req.exec_id) {
                return Err(TaskError::AlreadyExists(exec.life.shown.clone()));
            }
            execs.insert(req.exec_id.clone(), exec);
        }
        log::info!("container {}: exec {:?} added", task.id, req.exec_id);
        self.publisher.publish(TaskExecAdded {
            container_id: task.id.clone(),
            exec_id: req.exec_id,
            ..Default::default()
        });
        Ok(())
    }

    fn start_exec(&self, task: &TaskState, exec: &ExecState) -> Result<u32, TaskError> {
        exec.life.transition(Transition::Start, || {
            let guest_stdin = match exec.stdio[0].as_str() {
                "" => None,
                path => {
                    let (forwarder, read_end) = StdinForwarder::start(PathBuf::from(path))
                        .map_err(|e| TaskError::InvalidArgument {
                            id: exec.life.shown.clone(),
                            reason: format!("cannot set up stdin: {e}"),
                        })?;
                    *exec.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(forwarder);
                    Some(read_end)
                }
            };
            let pid = task
                .container
                .exec(&exec.request, guest_stdin)
                .map_err(|source| {
                    exec.close_stdin();
                    TaskError::Container {
                        id: exec.life.shown.clone(),
                        source,
                    }
                })?;
            *exec.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid as u32;
            Ok(())
        })?;
        let pid = exec.pid();
        log::info!(
            "container {}: exec {:?} started, pid {pid}",
            task.id,
            exec.id
        );
        let early_exit = {
            let mut registry = self.registry();
            registry
                .by_pid
                .insert(pid as i32, (task.id.clone(), Some(exec.id.clone())));
            registry.early_exits.remove(&(pid as i32))
        };
        self.publisher.publish(TaskExecStarted {
            container_id: task.id.clone(),
            exec_id: exec.id.clone(),
            pid,
            ..Default::default()
        });
        if let Some(code) = early_exit {
            self.registry().by_pid.remove(&(pid as i32));
            record_exec_exit(task, exec, &self.publisher, code);
        }
        Ok(pid)
    }

    fn delete_exec(&self, task: &TaskState, exec: &ExecState) -> Result<DeleteResponse, TaskError> {
        let deleted = exec.life.transition(Transition::Delete, || Ok(()))?;
        exec.close_stdin();
        task.execs().remove(&exec.id);
        self.registry().by_pid.remove(&(exec.pid() as i32));
        let (code, at) = deleted.exit().unwrap_or((0, SystemTime::now()));
        self.publisher.publish(TaskDelete {
            container_id: task.id.clone(),
            id: exec.id.clone(),
            pid: exec.pid(),
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        });
        Ok(DeleteResponse {
            pid: exec.pid(),
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        })
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
                    let (task, exec_id) = {
                        let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
                        match registry.by_pid.remove(&pid).and_then(|(id, exec_id)| {
                            Some((registry.tasks.get(&id).cloned()?, exec_id))
                        }) {
                            Some(found) => found,
                            None => {
                                if registry.early_exits.len() >= MAX_EARLY_EXITS {
                                    registry.early_exits.clear();
                                }
                                registry.early_exits.insert(pid, code);
                                continue;
                            }
                        }
                    };
                    match exec_id {
                        None => record_exit(&task, &publisher, code),
                        Some(exec_id) => {
                            // An exec deleted meanwhile has nobody to tell.
                            if let Ok(exec) = task.exec(&exec_id) {
                                record_exec_exit(&task, &exec, &publisher, code)
                            }
                        }
                    }
                }
            })
            .expect("spawn the exit watcher");
    }
}

fn record_exec_exit(task: &TaskState, exec: &ExecState, publisher: &Publisher, code: u32) {
    let at = SystemTime::now();
    if exec
        .life
        .transition(Transition::Exit { code, at }, || Ok(()))
        .is_err()
    {
        return;
    }
    log::info!(
        "container {}: exec {:?} exited with status {code}",
        task.id,
        exec.id
    );
    publisher.publish(TaskExit {
        container_id: task.id.clone(),
        id: exec.id.clone(),
        pid: exec.pid(),
        exit_status: code,
        exited_at: ts(at),
        ..Default::default()
    });
}

fn record_exit(task: &TaskState, publisher: &Publisher, code: u32) {
    let at = SystemTime::now();
    if task
        .life
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
        // The id names the container's state directory and its cgroup;
        // every other call finds the task by id in the registry.
        TaskError::check_id(&id, "task", &id)?;
        if self.registry().tasks.contains_key(&id) {
            return Err(TaskError::AlreadyExists(id).into());
        }
        // A spec that cannot be read fails here, with its own error, rather
        // than later with one about what it was taken to mean.
        let spec = oci_spec::runtime::Spec::load(PathBuf::from(&req.bundle).join("config.json"))
            .map_err(|e| TaskError::InvalidArgument {
                id: id.clone(),
                reason: format!(
                    "its runtime spec (config.json) is not valid: {}",
                    with_causes(&e)
                ),
            })?;
        // containerd passes `terminal` on only when its client asked for a
        // TTY itself; a spec given whole may ask in `process.terminal`.
        let spec_terminal = spec.process().as_ref().and_then(|p| p.terminal());
        if req.terminal || spec_terminal == Some(true) {
            return Err(TaskError::InvalidArgument {
                id,
                reason:
                    "a terminal (tty) is not supported by the wasmtime shim yet; run without -t"
                        .into(),
            }
            .into());
        }
        let systemd_cgroup = RuntimeOptions::from_any(req.options.as_ref())
            .map(|options| options.systemd(cgroups_path(&spec).as_deref()))
            .map_err(|reason| TaskError::InvalidArgument {
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
                exec: None,
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
            life: Life::new(id.clone()),
            execs: Mutex::default(),
        });
        let early_exit = {
            let mut registry = self.registry();
            registry.tasks.insert(id.clone(), task.clone());
            registry.by_pid.insert(pid, (id.clone(), None));
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
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let pid = self.start_exec(&task, &*task.exec(&req.exec_id)?)?;
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }
        task.life.transition(Transition::Start, || {
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
        let task = self.task(&req.id)?;
        let exec = (!req.exec_id.is_empty())
            .then(|| task.exec(&req.exec_id))
            .transpose()?;
        let (life, pid, stdio) = match &exec {
            Some(exec) => (&exec.life, exec.pid(), &exec.stdio),
            None => (&task.life, task.container.pid() as u32, &task.stdio),
        };
        let phase = *life.phase();
        let status = match phase {
            Phase::Created => Status::CREATED,
            Phase::Running => Status::RUNNING,
            Phase::Stopped { .. } | Phase::Deleted { .. } => Status::STOPPED,
        };
        let mut response = StateResponse {
            id: exec
                .as_ref()
                .map_or_else(|| task.id.clone(), |e| e.id.clone()),
            exec_id: req.exec_id.clone(),
            bundle: task.bundle.clone(),
            pid,
            stdin: stdio[0].clone(),
            stdout: stdio[1].clone(),
            stderr: stdio[2].clone(),
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
        let task = self.task(&req.id)?;
        let (code, at) = if req.exec_id.is_empty() {
            task.life.wait()
        } else {
            task.exec(&req.exec_id)?.life.wait()
        };
        Ok(WaitResponse {
            exit_status: code,
            exited_at: ts(at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = task.exec(&req.exec_id)?;
            let error = |source| TaskError::Container {
                id: exec.life.shown.clone(),
                source,
            };
            // Held while signalling: the exit cannot be recorded in between.
            let phase = exec.life.phase();
            match *phase {
                Phase::Running => {}
                Phase::Created => {
                    return Err(TaskError::Transition {
                        id: exec.life.shown.clone(),
                        source: crate::lifecycle::InvalidTransition {
                            action: "kill",
                            state: "is not started",
                        },
                    }
                    .into())
                }
                // As runc's shim: an exited process is NOT_FOUND, which CRI's
                // ExecSync timeout path expects.
                _ => return Err(error(shim_container::Error::NotRunning).into()),
            }
            let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|_| error(shim_container::Error::Signal(req.signal as i32)))?;
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(exec.pid() as i32), signal) {
                Ok(()) => {}
                Err(nix::errno::Errno::ESRCH) => {
                    return Err(error(shim_container::Error::NotRunning).into())
                }
                Err(e) => {
                    return Err(error(shim_container::Error::Runtime {
                        what: "cannot signal the exec",
                        reason: e.to_string(),
                    })
                    .into())
                }
            }
            return Ok(Empty::new());
        }
        if task.life.phase().exit().is_some() {
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
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            return Ok(self.delete_exec(&task, &*task.exec(&req.exec_id)?)?);
        }
        let deleted = task.life.transition(Transition::Delete, || {
            task.container.delete().map_err(|e| task.container_error(e))
        })?;
        if let Some(stdin) = &task.stdin {
            stdin.close();
        }
        {
            let mut registry = self.registry();
            registry.tasks.remove(&task.id);
            registry.by_pid.remove(&task.container.pid());
            // Execs still running die with the container (its cgroup is
            // killed and removed); their exits may come after their PIDs
            // are forgotten, so they are recorded here and waiters woken.
            for (_, exec) in task.execs().drain() {
                exec.close_stdin();
                registry.by_pid.remove(&(exec.pid() as i32));
                if *exec.life.phase() == Phase::Running {
                    record_exec_exit(&task, &exec, &self.publisher, 128 + 9);
                }
            }
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
        let pids = match *task.life.phase() {
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
        let task = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            task.exec(&req.exec_id)?.close_stdin();
        } else if let Some(stdin) = &task.stdin {
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

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        self.add_exec(req)?;
        Ok(Empty::new())
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
