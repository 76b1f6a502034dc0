//! The service's logic without containerd or Linux: a runtime whose
//! containers record what they are asked, and a recorder for events. The
//! races here (an exit before its process is known, a call during a create)
//! are forced, not hoped for. The e2e suites in test/ drive the real thing.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, StartRequest, StateRequest,
    Status,
};
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{TaskDelete, TaskExit};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::ExitSignal;
use shim_container::rootfs::RootfsMount;
use shim_container::{Bundle, CreateRequest, Error, ExecProcess, LayerFile, Stats};

use super::TaskService;
use crate::error::TaskError;
use crate::events::EventSink;
use crate::lifecycle::KILLED_EXIT_STATUS;
use crate::runtime::{Container, Runtime};

/// Runs inside a fake `create` or `exec`, with the new process's pid.
type Hook = Box<dyn Fn(i32) + Send>;

/// What the fake containers were asked, and hooks into their calls.
#[derive(Default)]
struct World {
    next_pid: AtomicI32,
    /// `(pid, signal)`; pid 0 for "every process".
    signals: Mutex<Vec<(i32, i32)>>,
    deleted: Mutex<Vec<String>>,
    /// Runs inside `create` / `exec` with the new pid, before it returns.
    during_create: Mutex<Option<Hook>>,
    during_exec: Mutex<Option<Hook>>,
    fail_create: Mutex<Option<String>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<World>);

struct FakeContainer {
    id: String,
    pid: i32,
    world: Arc<World>,
}

impl Fake {
    fn pid(&self) -> i32 {
        1000 + self.0.next_pid.fetch_add(1, Ordering::SeqCst)
    }
}

impl Runtime for Fake {
    type Container = FakeContainer;

    fn wasm_layer(
        &self,
        _: &str,
        _: &Bundle,
        _: &[RootfsMount],
    ) -> Result<Option<LayerFile>, String> {
        Ok(None)
    }

    fn create(&self, request: &CreateRequest, _: Option<OwnedFd>) -> Result<FakeContainer, Error> {
        if let Some(reason) = self.0.fail_create.lock().unwrap().clone() {
            return Err(Error::Create(reason));
        }
        let pid = self.pid();
        if let Some(hook) = &*self.0.during_create.lock().unwrap() {
            hook(pid);
        }
        Ok(FakeContainer {
            id: request.id.clone(),
            pid,
            world: self.0.clone(),
        })
    }
}

impl Container for FakeContainer {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn start(&self) -> Result<(), Error> {
        Ok(())
    }
    fn exec(&self, _: &ExecProcess, _: Option<OwnedFd>) -> Result<i32, Error> {
        let pid = Fake(self.world.clone()).pid();
        if let Some(hook) = &*self.world.during_exec.lock().unwrap() {
            hook(pid);
        }
        Ok(pid)
    }
    fn signal(&self, pid: i32, signal: i32) -> Result<(), Error> {
        self.world.signals.lock().unwrap().push((pid, signal));
        Ok(())
    }
    fn signal_all(&self, signal: i32) -> Result<(), Error> {
        self.signal(0, signal)
    }
    fn pids(&self) -> Result<Vec<i32>, Error> {
        Ok(vec![self.pid])
    }
    fn stats(&self) -> Result<Stats, Error> {
        Ok(Stats::default())
    }
    fn watch_oom(&self, _: Box<dyn Fn() + Send>) -> Result<(), Error> {
        Ok(())
    }
    fn delete(&self) -> Result<(), Error> {
        self.world.deleted.lock().unwrap().push(self.id.clone());
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Box<dyn Event + Send>>>>);

impl EventSink for Recorder {
    fn publish(&self, event: Box<dyn Event + Send>) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn topics(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|e| e.topic()).collect()
    }

    /// The events of type `M`, in order.
    fn of<M: containerd_shim::protos::protobuf::MessageFull>(&self) -> Vec<M> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| {
                let message: &dyn MessageDyn = &**e;
                message.downcast_ref::<M>().cloned()
            })
            .collect()
    }
}

type Service = TaskService<Fake, Recorder>;

struct Setup {
    service: Arc<Service>,
    world: Arc<World>,
    events: Recorder,
    bundle: tempfile::TempDir,
}

fn setup() -> Setup {
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/app.wasm"],"cwd":"/"},"root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    let fake = Fake::default();
    let events = Recorder::default();
    let world = fake.0.clone();
    let service = TaskService::with(fake, events.clone(), false, Arc::new(ExitSignal::default()));
    Setup {
        service: Arc::new(service),
        world,
        events,
        bundle,
    }
}

impl Setup {
    fn create(&self, id: &str) -> Result<u32, TaskError> {
        self.service.create_task(&CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle.path().display().to_string(),
            ..Default::default()
        })
    }

    fn start(&self, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        self.service.start_process(&StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })
    }

    fn state(&self, id: &str, exec_id: &str) -> (Status, u32) {
        let state = self
            .service
            .process_state(&StateRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .unwrap();
        (state.status(), state.exit_status)
    }

    fn kill(&self, id: &str, exec_id: &str, all: bool) -> Result<(), TaskError> {
        self.service.signal_process(&KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal: 9,
            all,
            ..Default::default()
        })
    }

    fn delete(&self, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        self.service
            .delete_process(&DeleteRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .map(|r| r.exit_status)
    }

    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<(), TaskError> {
        let process = serde_json::json!({"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/"});
        self.service.add_exec(&ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(Any {
                value: serde_json::to_vec(&process).unwrap(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    fn exited(&self, pid: u32, code: u32) {
        self.service.tasks.exited(pid as i32, code);
    }
}

fn code(error: TaskError) -> containerd_shim::protos::ttrpc::Code {
    match containerd_shim::protos::ttrpc::Error::from(error) {
        containerd_shim::protos::ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("unexpected {other:?}"),
    }
}

use containerd_shim::protos::ttrpc::Code;

#[test]
fn a_task_lives_created_running_stopped_deleted_with_its_events() {
    let s = setup();
    let pid = s.create("c1").unwrap();
    assert_eq!(s.state("c1", ""), (Status::CREATED, 0));
    assert_eq!(s.start("c1", "").unwrap(), pid);
    assert_eq!(s.state("c1", ""), (Status::RUNNING, 0));
    s.exited(pid, 3);
    assert_eq!(s.state("c1", ""), (Status::STOPPED, 3));
    assert_eq!(s.service.tasks.get("c1").unwrap().init.wait().0, 3);
    assert_eq!(s.delete("c1", "").unwrap(), 3);
    assert_eq!(*s.world.deleted.lock().unwrap(), ["c1"]);
    assert_eq!(
        s.events.topics(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_eq!(s.events.of::<TaskDelete>()[0].exit_status, 3);
    assert!(matches!(
        s.service.tasks.get("c1"),
        Err(TaskError::NotFound(_))
    ));
    assert!(s.service.tasks.is_empty());
}

#[test]
fn an_exit_that_comes_during_create_is_not_lost() {
    let s = setup();
    let service = s.service.clone();
    *s.world.during_create.lock().unwrap() =
        Some(Box::new(move |pid| service.tasks.exited(pid, 7)));
    s.create("c1").unwrap();
    assert_eq!(s.state("c1", ""), (Status::STOPPED, 7));
    // TaskExit after TaskCreate: containerd drops an exit of a task it does not know.
    assert_eq!(s.events.topics(), ["/tasks/create", "/tasks/exit"]);
    assert_eq!(s.events.of::<TaskExit>()[0].exit_status, 7);
}

#[test]
fn an_exit_that_comes_during_an_exec_start_is_not_lost() {
    let s = setup();
    let pid = s.create("c1").unwrap();
    s.start("c1", "").unwrap();
    let service = s.service.clone();
    *s.world.during_exec.lock().unwrap() = Some(Box::new(move |pid| service.tasks.exited(pid, 5)));
    s.exec("c1", "e1", &["/probe.wasm"]).unwrap();
    let exec_pid = s.start("c1", "e1").unwrap();
    assert_ne!(exec_pid, pid);
    assert_eq!(s.state("c1", "e1"), (Status::STOPPED, 5));
    assert_eq!(s.state("c1", ""), (Status::RUNNING, 0), "the init runs on");
    let exits = s.events.of::<TaskExit>();
    assert_eq!((exits[0].id.as_str(), exits[0].pid), ("e1", exec_pid));
    let topics = s.events.topics();
    assert_eq!(
        topics[topics.len() - 2..],
        ["/tasks/exec-started", "/tasks/exit"]
    );
}

#[test]
fn deleting_a_task_ends_its_execs_as_killed() {
    let s = setup();
    let pid = s.create("c1").unwrap();
    s.start("c1", "").unwrap();
    s.exec("c1", "e1", &["/a.wasm"]).unwrap();
    s.start("c1", "e1").unwrap();
    s.exec("c1", "e2", &["/b.wasm"]).unwrap(); // added, never started
    let e1 = s.service.tasks.get("c1").unwrap().process("e1").unwrap();
    let (waited, wait_result) = mpsc::channel();
    std::thread::spawn(move || waited.send(e1.wait().0));
    s.kill("c1", "", true).unwrap();
    assert_eq!(
        *s.world.signals.lock().unwrap(),
        [(0, 9)],
        "kill --all signals the cgroup"
    );
    s.exited(pid, 137);
    s.delete("c1", "").unwrap();
    let status = wait_result.recv_timeout(Duration::from_secs(5));
    assert_eq!(
        status,
        Ok(KILLED_EXIT_STATUS),
        "a waiter on the exec is answered"
    );
    let exits: Vec<_> = s
        .events
        .of::<TaskExit>()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(exits, ["c1", "e1"], "an exec never started has no exit");
    assert!(matches!(
        s.service.tasks.get("c1"),
        Err(TaskError::NotFound(_))
    ));
}

#[test]
fn a_call_during_a_create_waits_for_it_and_a_second_create_is_refused() {
    let s = setup();
    s.create("other").unwrap();
    let (entered, inside) = mpsc::channel();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    *s.world.during_create.lock().unwrap() = Some(Box::new(move |_| {
        entered.send(()).unwrap();
        gate.lock().unwrap().recv().unwrap();
    }));
    let service = s.service.clone();
    let bundle = s.bundle.path().display().to_string();
    let creating = std::thread::spawn(move || {
        service.create_task(&CreateTaskRequest {
            id: "c1".into(),
            bundle,
            ..Default::default()
        })
    });
    inside.recv().unwrap();
    // Another task is not held up by the create.
    s.kill("other", "", false).unwrap();
    assert!(matches!(s.create("c1"), Err(TaskError::AlreadyExists(_))));
    let service = s.service.clone();
    let (killed, kill_done) = mpsc::channel();
    let killer = std::thread::spawn(move || {
        let result = service.signal_process(&KillRequest {
            id: "c1".into(),
            signal: 15,
            ..Default::default()
        });
        killed.send(()).unwrap();
        result
    });
    assert!(
        kill_done.recv_timeout(Duration::from_millis(200)).is_err(),
        "a kill of a task being created waits for the create"
    );
    release.send(()).unwrap();
    let pid = creating.join().unwrap().unwrap();
    killer.join().unwrap().unwrap();
    let signals = s.world.signals.lock().unwrap().clone();
    assert_eq!(
        signals.last(),
        Some(&(pid as i32, 15)),
        "then it signals the new task"
    );
}

#[test]
fn kill_says_what_state_the_process_is_in() {
    let s = setup();
    let pid = s.create("c1").unwrap();
    s.kill("c1", "", false)
        .expect("a created task can be killed");
    s.start("c1", "").unwrap();
    s.exec("c1", "e1", &["/a.wasm"]).unwrap();
    assert_eq!(
        code(s.kill("c1", "e1", false).unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    let exec_pid = s.start("c1", "e1").unwrap();
    s.kill("c1", "e1", true).unwrap();
    assert_eq!(
        s.world.signals.lock().unwrap().last(),
        Some(&(exec_pid as i32, 9)),
        "an exec is signalled alone, even with --all"
    );
    s.exited(exec_pid, 137);
    s.exited(pid, 0);
    // containerd and CRI read NOT_FOUND as "already finished".
    assert_eq!(
        code(s.kill("c1", "e1", false).unwrap_err()),
        Code::NOT_FOUND
    );
    assert_eq!(code(s.kill("c1", "", false).unwrap_err()), Code::NOT_FOUND);
    assert_eq!(
        code(s.kill("nope", "", false).unwrap_err()),
        Code::NOT_FOUND
    );
}

#[test]
fn an_exec_is_refused_with_a_reason() {
    let s = setup();
    s.create("c1").unwrap();
    let e = s.exec("c1", "e1", &["/a.wasm"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "container c1: cannot exec: the task is created and not started"
    );
    s.start("c1", "").unwrap();
    let e = s.exec("c1", "e1", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "container c1 (exec \"e1\"): the process has no command"
    );
    let e = s.exec("c1", "../e1", &["/a.wasm"]).unwrap_err();
    assert_eq!(code(e), Code::INVALID_ARGUMENT);
    s.exec("c1", "e1", &["/a.wasm"]).unwrap();
    assert_eq!(
        code(s.exec("c1", "e1", &["/a.wasm"]).unwrap_err()),
        Code::ALREADY_EXISTS
    );
    let e = s
        .service
        .add_exec(&ExecProcessRequest {
            id: "c1".into(),
            exec_id: "tty".into(),
            terminal: true,
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("a terminal (tty) is not supported"),
        "{e}"
    );
    assert_eq!(
        code(s.delete("c1", "").unwrap_err()),
        Code::FAILED_PRECONDITION
    );
}

#[test]
fn a_create_that_fails_leaves_the_id_free() {
    let s = setup();
    *s.world.fail_create.lock().unwrap() = Some("entrypoint \"/x.wasm\" not found".into());
    let e = s.create("c1").unwrap_err();
    assert_eq!(
        e.to_string(),
        "container c1: entrypoint \"/x.wasm\" not found"
    );
    assert_eq!(code(e), Code::INVALID_ARGUMENT);
    assert!(s.service.tasks.is_empty());
    *s.world.fail_create.lock().unwrap() = None;
    s.create("c1").expect("the id is free again");
    assert_eq!(
        s.events.topics(),
        ["/tasks/create"],
        "no event for the failed create"
    );
}

#[test]
fn a_bundle_that_cannot_be_run_is_refused_before_any_container() {
    let s = setup();
    let config = s.bundle.path().join("config.json");
    std::fs::write(&config, r#"{"ociVersion":"1.0.2","process":{"args":"x"}}"#).unwrap();
    let e = s.create("c1").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("container c1: its runtime spec (config.json) is not valid: "),
        "{e}"
    );
    std::fs::write(
        &config,
        r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"args":["/a.wasm"],"cwd":"/","terminal":true}}"#,
    )
    .unwrap();
    let e = s.create("c1").unwrap_err();
    assert!(matches!(e, TaskError::Terminal { .. }), "{e}");
    assert_eq!(
        s.world.next_pid.load(Ordering::SeqCst),
        0,
        "no container was made"
    );
    assert!(s.service.tasks.is_empty());
}
