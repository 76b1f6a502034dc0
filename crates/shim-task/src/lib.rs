//! The containerd shim v2 protocol for wasm containers.
//!
//! `containerd-shim` runs the CLI contract (`start`, `delete`, `-info`, the
//! ttrpc server, the SIGCHLD reaper); this crate supplies the [`WasmtimeShim`]
//! that answers it and the Task service ([`service`]) behind the server.
//! The container work itself is in `shim-container`.

pub mod error;
pub mod events;
pub mod layers;
pub mod lifecycle;
pub mod options;
pub mod runtime;
pub mod service;
pub mod stats;
pub mod stdin;
pub mod tty;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{spawn, Config, ExitSignal, Flags, Shim, StartOpts};

pub use service::TaskService;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.wasmtime.v1";

/// The `-info` answer containerd 2.x asks for before it uses a runtime: a
/// `containerd.types.RuntimeInfo` protobuf with this shim's name and
/// version, and its OCI runtime features (runtime-spec `features`, as
/// `runc features` prints them) where containerd looks: idmapped mounts,
/// which containerd 2 checks before it gives a runtime a container of a
/// pod with its own user namespace.
pub fn runtime_info() -> Vec<u8> {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.1",
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "mountExtensions": {"idmap": {"enabled": true}},
        },
    });
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }),
        features: MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/features/Features".into(),
            value: features.to_string().into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    };
    info.write_to_bytes().expect("RuntimeInfo encodes")
}

/// The annotation containerd's CRI plugin puts on every container of a pod.
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The pod a bundle's container belongs to, if it was created through CRI.
fn sandbox_id(bundle: &std::path::Path) -> Option<String> {
    let id = shim_container::Bundle::load(bundle)
        .ok()?
        .annotation(SANDBOX_ID_ANNOTATION)?
        .to_string();
    log::debug!("grouping by pod sandbox {id}");
    Some(id)
}

/// Checks the ids `start` and `delete` are given before any names a file:
/// the task's (its state directory and cgroup), the namespace's, and the
/// pod's sandbox id that `start` groups by (read from the bundle).
fn check_ids(id: &str, namespace: &str, sandbox: Option<&str>) -> Result<(), error::TaskError> {
    error::TaskError::check_id(id, "task", id)?;
    error::TaskError::check_id(id, "namespace", namespace)?;
    sandbox.map_or(Ok(()), |sandbox| {
        error::TaskError::check_id(id, "sandbox", sandbox)
    })
}

/// Removes the socket file of address `address` (`unix:///path` or a path), if it is a socket.
fn remove_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if path.is_empty() {
        return;
    }
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("cannot remove the socket {path}: {e}");
        }
    }
}

/// The runtime options containerd writes to `shim start`'s stdin (an `Any`).
fn read_start_options() -> Result<options::RuntimeOptions, String> {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::Message;
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the runtime options: {e}"))?;
    if bytes.is_empty() {
        return Ok(options::RuntimeOptions::default());
    }
    let any =
        Any::parse_from_bytes(&bytes).map_err(|e| format!("malformed runtime options: {e}"))?;
    options::RuntimeOptions::from_any(Some(&any))
}

pub struct WasmtimeShim {
    id: String,
    namespace: String,
    /// containerd's API socket (`-address`).
    address: String,
    bundle: PathBuf,
    debug: bool,
    exit: Arc<ExitSignal>,
    /// The server's socket (`-socket`), empty for `start` and `delete`.
    socket: String,
}

/// Puts SIGPIPE back to ignored, as every Rust program starts.
///
/// containerd-shim catches SIGPIPE with its signal thread, which is also
/// the reaper, and logs each one at debug level into containerd's `log` fifo.
/// While containerd is down (a restart) that fifo has no reader, so the log
/// line raises the next SIGPIPE: the thread spun at 100% CPU and reaped no
/// guest, and containerd 1.7+ then found a dead task's zombie still listed.
/// Ignored, a write to a closed fifo or socket is a plain EPIPE (the log line
/// is dropped, as runc's shim drops it).
fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN runs no code in the handler.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) } {
        log::warn!("cannot ignore SIGPIPE: {e}");
    }
}

impl Shim for WasmtimeShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        ignore_sigpipe();
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            bundle,
            debug: args.debug,
            exit: Arc::default(),
            socket: args.socket.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim per pod: containers of a pod share the socket keyed by the
        // pod's sandbox id, so `start` returns the pod's running shim.
        let sandbox = sandbox_id(&self.bundle);
        if let Err(e) = check_ids(&opts.id, &opts.namespace, sandbox.as_deref()) {
            // As for bad options below: containerd shows what `start` prints.
            eprintln!("{e}");
            std::process::exit(1);
        }
        let grouping = sandbox.unwrap_or_else(|| opts.id.clone());
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &grouping);
        // The pod's shim is serving: hand containerd its address without
        // spawning. (containerd-shim's `spawn` would start a second server that
        // exits at once; when its SIGCHLD lands after this process has dropped
        // its signal pipe, the handler's write fails with EPIPE, the SIGPIPE
        // handler writes again, and `start` spins forever: containerd hangs.)
        let serving = address
            .strip_prefix("unix://")
            .is_some_and(|path| std::os::unix::net::UnixStream::connect(path).is_ok());
        if serving {
            write_address(&address)?;
            return Ok(address);
        }
        // The handler's options come on stdin; a bad table fails here, so
        // the pod's first create reports it. The server gets them in its
        // environment, before its zygote builds the engine: the engine's
        // part, and the node's cache (containerd's environment with the
        // handler's `CacheDir` over it).
        let options = match read_start_options().and_then(|o| o.validate().map(|()| o)) {
            Ok(options) => options,
            Err(reason) => {
                // containerd shows what `start` prints: the reason itself,
                // not containerd-shim's debug rendering of an error.
                eprintln!("container {}: {}", opts.id, reason.trim_end());
                std::process::exit(1);
            }
        };
        let engine = options.engine.to_env();
        let node = shim_engine::NodeConfig::from_env()
            .with_root(options.cache_dir.clone())
            .to_env();
        let mut vars = vec![(shim_engine::options::OPTIONS_ENV, engine.as_str())];
        vars.extend(node.iter().map(|(name, value)| (*name, value.as_str())));
        log::debug!("engine options for this handler: {engine}; node-local state: {node:?}");
        let (_pid, address) = spawn(opts, &grouping, vars)?;
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd runs `shim delete` after the shim died or failed: remove
        // whatever the container left (processes, cgroup, state, rootfs mount).
        check_ids(&self.id, &self.namespace, None)
            .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
        if let Err(e) = shim_container::cleanup(&self.bundle, &self.id) {
            log::warn!("container {}: cleanup after the shim: {e}", self.id);
        }
        // A killed shim leaves its socket; no server answers on it any more
        // (a pod's shim still serving other tasks does, and keeps it).
        if let Ok(address) = std::fs::read_to_string(self.bundle.join("address")) {
            let path = address
                .trim()
                .strip_prefix("unix://")
                .unwrap_or(address.trim());
            let refused = std::os::unix::net::UnixStream::connect(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
            if refused {
                remove_socket(path);
            }
        }
        Ok(DeleteResponse {
            exit_status: lifecycle::KILLED_EXIT_STATUS,
            exited_at: MessageField::some(Timestamp::from(SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The socket goes now, while this shim is sure it is its own.
        // containerd-shim removes it after the server stops, reading its
        // address from the bundle's `address` file, which containerd may
        // have deleted by then (it does not wait for the shim to exit after
        // Shutdown): the socket was then left in /run/containerd/s.
        remove_socket(&self.socket);
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            layers::ContainerdApi {
                address: self.address.clone(),
                namespace: self.namespace.clone(),
            },
            self.debug,
            publisher,
            self.exit.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::protos::types::introspection::RuntimeInfo;

    #[test]
    fn runtime_info_names_the_runtime_and_version() {
        let info = RuntimeInfo::parse_from_bytes(&super::runtime_info()).unwrap();
        assert_eq!(info.name, super::RUNTIME_ID);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        let features: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(
            features["linux"]["mountExtensions"]["idmap"]["enabled"],
            true
        );
        assert!(info
            .features
            .type_url
            .ends_with("/runtime-spec/1/features/Features"));
    }

    #[test]
    fn start_and_delete_refuse_ids_that_could_name_other_paths() {
        let cri = "6ea6e2c12ac1e52ba0d88ce0b0d1d4d0b1f96e9c1b3e0f28b3c3b9a4d6e2f8a1";
        assert!(super::check_ids(cri, "k8s.io", Some(cri)).is_ok());
        assert!(super::check_ids("nginx", "default", None).is_ok());
        for (id, namespace, sandbox) in [
            ("../x", "default", None),
            ("c1", "../../etc", None),
            ("c1", "", None),
            ("c1", "k8s.io", Some("a/b")),
        ] {
            let e = super::check_ids(id, namespace, sandbox).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("container {id}: invalid id: ")),
                "{e}"
            );
        }
    }
}
