//! One process of a task, its init or an exec: what containerd asks about
//! either one by `(id, exec_id)`, so that no handler branches on which it is
//! except where they truly differ (how it starts, what delete removes).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use containerd_shim::protos::events::task::{TaskDelete, TaskExit};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use shim_container::ExecProcess;

use crate::error::TaskError;
use crate::lifecycle::{Phase, Transition};
use crate::stdin::StdinForwarder;
use crate::tty::Console;

/// How long an exit waits for its terminal's last output.
const OUTPUT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// containerd's stdio paths for a process: stdin, stdout, stderr (empty: none).
pub(crate) type Stdio = [String; 3];

pub(crate) struct Process {
    /// The task's id, and the exec's id for an exec.
    task_id: String,
    exec_id: Option<String>,
    /// How errors name it after "container": `X`, or `X (exec "E")`.
    pub shown: String,
    pub stdio: Stdio,
    /// An exec's process, run by `start`; `None` for the init.
    pub spec: Option<ExecProcess>,
    stdin: Mutex<Option<StdinForwarder>>,
    /// Its terminal, when it has one (`crate::tty`).
    console: Mutex<Option<Console>>,
    /// Its host PID; 0 until an exec starts.
    pid: AtomicU32,
    /// Lock order: taken after the registry's and the task's exec table's
    /// locks, never before (see `service/mod.rs`).
    phase: Mutex<Phase>,
    changed: Condvar,
}

pub(crate) fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(Timestamp::from(at))
}

impl Process {
    /// A task's init, created: its pid is the container's.
    pub fn init(task_id: &str, stdio: Stdio, stdin: Option<StdinForwarder>, pid: i32) -> Self {
        Self::new(task_id, None, stdio, None, stdin, pid as u32)
    }

    /// An exec, added and not started.
    pub fn exec(task_id: &str, spec: ExecProcess, stdio: Stdio) -> Self {
        Self::new(
            task_id,
            Some(spec.exec_id.clone()),
            stdio,
            Some(spec),
            None,
            0,
        )
    }

    fn new(
        task_id: &str,
        exec_id: Option<String>,
        stdio: Stdio,
        spec: Option<ExecProcess>,
        stdin: Option<StdinForwarder>,
        pid: u32,
    ) -> Self {
        let shown = match &exec_id {
            Some(exec_id) => format!("{task_id} (exec {exec_id:?})"),
            None => task_id.to_string(),
        };
        Self {
            task_id: task_id.to_string(),
            exec_id,
            shown,
            stdio,
            spec,
            stdin: Mutex::new(stdin),
            console: Mutex::new(None),
            pid: AtomicU32::new(pid),
            phase: Mutex::new(Phase::Created),
            changed: Condvar::new(),
        }
    }

    /// The id containerd's events give it: the exec id, or the task id.
    pub fn id(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.task_id)
    }

    pub fn exec_id(&self) -> Option<&str> {
        self.exec_id.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }

    pub fn set_pid(&self, pid: i32) {
        self.pid.store(pid as u32, Ordering::Release);
    }

    pub fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves through `transition`. `effect` runs first, with the phase held
    /// so that no exit is recorded in between; the phase changes only if the
    /// transition is valid and `effect` succeeds.
    pub fn transition(
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

    /// Records its exit with `code`; the TaskExit event to publish, or
    /// `None` when it had already exited or was deleted.
    pub fn exited(&self, code: u32) -> Option<TaskExit> {
        let at = SystemTime::now();
        self.transition(Transition::Exit { code, at }, || Ok(()))
            .ok()?;
        log::info!("container {}: exited with status {code}", self.shown);
        Some(TaskExit {
            container_id: self.task_id.clone(),
            id: self.id().to_string(),
            pid: self.pid(),
            exit_status: code,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }

    /// The TaskDelete event of this process, deleted in phase `deleted`.
    pub fn deleted(&self, deleted: Phase) -> TaskDelete {
        let (code, at) = deleted.exit().unwrap_or((0, SystemTime::now()));
        TaskDelete {
            container_id: self.task_id.clone(),
            id: self.id().to_string(),
            pid: self.pid(),
            exit_status: code,
            exited_at: timestamp(at),
            ..Default::default()
        }
    }

    /// Blocks until the process has exited; its status and time.
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut phase = self.phase();
        loop {
            if let Some(exit) = phase.exit() {
                return exit;
            }
            phase = self.changed.wait(phase).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn set_stdin(&self, forwarder: StdinForwarder) {
        *self.stdin.lock().unwrap_or_else(|e| e.into_inner()) = Some(forwarder);
    }

    pub fn set_console(&self, console: Console) {
        *self.console.lock().unwrap_or_else(|e| e.into_inner()) = Some(console);
    }

    /// `ResizePty`; a process without a terminal has no size to set.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), TaskError> {
        let console = self.console.lock().unwrap_or_else(|e| e.into_inner());
        let Some(console) = console.as_ref() else {
            return Err(TaskError::InvalidArgument {
                id: self.shown.clone(),
                reason: "it has no terminal to resize".into(),
            });
        };
        console
            .resize(width, height)
            .map_err(|e| TaskError::InvalidArgument {
                id: self.shown.clone(),
                reason: format!("cannot resize its terminal: {e}"),
            })
    }

    /// With a terminal, waits (briefly) until its last output is copied
    /// out, so that containerd sees the exit after the output.
    pub fn drain_output(&self) {
        if let Some(console) = &*self.console.lock().unwrap_or_else(|e| e.into_inner()) {
            console.wait_output(OUTPUT_PATIENCE);
        }
    }

    /// Closes the process's stdin (containerd's CloseIO, or its end).
    pub fn close_stdin(&self) {
        if let Some(console) = &*self.console.lock().unwrap_or_else(|e| e.into_inner()) {
            console.close_stdin();
        }
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
