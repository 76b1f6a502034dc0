//! `ctr events` of a test's containerd, collected into a file for the
//! length of a test: what containerd published (TaskOOM, TaskExit,
//! TaskPaused...), one event per line.

use std::path::PathBuf;
use std::process::{Child, Stdio};

use crate::harness::{unique_id, Containerd};

/// A running `ctr events`; killed (by PID) and reaped when stopped or dropped.
pub struct Events {
    child: Child,
    file: PathBuf,
}

impl Events {
    /// Starts `ctr events` against `containerd`.
    pub fn watch(containerd: &Containerd) -> Self {
        let file = containerd.dir().join(unique_id("events"));
        let child = containerd
            .ctr_command(&["events"])
            .stdout(std::fs::File::create(&file).expect("the events file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        Self { child, file }
    }

    /// What it has printed so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }

    /// Whether an event of `topic` (`/tasks/oom`) names `id`.
    pub fn has(&self, topic: &str, id: &str) -> bool {
        self.text()
            .lines()
            .any(|l| l.contains(topic) && l.contains(id))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
