//! The service's logic without containerd or Linux: a runtime whose
//! containers record what they are asked, and a recorder for events. The
//! races here (an exit before its process is known, a call during a create)
//! are forced, not hoped for. The e2e suites in test/ drive the real thing.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, StartRequest, StateRequest,
    Status,
};
use containerd_shim::protos::events::task::{TaskDelete, TaskExit};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::ExitSignal;

use super::TaskService;
use crate::error::TaskError;
use crate::lifecycle::KILLED_EXIT_STATUS;

mod fake;
use fake::{Fake, Recorder, World};

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
fn an_oom_kill_the_watcher_has_not_reported_is_published_before_the_exit() {
    let s = setup();
    let pid = s.create("c1").unwrap();
    s.start("c1", "").unwrap();
    // The kernel counted the kill; its notification has not come yet.
    s.world.oom_pending.store(true, Ordering::SeqCst);
    s.exited(pid, 137);
    let topics = s.events.topics();
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    assert!(
        oom.is_some() && oom < exit,
        "TaskOOM, then TaskExit: {topics:?}"
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
    assert_eq!(
        s.world.next_pid.load(Ordering::SeqCst),
        0,
        "no container was made"
    );
    assert!(s.service.tasks.is_empty());
}

#[test]
fn a_terminal_comes_from_the_container_and_its_output_precedes_the_exit() {
    let s = setup();
    let stdout = s.bundle.path().join("stdout");
    std::fs::write(&stdout, b"").unwrap();
    let pid = s
        .service
        .create_task(&CreateTaskRequest {
            id: "c1".into(),
            bundle: s.bundle.path().display().to_string(),
            terminal: true,
            stdout: stdout.display().to_string(),
            ..Default::default()
        })
        .unwrap();
    let leftover: Vec<_> = std::fs::read_dir(s.bundle.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().contains("console"))
        .collect();
    assert!(
        leftover.is_empty(),
        "the console socket is gone: {leftover:?}"
    );
    s.start("c1", "").unwrap();
    let slave = std::fs::File::from(s.world.terminal.lock().unwrap().take().unwrap());
    let mut termios = nix::sys::termios::tcgetattr(&slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut termios);
    nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &termios).unwrap();
    s.service
        .tasks
        .get("c1")
        .unwrap()
        .init
        .resize(120, 30)
        .unwrap();
    let mut size = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer.
    let read = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&slave),
            libc::TIOCGWINSZ,
            &mut size,
        )
    };
    assert_eq!((read, size.ws_col, size.ws_row), (0, 120, 30));
    std::io::Write::write_all(&mut &slave, b"last words").unwrap();
    drop(slave); // the guest exits: its end of the pty closes
    s.exited(pid, 0);
    assert_eq!(
        std::fs::read(&stdout).unwrap(),
        b"last words",
        "its output is copied out before its exit is recorded"
    );
    assert_eq!(s.state("c1", ""), (Status::STOPPED, 0));
}

#[test]
fn a_running_task_pauses_and_resumes_with_its_events() {
    let s = setup();
    let pid = s.create("c1").unwrap();
    let refused = s.service.freeze_task("c1", true).unwrap_err();
    assert!(
        refused.to_string().contains("is created and not started"),
        "{refused}"
    );
    s.start("c1", "").unwrap();
    s.exec("c1", "e1", &["/tool.wasm"]).unwrap();
    s.start("c1", "e1").unwrap();
    s.service.freeze_task("c1", true).unwrap();
    assert_eq!(s.state("c1", ""), (Status::PAUSED, 0));
    assert_eq!(s.state("c1", "e1"), (Status::PAUSED, 0), "frozen with it");
    let refused = s.exec("c1", "e2", &["/tool.wasm"]).unwrap_err();
    assert!(refused.to_string().contains("is paused"), "{refused}");
    let refused = s.delete("c1", "").unwrap_err();
    assert!(refused.to_string().contains("resume or kill"), "{refused}");
    s.service.freeze_task("c1", false).unwrap();
    assert_eq!(s.state("c1", ""), (Status::RUNNING, 0));
    let refused = s.service.freeze_task("c1", false).unwrap_err();
    assert!(refused.to_string().contains("is not paused"), "{refused}");
    assert_eq!(*s.world.freezes.lock().unwrap(), [true, false]);
    let topics = s.events.topics();
    let paused = topics.iter().position(|t| t == "/tasks/paused");
    let resumed = topics.iter().position(|t| t == "/tasks/resumed");
    assert!(paused.is_some() && paused < resumed, "{topics:?}");
    // Killed while paused: SIGKILL thaws it (cgroup v1 holds a frozen
    // process's death until then), and its exit ends the pause.
    s.service.freeze_task("c1", true).unwrap();
    s.kill("c1", "", false).unwrap();
    assert_eq!(*s.world.freezes.lock().unwrap(), [true, false, true, false]);
    s.exited(pid, 137);
    assert_eq!(s.state("c1", ""), (Status::STOPPED, 137));
}

#[test]
fn resources_are_updated_as_containerd_sends_them_until_the_task_exits() {
    use containerd_shim::api;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::MessageField;
    let s = setup();
    let pid = s.create("c1").unwrap();
    let update = |type_url: &str, json: &str| {
        s.service.update_task(&api::UpdateTaskRequest {
            id: "c1".into(),
            resources: MessageField::some(Any {
                type_url: type_url.into(),
                value: json.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    const LINUX: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
    update(
        LINUX,
        r#"{"memory":{"limit":134217728},"cpu":{"quota":50000,"period":100000}}"#,
    )
    .unwrap();
    s.start("c1", "").unwrap();
    update(LINUX, r#"{"pids":{"limit":64}}"#).unwrap();
    let updates = s.world.updates.lock().unwrap().clone();
    assert_eq!(updates.len(), 2);
    let memory = updates[0].memory().as_ref().and_then(|m| m.limit());
    assert_eq!(memory, Some(128 << 20));
    assert_eq!(updates[1].pids().as_ref().map(|p| p.limit()), Some(64));
    let refused = update(
        "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources",
        "{}",
    )
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .starts_with("container c1: resources of type"),
        "{refused}"
    );
    let refused = update(LINUX, r#"{"memory":{"limit":"lots"}}"#).unwrap_err();
    assert!(refused.to_string().contains("not valid"), "{refused}");
    s.exited(pid, 0);
    let refused = update(LINUX, "{}").unwrap_err();
    assert!(
        refused.to_string().contains("has already exited"),
        "{refused}"
    );
    assert_eq!(s.world.updates.lock().unwrap().len(), 2);
}
