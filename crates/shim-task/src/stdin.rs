//! The guest's stdin: containerd's stdin fifo copied into a pipe.
//!
//! The guest reads the pipe, not the fifo, so the shim decides when it sees
//! EOF: when the client closes its end of the fifo, on `CloseIO`, or when the
//! task is deleted. Opening the fifo never blocks the shim: a reader thread
//! waits for the writer with `poll` and checks for cancellation every second.
//! Nor does a guest that stops reading: the pipe is written without blocking,
//! so closing it never waits behind a full pipe.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long the copier waits on a full pipe before it looks again whether
/// stdin was closed: the longest a guest that stopped reading waits for EOF.
const FULL_PIPE_RECHECK_MS: u8 = 100;

/// The shim's end of a guest's stdin; dropping or closing it gives the guest EOF.
#[derive(Clone)]
pub struct StdinForwarder {
    /// The pipe's write end, non-blocking. The lock is held only to take a
    /// reference or to drop it, never across a write: a guest that does not
    /// read fills the pipe, and `close` (CloseIO, delete) must not wait for it.
    writer: Arc<Mutex<Option<Arc<File>>>>,
}

impl StdinForwarder {
    /// Starts copying `fifo` into a new pipe; returns the forwarder and the
    /// pipe's read end for the guest.
    pub fn start(fifo: PathBuf) -> std::io::Result<(Self, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Only the shim's end: O_NONBLOCK belongs to the open file, and the
        // guest's end is another one.
        fcntl(write.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok((Self::start_into(fifo, File::from(write))?, read))
    }

    /// Starts copying `fifo` into `target`, which is non-blocking (a pty's
    /// master: see `tty`); closing stops the copy and leaves `target` open.
    pub fn start_into(fifo: PathBuf, target: File) -> std::io::Result<Self> {
        let forwarder = Self {
            writer: Arc::new(Mutex::new(Some(Arc::new(target)))),
        };
        let copier = forwarder.clone();
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || copier.copy(&fifo))?;
        Ok(forwarder)
    }

    /// Closes the guest's stdin (CloseIO, delete). Never blocks: a copier in
    /// the middle of a write lets go of the pipe within [`FULL_PIPE_RECHECK_MS`].
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn pipe_end(&self) -> Option<Arc<File>> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn is_closed(&self) -> bool {
        self.pipe_end().is_none()
    }

    fn copy(&self, fifo: &PathBuf) {
        let mut source = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(file) => file,
            Err(e) => {
                log::warn!("cannot open stdin fifo {}: {e}", fifo.display());
                return self.close();
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        while !self.is_closed() {
            let mut fds = [PollFd::new(source.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(0) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("polling stdin fifo: {e}");
                    break;
                }
                Ok(_) => {}
            }
            match source.read(&mut buf) {
                // No writer any more: the client closed stdin.
                Ok(0) => break,
                Ok(n) => {
                    if !self.forward(&buf[..n]) {
                        break;
                    }
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("reading stdin fifo: {e}");
                    break;
                }
            }
        }
        self.close();
    }

    /// Writes all of `bytes` into the pipe, waiting while it is full; false
    /// once stdin is closed or the guest is gone.
    fn forward(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            // Held only for this write: `close` drops the other reference,
            // and the guest sees EOF once this one goes too.
            let Some(pipe) = self.pipe_end() else {
                return false;
            };
            match (&*pipe).write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, PollTimeout::from(FULL_PIPE_RECHECK_MS)) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            log::warn!("polling the guest's stdin pipe: {e}");
                            return false;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false, // the guest is gone
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn fifo(dir: &Path) -> PathBuf {
        let path = dir.join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        path
    }

    /// Runs `f` on a thread; its result, or None if it takes over `limit`.
    fn within<T: Send + 'static>(
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || done.send(f()));
        result.recv_timeout(limit).ok()
    }

    /// Bytes waiting in the pipe `fd`.
    fn queued(fd: &OwnedFd) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to the pointer, which is valid.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        n as usize
    }

    /// A client writing `bytes` into the fifo, as containerd's does.
    fn client(fifo: PathBuf, bytes: Vec<u8>) {
        std::thread::spawn(move || {
            let _ = OpenOptions::new()
                .write(true)
                .open(fifo)
                .and_then(|mut f| f.write_all(&bytes));
        });
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn close_does_not_wait_for_a_guest_that_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo(dir.path());
        let (stdin, guest) = StdinForwarder::start(fifo.clone()).unwrap();
        let sent = pattern(1 << 20);
        client(fifo, sent.clone());
        let capacity = fcntl(guest.as_raw_fd(), FcntlArg::F_GETPIPE_SZ).unwrap() as usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued(&guest) < capacity {
            assert!(Instant::now() < deadline, "the pipe never filled");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The copier now has more to write than fits.
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            within(Duration::from_secs(1), move || stdin.close()).is_some(),
            "close blocked behind the full pipe"
        );
        // The guest reads what was queued, then EOF.
        let received = within(Duration::from_secs(2), move || {
            let mut received = Vec::new();
            File::from(guest)
                .read_to_end(&mut received)
                .map(|_| received)
        })
        .expect("the guest saw EOF")
        .unwrap();
        assert!(received.len() >= capacity);
        assert_eq!(received[..], sent[..received.len()]);
    }

    #[test]
    fn a_slow_guest_gets_every_byte_then_eof() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo(dir.path());
        let (_stdin, guest) = StdinForwarder::start(fifo.clone()).unwrap();
        let sent = pattern(1 << 20);
        client(fifo, sent.clone());
        let received = within(Duration::from_secs(20), move || {
            let mut guest = File::from(guest);
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match guest.read(&mut buf).unwrap() {
                    0 => return received,
                    n => received.extend_from_slice(&buf[..n]),
                }
                if received.len() < 256 * 1024 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .expect("EOF once the client closed its end");
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes arrived in order, none lost");
    }

    #[test]
    fn close_gives_an_idle_guest_eof_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = fifo(dir.path());
        let (stdin, guest) = StdinForwarder::start(fifo.clone()).unwrap();
        // The client keeps its end open and writes nothing.
        let _client = OpenOptions::new().write(true).open(&fifo).unwrap();
        stdin.close();
        let n = within(Duration::from_secs(1), move || {
            File::from(guest).read(&mut [0u8; 16]).unwrap()
        });
        assert_eq!(n, Some(0));
    }
}
