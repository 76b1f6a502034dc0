//! The node installer: puts `containerd-shim-wasmtime-v1` on a Kubernetes
//! node and registers the runtime handler `wasmtime` with the node's
//! containerd, from a privileged DaemonSet pod that sees the host's root at
//! `--host-root`.
//!
//! The flow, one module each:
//! - [`flavour`]: which containerd this node runs (stock, k3s, rke2,
//!   microk8s, k0s) and which file holds its CRI runtimes; anything else is
//!   refused, never guessed.
//! - [`config`]: reading and editing containerd's TOML, comments kept.
//! - [`install`]: the plan (binary + config files), applied atomically and
//!   recorded in [`state`], so `uninstall` reverses exactly that.
//! - [`restart`]: containerd restarted through the host's init, only when a
//!   config changed; [`cri`] then waits until the CRI reports the handler.
//! - [`label`]: the node label `wasmtime.containerd.io/ready` the
//!   RuntimeClass selects on.

pub mod config;
pub mod cri;
pub mod flavour;
pub mod host;
pub mod install;
pub mod label;
pub mod restart;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use flavour::Kind;
pub use install::{install, uninstall, Outcome};

/// Everything the installer can be told; `main` fills it from flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the host's `/` is mounted in this container.
    pub host_root: PathBuf,
    /// The shim binary to install (a path in this container).
    pub shim: PathBuf,
    /// Host directory the shim goes to; must be on containerd's PATH.
    pub bin_dir: PathBuf,
    /// Skip detection and treat the node as this flavour.
    pub flavour: Option<Kind>,
    /// Run this (with `sh -c`, `$UNIT` set) instead of restarting through the host's init.
    pub restart_command: Option<String>,
    /// The CRI socket as seen from here, instead of the flavour's under the host root.
    pub cri_socket: Option<PathBuf>,
    /// Whether to ask the CRI for the handler after a restart.
    pub verify: bool,
    pub verify_timeout: Duration,
    /// Host directory of the state file and backups.
    pub state_dir: PathBuf,
    /// Where the in-cluster credentials are (the pod's service account).
    pub service_account_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            host_root: PathBuf::from("/host"),
            shim: PathBuf::from("/containerd-shim-wasmtime-v1"),
            bin_dir: PathBuf::from("/usr/local/bin"),
            flavour: None,
            restart_command: None,
            cri_socket: None,
            verify: true,
            verify_timeout: Duration::from_secs(120),
            state_dir: PathBuf::from("/var/lib/containerd-wasmtime-installer"),
            service_account_dir: PathBuf::from(label::SERVICE_ACCOUNT_DIR),
        }
    }
}

/// Every way the installer fails, each naming the file, section or command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host path {0} leaves the host root (has `..`)")]
    HostPath(PathBuf),
    #[error("{0} is a symbolic link; the installer replaces only regular files (edit the file it points to by hand, or replace the link)")]
    Symlink(PathBuf),
    #[error("{0} is not UTF-8 text")]
    NotUtf8(PathBuf),
    #[error("{path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("unsupported node: {0}")]
    Unsupported(String),
    #[error("the shim binary: {0}")]
    Binary(String),
    #[error("restarting {unit}: {message}")]
    Restart { unit: String, message: String },
    #[error("CRI at {socket}: {message}")]
    Cri { socket: PathBuf, message: String },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("labelling node {node}: {message}")]
    Label { node: String, message: String },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
