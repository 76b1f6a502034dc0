//! The one state machine of a task: created → running (⇄ paused) → stopped
//! → deleted.
//!
//! Every Task API call that changes a task goes through [`Phase::apply`];
//! a call that does not fit the task's phase gets an error that says what the
//! task is doing and what would work instead.

use std::time::SystemTime;

/// The exit status of a process killed by SIGKILL (128 + 9): a task
/// deleted before it ran, an exec that dies with its container, a task
/// whose shim died (as runc's shim reports them).
pub const KILLED_EXIT_STATUS: u32 = 128 + 9;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created; the guest is compiled and waits for start.
    Created,
    /// The guest is running.
    Running,
    /// Its processes are frozen (Pause), until Resume.
    Paused,
    /// The guest ended with `code` at `at`.
    Stopped { code: u32, at: SystemTime },
    /// Its resources are gone; only the exit status is kept for the reply.
    Deleted { code: u32, at: SystemTime },
}

/// What happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Pause,
    Resume,
    /// New resources (Update): the phase stays.
    Update,
    Exit {
        code: u32,
        at: SystemTime,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action}: the task {state}")]
pub struct InvalidTransition {
    pub action: &'static str,
    pub state: &'static str,
}

impl Phase {
    pub fn apply(self, transition: Transition) -> Result<Phase, InvalidTransition> {
        use Phase::*;
        use Transition::*;
        match (self, transition) {
            (Created, Start) => Ok(Running),
            (Running, Pause) => Ok(Paused),
            (Paused, Resume) => Ok(Running),
            // As runc: a created, running or paused task takes new resources.
            (phase @ (Created | Running | Paused), Update) => Ok(phase),
            // A created task can be killed before it starts, a paused one
            // while it is frozen.
            (Created | Running | Paused, Exit { code, at }) => Ok(Stopped { code, at }),
            (Stopped { code, at }, Delete) => Ok(Deleted { code, at }),
            // Deleting a task that never ran kills it (as runc does); its status is SIGKILL's.
            (Created, Delete) => Ok(Deleted {
                code: KILLED_EXIT_STATUS,
                at: SystemTime::now(),
            }),
            (Created | Running, Resume) => Err(InvalidTransition {
                action: "resume",
                state: "is not paused",
            }),
            (state, transition) => Err(InvalidTransition {
                action: match transition {
                    Start => "start",
                    Pause => "pause",
                    Resume => "resume",
                    Update => "update its resources",
                    Exit { .. } => "record an exit",
                    Delete => "delete",
                },
                state: state.describe(),
            }),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Phase::Created => "is created and not started",
            Phase::Running => "is running (kill it first)",
            Phase::Paused => "is paused (resume or kill it first)",
            Phase::Stopped { .. } => "has already exited",
            Phase::Deleted { .. } => "is deleted",
        }
    }

    /// The exit status and time, once the guest has ended.
    pub fn exit(&self) -> Option<(u32, SystemTime)> {
        match *self {
            Phase::Stopped { code, at } | Phase::Deleted { code, at } => Some((code, at)),
            Phase::Created | Phase::Running | Phase::Paused => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;
    use Transition::*;

    fn exit(code: u32) -> Transition {
        Exit {
            code,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_normal_life_of_a_task() {
        let running = Created.apply(Start).unwrap();
        assert_eq!(running, Running);
        let stopped = running.apply(exit(42)).unwrap();
        assert_eq!(stopped.exit(), Some((42, SystemTime::UNIX_EPOCH)));
        let deleted = stopped.apply(Delete).unwrap();
        assert_eq!(deleted.exit(), Some((42, SystemTime::UNIX_EPOCH)));
    }

    #[test]
    fn a_created_task_can_be_killed_or_deleted() {
        assert_eq!(Created.apply(exit(137)).unwrap().exit().unwrap().0, 137);
        assert_eq!(Created.apply(Delete).unwrap().exit().unwrap().0, 137);
    }

    #[test]
    fn invalid_transitions_say_why() {
        let err = Running.apply(Delete).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot delete: the task is running (kill it first)"
        );
        let err = Running.apply(Start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot start: the task is running (kill it first)"
        );
        let stopped = Running.apply(exit(0)).unwrap();
        assert_eq!(
            stopped.apply(Start).unwrap_err().to_string(),
            "cannot start: the task has already exited"
        );
        assert!(stopped.apply(exit(1)).is_err(), "a task exits once");
        let deleted = stopped.apply(Delete).unwrap();
        assert_eq!(
            deleted.apply(Delete).unwrap_err().to_string(),
            "cannot delete: the task is deleted"
        );
    }

    #[test]
    fn a_running_task_pauses_and_resumes_and_a_paused_one_can_exit() {
        let paused = Running.apply(Pause).unwrap();
        assert_eq!(paused, Paused);
        assert_eq!(paused.apply(Resume).unwrap(), Running);
        assert_eq!(paused.apply(exit(137)).unwrap().exit().unwrap().0, 137);
        for (phase, transition, error) in [
            (
                paused,
                Delete,
                "cannot delete: the task is paused (resume or kill it first)",
            ),
            (
                paused,
                Pause,
                "cannot pause: the task is paused (resume or kill it first)",
            ),
            (
                Created,
                Pause,
                "cannot pause: the task is created and not started",
            ),
            (Running, Resume, "cannot resume: the task is not paused"),
        ] {
            assert_eq!(phase.apply(transition).unwrap_err().to_string(), error);
        }
    }

    #[test]
    fn resources_change_until_the_task_exits() {
        for phase in [Created, Running, Paused] {
            assert_eq!(phase.apply(Update).unwrap(), phase);
        }
        let stopped = Running.apply(exit(0)).unwrap();
        assert_eq!(
            stopped.apply(Update).unwrap_err().to_string(),
            "cannot update its resources: the task has already exited"
        );
    }
}
