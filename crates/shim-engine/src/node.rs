//! The configuration of node-local state: where the node's stores live (the
//! code cache and the wasm-layer store, docs/architecture.md "Node-local
//! state"), how large each may grow, and whether there are any.
//!
//! One value, [`NodeConfig`], with its defaults here and nowhere else. `shim
//! start` reads it from containerd's environment with the handler's
//! `CacheDir` over it and hands it to the pod's shim server in the
//! environment ([`NodeConfig::to_env`]), as the engine's options are handed
//! down; every process of the shim then reads it once ([`NodeConfig::get`]):
//! the server for the layer store, the zygote for the create helpers it
//! forks, which pass it to their code server. docs/configuration.md lists
//! the settings.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The root of the node's stores; `off` (or empty): none.
pub const DIR_ENV: &str = "WASMTIME_SHIM_CACHE_DIR";
/// The bound on each store's size, in MiB.
pub const LIMIT_ENV: &str = "WASMTIME_SHIM_CACHE_LIMIT_MB";

/// Where the node's stores live unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd-shim-wasmtime";
/// The default bound on each store's size: 2 GiB.
pub const DEFAULT_LIMIT: u64 = 2 << 30;

const OFF: &str = "off";

/// Where node-local state lives, and how much of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The root of the node's stores; `None`: the cache is off (every
    /// container compiles its guest, wasm layers are kept in the bundle).
    pub root: Option<PathBuf>,
    /// The bound on each store's size, in bytes.
    pub limit: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            root: Some(PathBuf::from(DEFAULT_ROOT)),
            limit: DEFAULT_LIMIT,
        }
    }
}

impl NodeConfig {
    /// This process's configuration, read from its environment the first
    /// time it is asked for.
    pub fn get() -> &'static NodeConfig {
        static CONFIG: OnceLock<NodeConfig> = OnceLock::new();
        CONFIG.get_or_init(Self::from_env)
    }

    /// Reads [`DIR_ENV`] and [`LIMIT_ENV`]; what is unset is the default.
    pub fn from_env() -> NodeConfig {
        Self::from_vars(|name| std::env::var_os(name))
    }

    fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> NodeConfig {
        let root = match var(DIR_ENV) {
            None => Some(PathBuf::from(DEFAULT_ROOT)),
            Some(dir) if dir.is_empty() || dir == OFF => None,
            Some(dir) => Some(PathBuf::from(dir)),
        };
        let limit = match var(LIMIT_ENV).map(|mb| mb.to_string_lossy().into_owned()) {
            None => DEFAULT_LIMIT,
            Some(mb) => match mb.trim().parse::<u64>() {
                Ok(mb) => mb.saturating_mul(1 << 20),
                Err(_) => {
                    log::warn!("{LIMIT_ENV}={mb:?} is not a number of MiB; the default applies");
                    DEFAULT_LIMIT
                }
            },
        };
        NodeConfig { root, limit }
    }

    /// This configuration with the stores under `dir` instead, when given
    /// (a handler's `CacheDir`).
    pub fn with_root(self, dir: Option<PathBuf>) -> NodeConfig {
        match dir {
            Some(dir) => NodeConfig {
                root: Some(dir),
                ..self
            },
            None => self,
        }
    }

    /// The environment that hands this configuration to another process.
    pub fn to_env(&self) -> [(&'static str, String); 2] {
        let root = match &self.root {
            Some(root) => root.display().to_string(),
            None => OFF.to_string(),
        };
        [(DIR_ENV, root), (LIMIT_ENV, (self.limit >> 20).to_string())]
    }

    /// Where wasm layers are stored: `layers/` under the root, or in the
    /// container's bundle when the cache is off.
    pub fn layers_dir(&self, bundle: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join("layers"),
            None => bundle.join("layers"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> NodeConfig {
        NodeConfig::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn unset_is_the_default_and_off_is_none() {
        assert_eq!(from(&[]), NodeConfig::default());
        assert_eq!(from(&[(DIR_ENV, "off")]).root, None);
        assert_eq!(from(&[(DIR_ENV, "")]).root, None);
        let custom = from(&[(DIR_ENV, "/srv/wasm"), (LIMIT_ENV, "64")]);
        assert_eq!(custom.root, Some(PathBuf::from("/srv/wasm")));
        assert_eq!(custom.limit, 64 << 20);
        assert_eq!(from(&[(LIMIT_ENV, "lots")]).limit, DEFAULT_LIMIT);
        assert_eq!(from(&[(LIMIT_ENV, "99999999999999")]).limit, u64::MAX);
    }

    #[test]
    fn a_handlers_cache_dir_wins_and_the_environment_carries_it_whole() {
        let env = from(&[(DIR_ENV, "off"), (LIMIT_ENV, "100")]);
        let handler = env.clone().with_root(Some("/var/cache/gc".into()));
        assert_eq!(handler.root, Some(PathBuf::from("/var/cache/gc")));
        assert_eq!(handler.limit, 100 << 20);
        assert_eq!(env.clone().with_root(None), env);
        for config in [handler, env, NodeConfig::default()] {
            let vars = config.to_env();
            assert_eq!(
                from(&vars.each_ref().map(|(n, v)| (*n, v.as_str()))),
                config
            );
        }
        let bundle = Path::new("/run/bundle");
        assert_eq!(
            from(&[(DIR_ENV, "off")]).layers_dir(bundle),
            bundle.join("layers")
        );
        assert_eq!(
            NodeConfig::default().layers_dir(bundle),
            Path::new(DEFAULT_ROOT).join("layers")
        );
    }
}
