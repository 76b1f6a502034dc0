//! The shim's tasks, and exit routing: which task and process a reaped PID
//! belongs to, including an exit that arrives before its process is known
//! (a guest that ends while its create or exec is still returning).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::TaskError;
use crate::events::EventSink;
use crate::lifecycle::{Phase, KILLED_EXIT_STATUS};
use crate::runtime::Container;

use super::process::Process;

/// Exits of processes the service does not know (yet) are kept, up to this
/// many, so an exit that races its process's registration is not lost.
const MAX_EARLY_EXITS: usize = 1024;

/// A task: a container, its init and its execs.
pub(crate) struct Task<C> {
    pub id: String,
    pub bundle: String,
    pub container: C,
    pub init: Arc<Process>,
    /// Lock order: after the registry's lock, before any process's phase.
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl<C> Task<C> {
    pub fn new(id: String, bundle: String, container: C, init: Process) -> Self {
        Self {
            id,
            bundle,
            container,
            init: Arc::new(init),
            execs: Mutex::default(),
        }
    }

    pub fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process containerd means by `exec_id`: the init when it is empty.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("{} (exec {exec_id:?})", self.id)))
    }
}

struct Registry<C> {
    tasks: HashMap<String, Arc<Task<C>>>,
    /// Ids whose create is under way: a second create is refused, and any
    /// other call waits for the first to end (as runc's shim serializes them).
    creating: HashSet<String>,
    /// A process's task, and its exec id when it is an exec.
    by_pid: HashMap<i32, (String, Option<String>)>,
    early_exits: HashMap<i32, u32>,
}

/// Every task of the shim and where their events go.
pub(crate) struct Tasks<C, E> {
    pub events: E,
    /// Lock order: first; never taken while a task's exec table or a
    /// process's phase is held.
    registry: Mutex<Registry<C>>,
    /// Notified when a create ends.
    settled: Condvar,
}

/// An id reserved for a create under way; released when dropped.
pub(crate) struct Reservation<'a, C, E> {
    tasks: &'a Tasks<C, E>,
    id: String,
}

impl<C, E> Drop for Reservation<'_, C, E> {
    fn drop(&mut self) {
        self.tasks.registry().creating.remove(&self.id);
        self.tasks.settled.notify_all();
    }
}

impl<C, E> Tasks<C, E> {
    fn registry(&self) -> MutexGuard<'_, Registry<C>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Container, E: EventSink> Tasks<C, E> {
    pub fn new(events: E) -> Self {
        Self {
            events,
            registry: Mutex::new(Registry {
                tasks: HashMap::new(),
                creating: HashSet::new(),
                by_pid: HashMap::new(),
                early_exits: HashMap::new(),
            }),
            settled: Condvar::new(),
        }
    }

    /// The task `id`, once any create of it under way has ended.
    pub fn get(&self, id: &str) -> Result<Arc<Task<C>>, TaskError> {
        let mut registry = self.registry();
        while registry.creating.contains(id) {
            registry = self
                .settled
                .wait(registry)
                .unwrap_or_else(|e| e.into_inner());
        }
        registry
            .tasks
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(id.to_string()))
    }

    pub fn is_empty(&self) -> bool {
        let registry = self.registry();
        registry.tasks.is_empty() && registry.creating.is_empty()
    }

    /// Reserves `id` for a create; refused while a task has it.
    pub fn reserve(&self, id: &str) -> Result<Reservation<'_, C, E>, TaskError> {
        let mut registry = self.registry();
        if registry.tasks.contains_key(id) || !registry.creating.insert(id.to_string()) {
            return Err(TaskError::AlreadyExists(id.to_string()));
        }
        Ok(Reservation {
            tasks: self,
            id: id.to_string(),
        })
    }

    /// Adds a created task (its reservation ends after this); its init's
    /// exit, if it came already, is recorded now.
    pub fn add(&self, task: Arc<Task<C>>, _reservation: Reservation<'_, C, E>) {
        let pid = task.init.pid() as i32;
        let early = {
            let mut registry = self.registry();
            registry.tasks.insert(task.id.clone(), task.clone());
            registry.by_pid.insert(pid, (task.id.clone(), None));
            registry.early_exits.remove(&pid)
        };
        if let Some(code) = early {
            task.init.drain_output();
            self.record(&task.init, code);
        }
    }

    /// Routes an exec's PID to it once started; its exit, if it came
    /// already, is recorded now.
    pub fn exec_started(&self, task: &Task<C>, exec: &Process) {
        let pid = exec.pid() as i32;
        let early = {
            let mut registry = self.registry();
            registry
                .by_pid
                .insert(pid, (task.id.clone(), exec.exec_id().map(str::to_string)));
            registry.early_exits.remove(&pid)
        };
        if let Some(code) = early {
            self.registry().by_pid.remove(&pid);
            exec.drain_output();
            self.record(exec, code);
        }
    }

    /// Forgets a deleted exec's PID.
    pub fn exec_deleted(&self, exec: &Process) {
        self.registry().by_pid.remove(&(exec.pid() as i32));
    }

    /// Removes a deleted task. Its execs still running die with the
    /// container (its cgroup is killed and removed); their exits may come
    /// after their PIDs are forgotten, so they are recorded here as killed.
    pub fn remove(&self, task: &Task<C>) {
        let mut registry = self.registry();
        registry.tasks.remove(&task.id);
        registry.by_pid.remove(&(task.init.pid() as i32));
        for (_, exec) in task.execs().drain() {
            exec.close_stdin();
            registry.by_pid.remove(&(exec.pid() as i32));
            if *exec.phase() == Phase::Running {
                self.record(&exec, KILLED_EXIT_STATUS);
            }
        }
    }

    /// The shim's reaper saw `pid` exit with `code`.
    pub fn exited(&self, pid: i32, code: u32) {
        let found = {
            let mut registry = self.registry();
            let found = registry
                .by_pid
                .remove(&pid)
                .and_then(|(id, exec_id)| Some((registry.tasks.get(&id).cloned()?, exec_id)));
            if found.is_none() {
                if registry.early_exits.len() >= MAX_EARLY_EXITS {
                    registry.early_exits.clear();
                }
                registry.early_exits.insert(pid, code);
            }
            found
        };
        let Some((task, exec_id)) = found else {
            return;
        };
        // An OOM kill the watcher has not heard of yet is published first:
        // kubelet reads `OOMKilled` only from a TaskOOM before the exit.
        if exec_id.is_none() {
            task.container.check_oom(code);
        }
        // An exec deleted meanwhile has nobody to tell.
        if let Ok(process) = task.process(exec_id.as_deref().unwrap_or_default()) {
            process.drain_output();
            self.record(&process, code);
        }
    }

    /// Records an exit and publishes it, unless it was recorded already.
    fn record(&self, process: &Process, code: u32) {
        if let Some(event) = process.exited(code) {
            self.events.publish(Box::new(event));
        }
    }
}
