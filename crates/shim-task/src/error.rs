//! Every task error, and the one place it becomes a ttrpc status for containerd.

use containerd_shim::protos::ttrpc::{self, Code};

use crate::lifecycle::InvalidTransition;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("container {0}: no such task in this shim")]
    NotFound(String),
    #[error("container {0}: a task with this id already exists")]
    AlreadyExists(String),
    #[error("container {id}: {source}")]
    Transition {
        id: String,
        source: InvalidTransition,
    },
    #[error("container {id}: {reason}")]
    InvalidArgument { id: String, reason: String },
    #[error("{operation} is not supported by the wasmtime shim")]
    Unsupported { operation: &'static str },
    #[error("container {id}: {source}")]
    Container {
        id: String,
        source: shim_container::Error,
    },
}

impl TaskError {
    fn code(&self) -> Code {
        match self {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::Transition { .. } => Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            TaskError::Unsupported { .. } => Code::UNIMPLEMENTED,
            TaskError::Container { source, .. } => match source {
                // containerd reads NOT_FOUND on kill as "process already finished".
                shim_container::Error::NotRunning => Code::NOT_FOUND,
                shim_container::Error::Create(_) | shim_container::Error::Signal(_) => {
                    Code::INVALID_ARGUMENT
                }
                _ => Code::INTERNAL,
            },
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(error: TaskError) -> Self {
        log::warn!("{error}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: TaskError) -> (Code, String) {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_container_and_map_to_grpc_codes() {
        let (code, message) = status(TaskError::Container {
            id: "c1".into(),
            source: shim_container::Error::Create("entrypoint \"/x.wasm\" not found".into()),
        });
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert_eq!(message, "container c1: entrypoint \"/x.wasm\" not found");
        let (code, _) = status(TaskError::Container {
            id: "c1".into(),
            source: shim_container::Error::NotRunning,
        });
        assert_eq!(code, Code::NOT_FOUND);
        let (code, message) = status(TaskError::Unsupported { operation: "exec" });
        assert_eq!(code, Code::UNIMPLEMENTED);
        assert_eq!(message, "exec is not supported by the wasmtime shim");
        assert_eq!(status(TaskError::NotFound("x".into())).0, Code::NOT_FOUND);
    }
}
