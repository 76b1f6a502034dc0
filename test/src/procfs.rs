//! What the tests read from `/proc`: processes by command line, their state,
//! parent, children, descriptors, memory and CPU time; and the mounts of
//! this process's namespace. Shim processes are found here by the
//! containerd socket their command line names.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Processes (other than this one) whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The wasmtime shim processes of the containerd listening on `socket`, by pid.
pub(crate) fn wasmtime_shims(socket: &Path) -> HashMap<i32, String> {
    shim_servers(socket)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-wasmtime-v1"))
        .collect()
}

/// The shim processes (any runtime) of the containerd listening on `socket`:
/// servers and `start`/`delete` runs, not the zygotes and container
/// processes forked from them, which carry the same command line under
/// another name.
pub fn shim_servers(socket: &Path) -> Vec<(i32, String)> {
    processes_naming(&socket.display().to_string())
        .into_iter()
        .filter(|(pid, _)| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "containerd-shim")
        })
        .collect()
}

/// A process's state letter (`R`, `S`, `Z`, ...) and parent PID, from
/// `/proc/PID/stat`.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold ") ".
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every PID in /proc.
fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// The children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut children: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&p| proc_state(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect();
    children.sort();
    children
}

/// Zombies (state `Z`) whose parent is one of `parents`: (pid, parent).
pub fn zombies_of(parents: &[i32]) -> Vec<(i32, i32)> {
    all_pids()
        .into_iter()
        .filter_map(|p| match proc_state(p) {
            Some(('Z', ppid)) if parents.contains(&ppid) => Some((p, ppid)),
            _ => None,
        })
        .collect()
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `pid`'s resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// A KiB figure of `pid`'s `/proc/PID/status` (`VmRSS`, `VmHWM`, ...);
/// None once the process is gone.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The CPU time `pid` has used (user + system, `/proc/PID/stat`; Linux
/// reports it in USER_HZ, 100 per second); None once it is gone.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|t| t.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The threads of `pid`.
pub fn threads(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sends `signal` to `pid` (with kill(1), as the harness has no libc).
pub(crate) fn kill(pid: i32, signal: i32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}
