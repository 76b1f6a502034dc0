//! `containerd-shim-noop-v1`: a shim that runs nothing, for `make bench`'s
//! floor. Every task "exits" with 0 as soon as it is started, so a
//! `ctr run --rm` or a CRI pod through it costs only what containerd, `ctr`
//! and the shim protocol cost (starting a shim, its socket, the task RPCs,
//! the exit event): the part of a start no runtime can cut. A CRI pod's
//! sandbox is the exception: it "runs" until it is killed, as the pause
//! process does, since containerd's CRI needs it for the pod's containers.
//! Tasks are grouped by the CRI sandbox-id annotation into one server, as
//! the wasmtime shim and runc's group them, so "a pod" is one process here
//! too.
//!
//! containerd runs it by absolute path (`ctr run --runtime
//! /path/containerd-shim-noop-v1`, or a CRI handler's `runtime_type`).

use std::collections::HashMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim::shim_ttrpc::Task;
use containerd_shim::protos::types::task::Status;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    api, spawn, Config, DeleteResponse, Error, ExitSignal, Flags, Shim, StartOpts, TtrpcContext,
    TtrpcResult,
};

const SANDBOX_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

struct NoopShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// Where a task is.
#[derive(Clone, Copy, PartialEq)]
enum State {
    Created,
    /// A CRI sandbox, started: it runs until killed.
    Running,
    Exited,
}

/// A task: where it is, and whether it runs until killed (a CRI sandbox).
struct Entry {
    state: State,
    until_killed: bool,
}

#[derive(Default)]
struct Tasks {
    tasks: HashMap<String, Entry>,
}

struct Service {
    tasks: Mutex<Tasks>,
    exited: Condvar,
    events: Mutex<Sender<(&'static str, Box<dyn MessageDyn>)>>,
    exit: Arc<ExitSignal>,
}

fn now() -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(SystemTime::now()))
}

impl Service {
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let _ = self.events.lock().unwrap().send((topic, event));
    }

    /// Wakes the task's waiters and publishes its exit (status 0).
    fn exit_task(&self, id: String) {
        self.exited.notify_all();
        self.publish(
            "/tasks/exit",
            Box::new(TaskExit {
                container_id: id.clone(),
                id,
                pid: std::process::id(),
                exit_status: 0,
                exited_at: now(),
                ..Default::default()
            }),
        );
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let until_killed = annotation(&req.bundle, CONTAINER_TYPE).as_deref() == Some("sandbox");
        self.tasks.lock().unwrap().tasks.insert(
            req.id.clone(),
            Entry {
                state: State::Created,
                until_killed,
            },
        );
        let pid = std::process::id();
        self.publish(
            "/tasks/create",
            Box::new(TaskCreate {
                container_id: req.id,
                bundle: req.bundle,
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = std::process::id();
        let exits = {
            let mut tasks = self.tasks.lock().unwrap();
            let Some(entry) = tasks.tasks.get_mut(&req.id) else {
                return Err(Error::NotFoundError(req.id).into());
            };
            entry.state = if entry.until_killed {
                State::Running
            } else {
                State::Exited
            };
            entry.state == State::Exited
        };
        self.publish(
            "/tasks/start",
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            }),
        );
        if exits {
            self.exit_task(req.id);
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self
            .tasks
            .lock()
            .unwrap()
            .tasks
            .get(&req.id)
            .map(|e| e.state);
        let Some(state) = state else {
            return Err(Error::NotFoundError(req.id).into());
        };
        Ok(api::StateResponse {
            id: req.id,
            pid: std::process::id(),
            status: match state {
                State::Created => Status::CREATED,
                State::Running => Status::RUNNING,
                State::Exited => Status::STOPPED,
            }
            .into(),
            exited_at: if state == State::Exited {
                now()
            } else {
                MessageField::none()
            },
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut tasks = self.tasks.lock().unwrap();
        while tasks
            .tasks
            .get(&req.id)
            .is_some_and(|e| e.state != State::Exited)
        {
            tasks = self.exited.wait(tasks).unwrap();
        }
        Ok(api::WaitResponse {
            exit_status: 0,
            exited_at: now(),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let running = {
            let mut tasks = self.tasks.lock().unwrap();
            match tasks.tasks.get_mut(&req.id) {
                Some(entry) if entry.state == State::Running => {
                    entry.state = State::Exited;
                    true
                }
                _ => false,
            }
        };
        if running {
            self.exit_task(req.id);
        }
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        self.tasks.lock().unwrap().tasks.remove(&req.id);
        self.exited.notify_all();
        let pid = std::process::id();
        self.publish(
            "/tasks/delete",
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id,
                pid,
                exit_status: 0,
                exited_at: now(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: 0,
            exited_at: now(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, _req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        Ok(api::PidsResponse::default())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks.lock().unwrap().tasks.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

/// An annotation of the bundle's spec.
fn annotation(bundle: &str, name: &str) -> Option<String> {
    let spec = std::fs::read(std::path::Path::new(bundle).join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&spec).ok()?;
    spec["annotations"][name].as_str().map(str::to_string)
}

impl Shim for NoopShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            namespace: args.namespace.clone(),
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = annotation(".", SANDBOX_ANNOTATION).unwrap_or_else(|| opts.id.clone());
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        let serving = address
            .strip_prefix("unix://")
            .is_some_and(|path| std::os::unix::net::UnixStream::connect(path).is_ok());
        let address = if serving {
            address
        } else {
            spawn(opts, &grouping, Vec::new())?.1
        };
        std::fs::write("address", &address).map_err(|e| Error::Other(e.to_string()))?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: now(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let (events, queue) = channel::<(&'static str, Box<dyn MessageDyn>)>();
        let namespace = self.namespace.clone();
        std::thread::spawn(move || {
            for (topic, event) in queue {
                let _ = publisher.publish(Default::default(), topic, &namespace, event);
            }
        });
        Service {
            tasks: Mutex::default(),
            exited: Condvar::new(),
            events: Mutex::new(events),
            exit: self.exit.clone(),
        }
    }
}

fn main() {
    containerd_shim::run::<NoopShim>("io.containerd.noop.v1", None);
}
