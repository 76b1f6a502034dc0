//! A runtime whose containers record what they are asked, with hooks into
//! their calls, and a recorder for events: what the service's unit tests
//! drive it with.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use oci_spec::runtime::LinuxResources;
use shim_container::rootfs::RootfsMount;
use shim_container::{Bundle, CreateRequest, Error, ExecProcess, LayerFile, Stats};

use crate::events::EventSink;
use crate::runtime::{Container, Runtime};

/// Runs inside a fake `create` or `exec`, with the new process's pid.
pub(super) type Hook = Box<dyn Fn(i32) + Send>;

/// What the fake containers were asked, and hooks into their calls.
#[derive(Default)]
pub(super) struct World {
    pub(super) next_pid: AtomicI32,
    /// `(pid, signal)`; pid 0 for "every process".
    pub(super) signals: Mutex<Vec<(i32, i32)>>,
    /// Freezes (`true`) and thaws (`false`), in order.
    pub(super) freezes: Mutex<Vec<bool>>,
    pub(super) updates: Mutex<Vec<LinuxResources>>,
    pub(super) deleted: Mutex<Vec<String>>,
    /// Runs inside `create` / `exec` with the new pid, before it returns.
    pub(super) during_create: Mutex<Option<Hook>>,
    pub(super) during_exec: Mutex<Option<Hook>>,
    pub(super) fail_create: Mutex<Option<String>>,
    /// The other end of the terminal a create with a console socket sent
    /// (as libcontainer sends the pty master).
    pub(super) terminal: Mutex<Option<OwnedFd>>,
    /// The last container's OOM callback, and whether the kernel counted a
    /// kill it has not reported yet (what `check_oom` reports).
    pub(super) on_oom: Mutex<Option<Box<dyn Fn() + Send>>>,
    pub(super) oom_pending: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Default)]
pub(super) struct Fake(pub(super) Arc<World>);

pub(super) struct FakeContainer {
    pub(super) id: String,
    pub(super) pid: i32,
    pub(super) world: Arc<World>,
}

impl Fake {
    fn pid(&self) -> i32 {
        1000 + self.0.next_pid.fetch_add(1, Ordering::SeqCst)
    }
}

impl Runtime for Fake {
    type Container = FakeContainer;

    fn wasm_layer(
        &self,
        _: &str,
        _: &Bundle,
        _: &[RootfsMount],
    ) -> Result<Option<LayerFile>, String> {
        Ok(None)
    }

    fn create(&self, request: &CreateRequest, _: Option<OwnedFd>) -> Result<FakeContainer, Error> {
        if let Some(reason) = self.0.fail_create.lock().unwrap().clone() {
            return Err(Error::Create(reason));
        }
        let pid = self.pid();
        if let Some(socket) = &request.console_socket {
            let pty = nix::pty::openpty(None, None).unwrap();
            let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
            nix::sys::socket::sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(b"/dev/ptmx")],
                &[nix::sys::socket::ControlMessage::ScmRights(&[pty
                    .master
                    .as_raw_fd()])],
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .unwrap();
            *self.0.terminal.lock().unwrap() = Some(pty.slave);
        }
        if let Some(hook) = &*self.0.during_create.lock().unwrap() {
            hook(pid);
        }
        Ok(FakeContainer {
            id: request.id.clone(),
            pid,
            world: self.0.clone(),
        })
    }
}

impl Container for FakeContainer {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn start(&self) -> Result<(), Error> {
        Ok(())
    }
    fn exec(&self, _: &ExecProcess, _: Option<OwnedFd>) -> Result<i32, Error> {
        let pid = Fake(self.world.clone()).pid();
        if let Some(hook) = &*self.world.during_exec.lock().unwrap() {
            hook(pid);
        }
        Ok(pid)
    }
    fn signal(&self, pid: i32, signal: i32) -> Result<(), Error> {
        self.world.signals.lock().unwrap().push((pid, signal));
        Ok(())
    }
    fn signal_all(&self, signal: i32) -> Result<(), Error> {
        self.signal(0, signal)
    }
    fn freeze(&self, frozen: bool) -> Result<(), Error> {
        self.world.freezes.lock().unwrap().push(frozen);
        Ok(())
    }
    fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        self.world.updates.lock().unwrap().push(resources.clone());
        Ok(())
    }
    fn pids(&self) -> Result<Vec<i32>, Error> {
        Ok(vec![self.pid])
    }
    fn stats(&self) -> Result<Stats, Error> {
        Ok(Stats::default())
    }
    fn watch_oom(&self, on_oom: Box<dyn Fn() + Send>) -> Result<(), Error> {
        *self.world.on_oom.lock().unwrap() = Some(on_oom);
        Ok(())
    }
    fn check_oom(&self, _exit_status: u32) {
        if self.world.oom_pending.swap(false, Ordering::SeqCst) {
            if let Some(on_oom) = &*self.world.on_oom.lock().unwrap() {
                on_oom();
            }
        }
    }
    fn delete(&self) -> Result<(), Error> {
        self.world.deleted.lock().unwrap().push(self.id.clone());
        Ok(())
    }
}

#[derive(Clone, Default)]
pub(super) struct Recorder(Arc<Mutex<Vec<Box<dyn Event + Send>>>>);

impl EventSink for Recorder {
    fn publish(&self, event: Box<dyn Event + Send>) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    pub(super) fn topics(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|e| e.topic()).collect()
    }

    /// The events of type `M`, in order.
    pub(super) fn of<M: containerd_shim::protos::protobuf::MessageFull>(&self) -> Vec<M> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| {
                let message: &dyn MessageDyn = &**e;
                message.downcast_ref::<M>().cloned()
            })
            .collect()
    }
}
