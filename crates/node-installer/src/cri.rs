//! Asking the node's CRI which runtime handlers containerd actually loaded:
//! `RuntimeService/Status` with `verbose = true` returns containerd's CRI
//! config as JSON in `info["config"]`, whose `containerd.runtimes` map names
//! every handler. This is what kubelet sees, so it is the check that the
//! edit took effect (a config containerd did not read, or one that made the
//! CRI plugin fail to load, shows up here and nowhere else).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StatusRequest;
use tonic::transport::{Endpoint, Uri};

use crate::config::HANDLER;
use crate::Error;

/// The runtimes the CRI reports: handler name → runtime type.
pub type Handlers = Vec<(String, String)>;

/// One `Status` call; the handlers in containerd's loaded config.
pub fn handlers(socket: &Path) -> Result<Handlers, Error> {
    let config = status_config(socket)?;
    parse_handlers(&config).map_err(|message| Error::Cri {
        socket: socket.to_path_buf(),
        message,
    })
}

/// One `Status(verbose)` call: containerd's CRI config JSON (`info["config"]`).
pub fn status_config(socket: &Path) -> Result<String, Error> {
    let err = |message: String| Error::Cri {
        socket: socket.to_path_buf(),
        message,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("tokio: {e}")))?;
    let socket_path = socket.to_path_buf();
    let info = runtime.block_on(async move {
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket_path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let response = RuntimeServiceClient::new(channel)
            .status(StatusRequest { verbose: true })
            .await
            .map_err(|e| format!("Status: {}", e.message()))?;
        Ok::<_, String>(response.into_inner().info)
    });
    let mut info = info.map_err(err)?;
    info.remove("config")
        .ok_or_else(|| err("Status(verbose) has no info[\"config\"]".into()))
}

/// The runtimes in containerd's CRI config JSON (1.x and 2.x both name the
/// map `containerd.runtimes` with `runtimeType` in each entry).
pub fn parse_handlers(config_json: &str) -> Result<Handlers, String> {
    let config: serde_json::Value = serde_json::from_str(config_json)
        .map_err(|e| format!("info[\"config\"] is not JSON: {e}"))?;
    let runtimes = config
        .pointer("/containerd/runtimes")
        .and_then(|r| r.as_object())
        .ok_or("info[\"config\"] has no containerd.runtimes")?;
    Ok(runtimes
        .iter()
        .map(|(name, r)| {
            let runtime_type = r.get("runtimeType").and_then(|t| t.as_str()).unwrap_or("");
            (name.clone(), runtime_type.to_string())
        })
        .collect())
}

/// The runtime type the CRI reports for `wasmtime`, if any.
pub fn wasmtime_type(handlers: &Handlers) -> Option<&str> {
    handlers
        .iter()
        .find(|(name, _)| name == HANDLER)
        .map(|(_, t)| t.as_str())
}

/// Polls the CRI until `wasmtime` is (or, with `present = false`, is no
/// longer) reported, e.g. while containerd restarts. Fails with the last
/// answer after `timeout`.
pub fn wait_for_handler(
    socket: &Path,
    present: bool,
    timeout: Duration,
) -> Result<Handlers, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match handlers(socket) {
            Ok(h) if wasmtime_type(&h).is_some() == present => return Ok(h),
            Ok(h) => {
                let names: Vec<_> = h.iter().map(|(n, _)| n.as_str()).collect();
                format!("handlers are [{}]", names.join(", "))
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Cri {
                socket: PathBuf::from(socket),
                message: format!(
                    "the handler `{HANDLER}` was {} after {}s; last: {last}",
                    if present {
                        "not reported"
                    } else {
                        "still reported"
                    },
                    timeout.as_secs()
                ),
            });
        }
        log::debug!("waiting for the CRI at {}: {last}", socket.display());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_runtimes_of_containerds_config_json() {
        let json = r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{
            "runc":{"runtimeType":"io.containerd.runc.v2"},
            "wasmtime":{"runtimeType":"io.containerd.wasmtime.v1","PodAnnotations":["wasmtime.containerd.io/*"]}}}}"#;
        let h = parse_handlers(json).unwrap();
        assert_eq!(wasmtime_type(&h), Some("io.containerd.wasmtime.v1"));
        assert!(parse_handlers("{}")
            .unwrap_err()
            .contains("containerd.runtimes"));
    }
}
