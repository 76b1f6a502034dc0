//! Terminals: a process asked for with `terminal: true` (`ctr run -t`,
//! `kubectl run -it`, `kubectl exec -it`, CRI `tty: true`) gets a pty as its
//! stdin, stdout and stderr, a wasm guest as much as a native program.
//!
//! The pty is made inside the container by libcontainer (from the
//! container's own devpts, as runc makes it), which sends its master to a
//! console socket the shim listens on ([`ConsoleSocket`]). The shim then
//! copies containerd's stdin fifo into the master and the master into the
//! stdout fifo ([`Console`]), and `ResizePty` sets the window size on it.
//! docs/architecture.md, "stdio".

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::stdin::StdinForwarder;

/// How long the shim waits for libcontainer to send the pty once the
/// process is created (it is sent before the create returns).
const MASTER_PATIENCE: Duration = Duration::from_secs(5);

/// A socket libcontainer connects to with a process's pty master.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `<dir>/.console-<name>.sock`. Bound through the
    /// directory's descriptor: a bundle's path can be longer than a socket
    /// address may be.
    pub fn bind(dir: &Path, name: &str) -> std::io::Result<Self> {
        let file = format!(".console-{name}.sock");
        let path = dir.join(&file);
        let _ = std::fs::remove_file(&path);
        let dir_fd = File::open(dir)?;
        let listener = UnixListener::bind(format!("/proc/self/fd/{}/{file}", dir_fd.as_raw_fd()))?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master libcontainer sent.
    pub fn receive(&self) -> std::io::Result<OwnedFd> {
        self.accept_master()
    }

    fn accept_master(&self) -> std::io::Result<OwnedFd> {
        let deadline = Instant::now() + MASTER_PATIENCE;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        "the container did not send its terminal",
                    ))
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(MASTER_PATIENCE))?;
        let mut name = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let message = nix::sys::socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in message.cmsgs()? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
                let mut owned = fds.into_iter().map(|fd| {
                    // SAFETY: SCM_RIGHTS descriptors are new and ours.
                    unsafe { OwnedFd::from_raw_fd(fd) }
                });
                if let Some(master) = owned.next() {
                    return Ok(master);
                }
            }
        }
        Err(std::io::Error::other(
            "the console socket carried no terminal",
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's terminal, seen from the shim: its master and the copies
/// between it and containerd's fifos.
pub struct Console {
    master: Arc<File>,
    stdin: Option<StdinForwarder>,
    /// Set once the output copy has ended (the process and every holder of
    /// the pty's other end are gone), with its waiters.
    output_done: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Console {
    /// Starts copying containerd's `stdin` fifo into `master` and `master`
    /// into its `stdout` fifo (or log URI).
    pub fn start(
        master: OwnedFd,
        stdin: Option<PathBuf>,
        stdout: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        // Shared by both copies: neither may block the other.
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let master = Arc::new(File::from(master));
        let stdin = stdin
            .map(|fifo| StdinForwarder::start_into(fifo, master.try_clone()?))
            .transpose()?;
        let output_done = Arc::new((Mutex::new(false), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (from, done, stopped) = (master.clone(), output_done.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tty".into())
            .spawn(move || {
                match open_output(stdout.as_deref(), &stopped) {
                    Ok(Some(output)) => copy_output(&from, output, &stopped),
                    Ok(None) => {}
                    Err(e) => log::warn!("cannot open a terminal's output: {e}"),
                }
                *done.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                done.1.notify_all();
            })?;
        Ok(Self {
            master,
            stdin,
            output_done,
            stop,
        })
    }

    /// `ResizePty`: the terminal's window size, in characters.
    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let size = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives
        // across the call.
        let result = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if result < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops copying stdin (`CloseIO`, or the process's end).
    pub fn close_stdin(&self) {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
    }

    /// Waits, at most `patience`, until everything the process wrote has
    /// been copied out: its exit is then reported after its last output.
    pub fn wait_output(&self, patience: Duration) {
        let (done, changed) = &*self.output_done;
        let done = done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout_while(done, patience, |done| !*done);
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.close_stdin();
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens the process's output. containerd's client opens its end of a
/// stdout fifo in the background (ctr does, and may do it after the
/// process has started), so the fifo is opened once a reader is there: what
/// the process wrote meanwhile waits in the pty. `None` if the console is
/// dropped first.
fn open_output(path: Option<&Path>, stop: &AtomicBool) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::FileTypeExt;
    let is_fifo = path
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.file_type().is_fifo());
    match path.filter(|_| is_fifo) {
        Some(fifo) => shim_container::stdio::open_when_read(fifo, || !stop.load(Ordering::Relaxed)),
        None => shim_container::stdio::open_output(path).map(|fd| Some(File::from(fd))),
    }
}

/// Copies the master into `output` until the pty's other end is closed
/// everywhere (EIO) or the console is dropped.
fn copy_output(master: &File, mut output: File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 32 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("polling a terminal: {e}");
                return;
            }
            Ok(_) => {}
        }
        match (&*master).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if output.write_all(&buf[..n]).is_err() {
                    return; // nobody reads the output any more
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            // EIO: every process holding the pty has closed it.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_reaches_the_fifo_and_input_the_terminal_and_the_size_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let stdin = dir.path().join("stdin");
        let stdout = dir.path().join("stdout");
        nix::unistd::mkfifo(&stdin, nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(&stdout, b"").unwrap();
        let console =
            Console::start(pty.master, Some(stdin.clone()), Some(stdout.clone())).unwrap();
        let mut slave = File::from(pty.slave);
        // Raw mode: bytes pass as they are, without echo.
        let mut termios = nix::sys::termios::tcgetattr(&slave).unwrap();
        nix::sys::termios::cfmakeraw(&mut termios);
        nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &termios).unwrap();
        slave.write_all(b"from the guest").unwrap();
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&stdin)
            .unwrap();
        writer.write_all(b"typed").unwrap();
        let mut typed = [0u8; 5];
        slave.read_exact(&mut typed).unwrap();
        assert_eq!(&typed, b"typed");
        console.resize(100, 40).unwrap();
        let size = nix::pty::Winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let mut size = size;
        // SAFETY: TIOCGWINSZ writes one winsize to the pointer.
        assert_eq!(
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) },
            0
        );
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        drop(slave);
        console.wait_output(Duration::from_secs(5));
        assert_eq!(std::fs::read(&stdout).unwrap(), b"from the guest");
    }
}
