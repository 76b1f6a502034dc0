//! The crate's error: what went wrong with a container, for the task layer
//! to name and map to a gRPC code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Create(String),
    #[error("{0}")]
    Helper(String),
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error("the container's process has already exited")]
    NotRunning,
    /// New resources the container cannot take (a memory limit below what
    /// its guests hold).
    #[error("{0}")]
    Resources(String),
    #[error("invalid signal {0}")]
    Signal(i32),
    #[error("{what}: {reason}")]
    Runtime { what: &'static str, reason: String },
}

impl Error {
    pub(crate) fn runtime(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Runtime {
            what,
            reason: reason.to_string(),
        }
    }
}
