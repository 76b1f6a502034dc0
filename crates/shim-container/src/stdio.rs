//! The guest's stdio: the helper's stdin (the shim's pipe) and containerd's
//! output fifos or log file, handed to libcontainer for fds 0, 1 and 2.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::request::Outputs;

/// The guest's stdio: the helper's stdin and containerd's output fifos.
pub(crate) fn stdio(outputs: &Outputs) -> Result<[OwnedFd; 3], String> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate stdin: {e}"))?;
    let stdout =
        open_output(outputs.stdout.as_deref()).map_err(|e| format!("cannot open stdout: {e}"))?;
    let stderr =
        open_output(outputs.stderr.as_deref()).map_err(|e| format!("cannot open stderr: {e}"))?;
    Ok([stdin, stdout, stderr])
}

/// How long a guest's output fifo waits for containerd's reader before it is
/// opened without one.
pub const READER_PATIENCE: Duration = Duration::from_secs(5);

/// Opens one of containerd's output fifos for writing, once its reader is
/// there. containerd's client opens the reading end from a goroutine (ctr
/// does, and may do it after this create has begun); had the guest's output
/// gone into the fifo before, and the guest ended before the reader came,
/// the pipe would close with the output in it. When no reader comes within
/// [`READER_PATIENCE`] the fifo is opened read-write, so that the guest's
/// output waits in the pipe instead of killing it with SIGPIPE.
///
/// A `file://` log URI (`ctr run --log-uri file:///path`) is the file itself,
/// appended to by the guest directly, stdout and stderr alike (the runc
/// shim's behaviour, without a copy through the shim); `binary://` loggers
/// are not supported.
pub fn open_output(path: Option<&Path>) -> std::io::Result<OwnedFd> {
    let Some(path) = path else {
        return Ok(OpenOptions::new().write(true).open("/dev/null")?.into());
    };
    if let Some(uri) = path.to_str().filter(|p| p.contains("://")) {
        let Some(file) = uri.strip_prefix("file://") else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("log URI {uri}: only file:// log URIs are supported"),
            ));
        };
        return Ok(OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(file)?
            .into());
    }
    let since = Instant::now();
    match open_when_read(path, || since.elapsed() < READER_PATIENCE)? {
        Some(file) => Ok(file.into()),
        None => Ok(OpenOptions::new().read(true).write(true).open(path)?.into()),
    }
}

/// Opens `path` for writing, in blocking mode, once something has it open
/// for reading (a reader blocked in its own open counts). A path that is not
/// a fifo opens at once. `None` when `keep_waiting` says to give up first.
pub fn open_when_read(
    path: &Path,
    mut keep_waiting: impl FnMut() -> bool,
) -> std::io::Result<Option<File>> {
    let mut pause = Duration::from_millis(1);
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(file) => {
                let fd = file.as_raw_fd();
                let mut flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
                flags.remove(OFlag::O_NONBLOCK);
                fcntl(fd, FcntlArg::F_SETFL(flags))?;
                return Ok(Some(file));
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if !keep_waiting() {
                    return Ok(None);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::sync::mpsc;

    #[test]
    fn a_file_log_uri_is_appended_to_and_other_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        std::fs::write(&log, "before\n").unwrap();
        let uri = PathBuf::from(format!("file://{}", log.display()));
        File::from(open_output(Some(&uri)).unwrap())
            .write_all(b"after\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");
        let err = open_output(Some(Path::new("binary:///usr/bin/logger"))).unwrap_err();
        assert!(err.to_string().contains("only file://"), "{err}");
    }

    /// ctr's reader, late: it opens the fifo (blocking, as containerd's
    /// fifo package does in a goroutine) only after the guest's create has
    /// opened its end, and the guest has written and ended before it did.
    #[test]
    fn output_written_before_a_late_reader_arrives_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = mpsc::channel();
        let reader_path = fifo.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut out = String::new();
            let read = File::open(&reader_path).and_then(|mut f| f.read_to_string(&mut out));
            let _ = tx.send(read.map(|_| out));
        });
        let mut guest = File::from(open_output(Some(&fifo)).unwrap());
        guest.write_all(b"last words\n").unwrap();
        drop(guest);
        let got = rx.recv_timeout(Duration::from_secs(3));
        if got.is_err() {
            // Unblock the reader stuck in its open.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
        }
        assert_eq!(
            got.expect("the reader got nothing").unwrap(),
            "last words\n"
        );
    }

    #[test]
    fn without_a_reader_the_fifo_is_opened_after_the_patience() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut polls = 0;
        assert!(open_when_read(&fifo, || {
            polls += 1;
            polls < 3
        })
        .unwrap()
        .is_none());
        assert_eq!(polls, 3);
    }
}
