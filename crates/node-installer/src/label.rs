//! The node label `wasmtime.containerd.io/ready=true`, which the RuntimeClass
//! `wasmtime` selects on: set once the CRI reports the handler, removed
//! first on uninstall, so wasm pods are only scheduled where they can run.
//!
//! One JSON merge-patch (`PATCH /api/v1/nodes/NAME`) with the pod's service
//! account, over TLS verified against the cluster CA the pod is given. No
//! Kubernetes client library: one request does not justify one.
//! Outside a cluster (no `KUBERNETES_SERVICE_HOST`, token or `NODE_NAME`)
//! labelling is skipped with a log line saying why.
//!
//! Untested against a live API server (none runs where this is built); the
//! request is unit-tested below.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::Error;

pub const LABEL: &str = "wasmtime.containerd.io/ready";
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What a pod knows about its cluster.
#[derive(Debug, Clone)]
pub struct InCluster {
    pub api: String,
    pub token: String,
    pub ca_pem: Vec<u8>,
    pub node: String,
}

/// A request, built apart from sending it so it can be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub url: String,
    pub content_type: &'static str,
    pub authorization: String,
    pub body: String,
}

impl InCluster {
    /// From the environment and the service account files; `Err` says why
    /// this is not a pod in a cluster.
    pub fn from_env(service_account_dir: &Path) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let host = var("KUBERNETES_SERVICE_HOST").ok_or("KUBERNETES_SERVICE_HOST is not set")?;
        let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
        let node = var("NODE_NAME")
            .ok_or("NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)")?;
        let read = |name: &str| {
            let path: PathBuf = service_account_dir.join(name);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let token = String::from_utf8(read("token")?)
            .map_err(|_| "the service account token is not text".to_string())?
            .trim()
            .to_string();
        let ca_pem = read("ca.crt")?;
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Self {
            api: format!("https://{host}:{port}"),
            token,
            ca_pem,
            node,
        })
    }

    /// The merge-patch that sets (`ready`) or removes the label; `null`
    /// deletes a key in a JSON merge-patch (RFC 7386).
    pub fn patch(&self, ready: bool) -> Patch {
        let value = if ready {
            serde_json::json!("true")
        } else {
            serde_json::Value::Null
        };
        let body = serde_json::json!({ "metadata": { "labels": { LABEL: value } } });
        Patch {
            url: format!("{}/api/v1/nodes/{}", self.api, self.node),
            content_type: "application/merge-patch+json",
            authorization: format!("Bearer {}", self.token),
            body: body.to_string(),
        }
    }

    pub fn send(&self, patch: &Patch) -> Result<(), Error> {
        let err = |message: String| Error::Label {
            node: self.node.clone(),
            message,
        };
        let certs: Vec<_> = ureq::tls::parse_pem(&self.ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(err(
                "the service account's ca.crt holds no certificate".into()
            ));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .patch(&patch.url)
            .header("Authorization", &patch.authorization)
            .header("Content-Type", patch.content_type)
            .send(patch.body.as_str())
            .map_err(|e| err(format!("PATCH {}: {e}", patch.url)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            return Err(err(format!(
                "PATCH {} answered {status}: {}",
                patch.url,
                body.trim()
            )));
        }
        Ok(())
    }
}

/// Sets or removes the label when running in a cluster; logs and skips otherwise.
pub fn set(service_account_dir: &Path, ready: bool) -> Result<(), Error> {
    match InCluster::from_env(service_account_dir) {
        Err(why) => {
            log::info!("not labelling the node ({why}): not running in a Kubernetes pod");
            Ok(())
        }
        Ok(cluster) => {
            let patch = cluster.patch(ready);
            cluster.send(&patch)?;
            if ready {
                log::info!("labelled node {} {LABEL}=true", cluster.node);
            } else {
                log::info!("removed label {LABEL} from node {}", cluster.node);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> InCluster {
        InCluster {
            api: "https://10.43.0.1:443".into(),
            token: "tok".into(),
            ca_pem: Vec::new(),
            node: "node-1".into(),
        }
    }

    #[test]
    fn the_patch_sets_and_removes_only_the_label() {
        let set = cluster().patch(true);
        assert_eq!(set.url, "https://10.43.0.1:443/api/v1/nodes/node-1");
        assert_eq!(set.content_type, "application/merge-patch+json");
        assert_eq!(set.authorization, "Bearer tok");
        assert_eq!(
            set.body,
            r#"{"metadata":{"labels":{"wasmtime.containerd.io/ready":"true"}}}"#
        );
        let unset = cluster().patch(false);
        assert_eq!(
            unset.body,
            r#"{"metadata":{"labels":{"wasmtime.containerd.io/ready":null}}}"#
        );
    }

    #[test]
    fn from_env_reads_the_service_account_and_brackets_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc\n").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "pem").unwrap();
        // The only test touching these variables (tests run in threads).
        std::env::set_var("KUBERNETES_SERVICE_HOST", "fd00::1");
        std::env::set_var("KUBERNETES_SERVICE_PORT", "6443");
        std::env::set_var("NODE_NAME", "n");
        let c = InCluster::from_env(dir.path()).unwrap();
        assert_eq!(c.api, "https://[fd00::1]:6443");
        assert_eq!(c.token, "abc");
        let err = c.send(&c.patch(true)).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        std::env::remove_var("NODE_NAME");
        assert!(InCluster::from_env(dir.path())
            .unwrap_err()
            .contains("NODE_NAME"));
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
        std::env::remove_var("KUBERNETES_SERVICE_PORT");
    }
}
