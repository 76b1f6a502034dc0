//! What the task service asks of containers, as two small traits, so that
//! its logic (phases, exit routing, execs) runs in unit tests without
//! containerd or Linux (`service/tests.rs`). [`Linux`] is the real one:
//! `shim-container`'s containers, and containerd's content store for images
//! whose wasm is a layer rather than a file.

use std::os::fd::OwnedFd;

use oci_spec::runtime::LinuxResources;
use shim_engine::budget::WasmMetrics;

use shim_container::rootfs::RootfsMount;
use shim_container::{Bundle, CreateRequest, Error, ExecProcess, LayerFile, LinuxContainer, Stats};

use crate::layers::ContainerdApi;

/// Makes containers.
pub trait Runtime: Send + Sync + 'static {
    type Container: Container;

    /// The wasm layer container `id` runs when containerd left its root
    /// empty (a wasm OCI artifact); `None` when its root has the program.
    fn wasm_layer(
        &self,
        id: &str,
        bundle: &Bundle,
        rootfs: &[RootfsMount],
    ) -> Result<Option<LayerFile>, String>;

    /// Creates the container; its process waits for [`Container::start`].
    /// `stdin` becomes its stdin.
    fn create(
        &self,
        request: &CreateRequest,
        stdin: Option<OwnedFd>,
    ) -> Result<Self::Container, Error>;
}

/// One created container, as the task service drives it.
pub trait Container: Send + Sync + 'static {
    /// The host PID of its process (the task's init).
    fn pid(&self) -> i32;
    fn start(&self) -> Result<(), Error>;
    /// Starts a process in the running container; its host PID.
    fn exec(&self, process: &ExecProcess, stdin: Option<OwnedFd>) -> Result<i32, Error>;
    /// Signals one of its processes; a process that is gone is
    /// [`Error::NotRunning`].
    fn signal(&self, pid: i32, signal: i32) -> Result<(), Error>;
    /// Signals every process in its cgroup.
    fn signal_all(&self, signal: i32) -> Result<(), Error>;
    /// Freezes (Pause) or thaws (Resume) every process in its cgroup.
    fn freeze(&self, frozen: bool) -> Result<(), Error>;
    /// Takes new resources: its cgroup's limits, and its guests' memory limit.
    fn update(&self, resources: &LinuxResources) -> Result<(), Error>;
    fn pids(&self) -> Result<Vec<i32>, Error>;
    fn stats(&self) -> Result<Stats, Error>;
    /// Its wasm numbers (instances, linear memory, code); `None` for a
    /// native container.
    fn wasm_metrics(&self) -> Option<WasmMetrics> {
        None
    }
    /// Calls `on_oom` whenever the kernel's OOM killer acts in its cgroup.
    fn watch_oom(&self, on_oom: Box<dyn Fn() + Send>) -> Result<(), Error>;
    /// Calls `on_oom` now for a kill the kernel counted but has not yet
    /// told the watcher of; with the init's exit status, before that exit
    /// is published.
    fn check_oom(&self, _exit_status: u32) {}
    /// Removes everything it owns; its processes die with it.
    fn delete(&self) -> Result<(), Error>;
}

/// Linux containers built by `shim-container`.
pub struct Linux {
    pub api: ContainerdApi,
}

impl Runtime for Linux {
    type Container = LinuxContainer;

    fn wasm_layer(
        &self,
        id: &str,
        bundle: &Bundle,
        rootfs: &[RootfsMount],
    ) -> Result<Option<LayerFile>, String> {
        // An image containerd could not unpack (a wasm OCI artifact) leaves
        // the root empty: its wasm is a layer in the content store.
        if !crate::layers::root_is_empty(&bundle.root(), rootfs) {
            return Ok(None);
        }
        let store = crate::layers::store_dir(bundle.dir());
        self.api.wasm_layer(id, &store).map(Some)
    }

    fn create(
        &self,
        request: &CreateRequest,
        stdin: Option<OwnedFd>,
    ) -> Result<LinuxContainer, Error> {
        LinuxContainer::create(request, stdin)
    }
}

impl Container for LinuxContainer {
    fn pid(&self) -> i32 {
        LinuxContainer::pid(self)
    }

    fn start(&self) -> Result<(), Error> {
        LinuxContainer::start(self)
    }

    fn exec(&self, process: &ExecProcess, stdin: Option<OwnedFd>) -> Result<i32, Error> {
        LinuxContainer::exec(self, process, stdin)
    }

    fn signal(&self, pid: i32, signal: i32) -> Result<(), Error> {
        LinuxContainer::signal(self, pid, signal)
    }

    fn signal_all(&self, signal: i32) -> Result<(), Error> {
        LinuxContainer::kill(self, signal, true)
    }

    fn freeze(&self, frozen: bool) -> Result<(), Error> {
        LinuxContainer::freeze(self, frozen)
    }

    fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        LinuxContainer::update(self, resources)
    }

    fn pids(&self) -> Result<Vec<i32>, Error> {
        LinuxContainer::pids(self)
    }

    fn wasm_metrics(&self) -> Option<WasmMetrics> {
        LinuxContainer::wasm_metrics(self)
    }

    fn stats(&self) -> Result<Stats, Error> {
        LinuxContainer::stats(self)
    }

    fn watch_oom(&self, on_oom: Box<dyn Fn() + Send>) -> Result<(), Error> {
        LinuxContainer::watch_oom(self, on_oom)
    }

    fn check_oom(&self, exit_status: u32) {
        LinuxContainer::check_oom(self, exit_status)
    }

    fn delete(&self) -> Result<(), Error> {
        LinuxContainer::delete(self)
    }
}
