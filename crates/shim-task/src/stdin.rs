//! The guest's stdin: containerd's stdin fifo copied into a pipe.
//!
//! The guest reads the pipe, not the fifo, so the shim decides when it sees
//! EOF: when the client closes its end of the fifo, on `CloseIO`, or when the
//! task is deleted. Opening the fifo never blocks the shim: a reader thread
//! waits for the writer with `poll` and checks for cancellation every second.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The shim's end of a guest's stdin; dropping or closing it gives the guest EOF.
#[derive(Clone)]
pub struct StdinForwarder {
    writer: Arc<Mutex<Option<File>>>,
}

impl StdinForwarder {
    /// Starts copying `fifo` into a new pipe; returns the forwarder and the
    /// pipe's read end for the guest.
    pub fn start(fifo: PathBuf) -> std::io::Result<(Self, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let forwarder = Self {
            writer: Arc::new(Mutex::new(Some(File::from(write)))),
        };
        let copier = forwarder.clone();
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || copier.copy(&fifo))?;
        Ok((forwarder, read))
    }

    /// Closes the guest's stdin (CloseIO, delete).
    pub fn close(&self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn is_closed(&self) -> bool {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
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
                    let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(pipe) = writer.as_mut() else { break };
                    if pipe.write_all(&buf[..n]).is_err() {
                        break; // the guest is gone
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
}
