//! Linux isolation for wasm containers.
//!
//! Each container is a real Linux container built by youki's `libcontainer`
//! from the OCI bundle: namespaces, cgroups from `linux.cgroupsPath` and
//! `linux.resources`, `pivot_root` into the rootfs with the spec's mounts.
//! Its process does not `execve` a binary; it runs the wasm guest through
//! [`executor::WasmExecutor`]. docs/architecture.md draws a create and an
//! exec through the processes; the modules, in the order a create meets them:
//!
//! - shim side: [`container`] (the handle the task layer holds: create,
//!   start, kill, stats, delete), [`spawn`] (asks for a create helper), and
//!   [`request`] (what is asked and answered);
//! - [`zygote`]: the pod's single-threaded process that forks each helper;
//! - [`helper`]: the short-lived create helper: mounts the rootfs and drives
//!   libcontainer, with [`stdio`], [`diagnose`] (errors a user can act on)
//!   and [`code`] (forks the code server that alone opens the node's cache);
//! - [`executor`]: the container's (or an exec's) process, after
//!   libcontainer's set-up: [`confinement`] (seccomp, capabilities),
//!   [`guest_view`] (what the guest can reach), [`native`] (programs that
//!   are not wasm);
//! - shared: [`process`] (names, descriptors, children, log), [`state`]
//!   (libcontainer's state and cleanup), [`bundle`] (the one reader of
//!   `config.json`), [`rootfs`], [`userns`] (the bind mounts and execs of a
//!   pod with its own user namespace), [`idmap`] (that pod's idmapped
//!   layers and mounts), [`detached`] (the new mount API's three calls),
//!   [`cgroup`] (where the container's cgroup is, its v2 stats), [`oom`].
//!
//! Where the node's cache lives is `shim_engine::NodeConfig`, read once per
//! process and handed to the code server.
//!
//! The modules depend on each other in that order and never back: no cycle.
//! libcontainer keeps its state under `<bundle>/libcontainer/<id>`, so it is
//! private to the bundle and goes away with it.

pub mod bundle;
pub mod cgroup;
pub mod code;
pub mod confinement;
pub mod container;
pub mod detached;
pub mod diagnose;
mod error;
pub mod executor;
pub mod guest_view;
pub mod helper;
pub mod idmap;
pub mod native;
pub mod oom;
pub mod process;
pub mod request;
pub mod rootfs;
pub mod spawn;
pub mod state;
pub mod stdio;
pub mod userns;
pub mod zygote;

pub use bundle::Bundle;
pub use container::LinuxContainer;
pub use error::Error;
pub use libcgroups::stats::Stats;
pub use process::{NATIVE_PROCESS_NAME, WASM_PROCESS_NAME};
pub use request::{CreateRequest, ExecProcess, LayerFile, Outputs};
pub use state::cleanup;
