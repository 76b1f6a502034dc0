//! The node-local settings of the shim's processes: where the code cache
//! lives and how large it may grow (environment variables the shim's
//! runtime options set; docs/configuration.md).

use std::path::PathBuf;

/// Where the node's code cache lives: `$WASMTIME_SHIM_CACHE_DIR` (`off` for
/// none), else [`shim_engine::cache::DEFAULT_ROOT`]; bounded to
/// `$WASMTIME_SHIM_CACHE_LIMIT_MB` MiB. A cache that cannot be opened costs
/// speed, not the container: it then compiles without one.
pub const CACHE_DIR_ENV: &str = "WASMTIME_SHIM_CACHE_DIR";

pub const CACHE_LIMIT_ENV: &str = "WASMTIME_SHIM_CACHE_LIMIT_MB";

/// The node's cache directory, `None` when the cache is off.
pub fn cache_root() -> Option<PathBuf> {
    let root =
        std::env::var_os(CACHE_DIR_ENV).unwrap_or_else(|| shim_engine::cache::DEFAULT_ROOT.into());
    (root != "off" && !root.is_empty()).then(|| PathBuf::from(root))
}

/// The bound on the cache's size in bytes.
pub fn cache_limit() -> u64 {
    std::env::var(CACHE_LIMIT_ENV)
        .ok()
        .and_then(|mb| mb.parse::<u64>().ok())
        .map_or(shim_engine::cache::DEFAULT_LIMIT, |mb| mb << 20)
}
