//! The create helper's wire protocol: what the shim asks for (a container or
//! an exec) and what the helper answers, as JSON over the zygote's socket or
//! the exec'd helper's argument and stdout.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::rootfs::RootfsMount;
use crate::Error;

/// What the shim asks a create helper for: a container, or a process in
/// one; or the removal of what a container owns ([`crate::cleanup`]), when
/// that needs systemd (see [`crate::cgroup`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Create(CreateRequest),
    Exec(ExecRequest),
    Cleanup { id: String, bundle: PathBuf },
}

/// The outputs of a request that runs no process.
static NO_OUTPUTS: Outputs = Outputs {
    stdout: None,
    stderr: None,
};

/// Where a process's stdout and stderr go: containerd's fifos (or a
/// `file://` log URI); `None` discards the stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outputs {
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

/// A new container from an OCI bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: Vec<RootfsMount>,
    pub outputs: Outputs,
    /// With a terminal: where libcontainer sends the pty's master (runc's
    /// console-socket protocol); the process's stdio is then the pty.
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
    pub systemd_cgroup: bool,
    pub debug: bool,
    /// The guest when it is a wasm layer of the image rather than a file of
    /// the root (see `shim_image::layers`).
    #[serde(default)]
    pub layer: Option<LayerFile>,
}

/// A new process in the running container `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: String,
    pub bundle: PathBuf,
    pub debug: bool,
    /// Whether the container runs a native program (a sidecar, a pause
    /// container): only then may an exec run one. In a wasm container an
    /// exec runs WebAssembly only, whatever the guest wrote to its root.
    pub native_allowed: bool,
    pub process: ExecProcess,
}

/// An exec's process as containerd asks for it: its OCI `Process` (JSON)
/// and its outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecProcess {
    pub exec_id: String,
    pub process: serde_json::Value,
    pub outputs: Outputs,
    /// With a terminal, as [`CreateRequest::console_socket`].
    #[serde(default)]
    pub console_socket: Option<PathBuf>,
}

impl Request {
    /// The container the request is for.
    pub fn id(&self) -> &str {
        match self {
            Request::Create(create) => &create.id,
            Request::Exec(exec) => &exec.id,
            Request::Cleanup { id, .. } => id,
        }
    }

    pub fn bundle(&self) -> &std::path::Path {
        match self {
            Request::Create(create) => &create.bundle,
            Request::Exec(exec) => &exec.bundle,
            Request::Cleanup { bundle, .. } => bundle,
        }
    }

    pub fn debug(&self) -> bool {
        match self {
            Request::Create(create) => create.debug,
            Request::Exec(exec) => exec.debug,
            Request::Cleanup { .. } => false,
        }
    }

    pub fn outputs(&self) -> &Outputs {
        match self {
            Request::Create(create) => &create.outputs,
            Request::Exec(exec) => &exec.process.outputs,
            Request::Cleanup { .. } => &NO_OUTPUTS,
        }
    }

    /// The ids name paths (state directories, staged files): each must be
    /// a containerd identifier, one path component.
    pub fn check_ids(&self) -> Result<(), String> {
        shim_image::validate_id("task", self.id()).map_err(|e| format!("invalid id: {e}"))?;
        if let Request::Exec(exec) = self {
            shim_image::validate_id("exec", &exec.process.exec_id)
                .map_err(|e| format!("invalid id: {e}"))?;
        }
        Ok(())
    }
}

/// A wasm layer stored on the host, to run instead of an entrypoint file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerFile {
    /// The stored layer, opened on the host before the container is cloned.
    pub path: PathBuf,
    /// How logs and errors name it (image and digest).
    pub shown: String,
    /// argv[0] when the container names no command.
    pub name: String,
    /// `sha256:<hex>`: the stored file is checked against it on every use.
    #[serde(default)]
    pub digest: Option<String>,
}

/// The OCI digest (`sha256:<hex>`) of everything `from` reads: what a
/// stored layer is checked against.
pub fn sha256_digest(mut from: impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut from, &mut hasher)?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CreateResponse {
    Created { pid: i32 },
    Failed { error: String },
}

/// The helper's JSON answer; `missing` describes its absence.
pub(crate) fn parse_response(answer: &str, missing: &str) -> Result<i32, Error> {
    match serde_json::from_str::<CreateResponse>(answer) {
        Ok(CreateResponse::Created { pid }) => Ok(pid),
        Ok(CreateResponse::Failed { error }) => Err(Error::Create(error)),
        Err(_) => Err(Error::Helper(missing.to_string())),
    }
}
