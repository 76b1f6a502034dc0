//! Faults: the shim or containerd going away while tasks run, and races
//! between a task's lifecycle calls. Every case ends with nothing left on
//! the node, and where runc has an answer, the shim's must be the same.
//!
//! - `through_ctr`: a killed shim, a containerd restarted under running
//!   tasks, a pod whose zygote died, a killed pod shim;
//! - `through_cri`: containerd restarted, and a pod's shim killed, under the
//!   CRI plugin, as kubelet sees it;
//! - `races`: kill during create, delete during start, a guest killed while
//!   it is created, 50 lifecycles at once on one shim.
//!
//! Here: what all three use (SIGKILL by PID, ctr with a deadline).

mod races;
mod through_cri;
mod through_ctr;

use std::time::{Duration, Instant};

use shim_tests::{Containerd, CtrOutput};

/// Every ctr call of these tests gets an answer within this, or the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `ctr <args>`, which must answer within [`CALL_TIMEOUT`].
fn answered(c: &Containerd, args: &[&str]) -> CtrOutput {
    c.ctr_within(args, CALL_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "ctr {args:?} did not return within {CALL_TIMEOUT:?}\n{}",
            c.log()
        )
    })
}

/// SIGKILLs `pid`, which must exist.
fn sigkill(pid: i32) {
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    assert!(killed.unwrap().success(), "kill -9 {pid}");
}

/// Waits for guests SIGKILLed while containerd is down to be reaped by their
/// shims, which must happen at once, as under runc's shim: containerd 1.7+
/// decides what to do with a task from the processes its shim still lists
/// when it comes back, and a guest still dying then (a big address space
/// takes a while to tear down) would make the outcome a race.
fn assert_reaped(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(&pid) = pids
        .iter()
        .find(|&&pid| shim_tests::procfs::proc_state(pid).is_some())
    {
        assert!(
            Instant::now() < deadline,
            "{pid} ended while containerd was down and was not reaped: {:?}",
            shim_tests::procfs::proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
