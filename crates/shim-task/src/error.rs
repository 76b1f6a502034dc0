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
    /// Refuses an id from containerd's caller (`kind`: "task", "exec",
    /// "namespace", "sandbox") that is not a containerd identifier, before
    /// it names a file: `container <task id>: invalid id: <why>`. The task id is shown
    /// escaped, as it may hold anything.
    pub fn check_id(task_id: &str, kind: &'static str, id: &str) -> Result<(), TaskError> {
        shim_image::validate_id(kind, id).map_err(|e| TaskError::InvalidArgument {
            id: task_id.escape_debug().to_string(),
            reason: format!("invalid id: {e}"),
        })
    }

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
                shim_container::Error::Resources(_) => Code::FAILED_PRECONDITION,
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

    #[test]
    fn an_id_that_could_name_another_path_is_an_invalid_argument() {
        let (code, message) = status(TaskError::check_id("../x", "task", "../x").unwrap_err());
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("container ../x: invalid id: the task id \"../x\""),
            "{message}"
        );
        let (code, message) = status(TaskError::check_id("c1", "exec", "a/b").unwrap_err());
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("container c1: invalid id: the exec id \"a/b\""),
            "{message}"
        );
        let (_, message) = status(TaskError::check_id("a\nb", "task", "a\nb").unwrap_err());
        assert!(
            message.starts_with("container a\\nb: invalid id:"),
            "a line break is not written into the log: {message}"
        );
        assert!(TaskError::check_id("c1", "exec", "probe-1").is_ok());
    }
}
