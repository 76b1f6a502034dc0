//! The runtime options of a handler: the `options` table under
//! `[...containerd.runtimes.<handler>]` in containerd's config.
//!
//! containerd's CRI plugin encodes that table for a runtime type it does not
//! know (every one but runc's) as `runtimeoptions.v1.Options`: the whole
//! table as TOML in `config_body` (containerd 1.7 and later), or, when the
//! table sets `ConfigPath`, only that path, and the file holds the same keys
//! (the only way on containerd 1.6, which passes no body). `ctr run
//! --runtime-config-path` sends the path too. runc's own
//! `containerd.runc.v1.Options` is read as well, for `SystemdCgroup`.
//!
//! containerd sends the options with `shim start` (on stdin) and with every
//! `CreateTask`; `start` validates them, so a handler with a bad table fails
//! its first pod with the reason, and hands the engine's part to the server.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};
use containerd_shim::protos::shim::oci::Options as RuncOptions;
use shim_engine::EngineOptions;

/// Keys of the table that containerd itself reads.
const CONTAINERD_KEYS: [&str; 2] = ["TypeUrl", "ConfigPath"];

/// A handler's options; [`RuntimeOptions::validate`] checks the engine's part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The cgroup driver, when the table says (`SystemdCgroup`); otherwise
    /// the container's `cgroupsPath` tells (see [`systemd_cgroups_path`]).
    pub systemd_cgroup: Option<bool>,
    /// The root of the node's stores for this handler (`CacheDir`), over
    /// the shim's environment's (`shim_engine::NodeConfig`).
    pub cache_dir: Option<PathBuf>,
    pub engine: EngineOptions,
    /// Where the options came from, for errors.
    pub origin: String,
}

impl RuntimeOptions {
    /// Reads the options containerd sent, from their `Any` encoding.
    pub fn from_any(any: Option<&Any>) -> Result<Self, String> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(Self::default());
        };
        if any.type_url.ends_with("containerd.runc.v1.Options") {
            let runc = RuncOptions::parse_from_bytes(&any.value)
                .map_err(|e| format!("malformed runtime options: {e}"))?;
            // protobuf cannot tell `false` from unset, and containerd 2
            // sends runc's options unasked (with `IoUid`/`IoGid`) to every
            // container of a pod with its own user namespace: `false`
            // leaves the driver to the cgroups path, as no options do.
            return Ok(Self {
                systemd_cgroup: runc.systemd_cgroup.then_some(true),
                origin: "runc's options".into(),
                ..Self::default()
            });
        }
        if !any.type_url.ends_with("runtimeoptions.v1.Options") {
            return Err(format!(
                "unsupported runtime options type {:?} (expected runtimeoptions.v1.Options, \
                 as containerd sends a handler's options table, or containerd.runc.v1.Options)",
                any.type_url
            ));
        }
        let (config_path, config_body) = decode_runtimeoptions(&any.value)
            .map_err(|e| format!("malformed runtime options: {e}"))?;
        if !config_path.is_empty() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| {
                format!("runtime options: cannot read ConfigPath {config_path}: {e}")
            })?;
            return Self::from_toml(&text, &config_path);
        }
        let text = String::from_utf8(config_body)
            .map_err(|_| "runtime options: the options table is not UTF-8".to_string())?;
        Self::from_toml(&text, "the runtime's options table")
    }

    /// Reads the keys of an options table; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let bad = |reason: String| format!("runtime options ({origin}): {reason}");
        let mut table: toml::Table = text.parse().map_err(|e| bad(format!("{e}")))?;
        for key in CONTAINERD_KEYS {
            table.remove(key);
        }
        let systemd_cgroup = match table.remove("SystemdCgroup") {
            None => None,
            Some(toml::Value::Boolean(b)) => Some(b),
            Some(other) => return Err(bad(format!("SystemdCgroup = {other} is not a boolean"))),
        };
        let cache_dir = match table.remove("CacheDir") {
            None => None,
            Some(toml::Value::String(dir)) if dir.starts_with('/') => Some(PathBuf::from(dir)),
            Some(other) => return Err(bad(format!("CacheDir = {other} is not an absolute path"))),
        };
        let engine: EngineOptions = table.try_into().map_err(|e| bad(format!("{e}")))?;
        Ok(Self {
            systemd_cgroup,
            cache_dir,
            engine,
            origin: origin.to_string(),
        })
    }

    /// Checks the engine's part by building an engine from it: what `start`
    /// does once per pod (create only reads the cgroup driver).
    pub fn validate(&self) -> Result<(), String> {
        self.engine
            .validate()
            .map_err(|e| format!("runtime options ({}): {e}", self.origin))
    }

    /// Whether `cgroups_path` (the spec's) asks for the systemd driver.
    pub fn systemd(&self, cgroups_path: Option<&str>) -> bool {
        self.systemd_cgroup
            .unwrap_or_else(|| cgroups_path.is_some_and(systemd_cgroups_path))
    }
}

/// Whether a `cgroupsPath` is in systemd's `slice:prefix:name` form, which
/// containerd's CRI plugin and kubelet give only with the systemd driver.
pub fn systemd_cgroups_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split(':').collect();
    parts.len() == 3 && parts[0].ends_with(".slice") && !parts[2].is_empty()
}

/// `runtimeoptions.v1.Options`: `type_url` (1), `config_path` (2) and
/// `config_body` (3); not among the crate's generated types.
fn decode_runtimeoptions(bytes: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), Vec::new());
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        match tag {
            // field 2, length-delimited
            18 => path = input.read_string().map_err(|e| e.to_string())?,
            // field 3, length-delimited
            26 => body = input.read_bytes().map_err(|e| e.to_string())?,
            _ => {
                let wire = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7)
                    .ok_or_else(|| format!("bad wire type in tag {tag}"))?;
                input.skip_field(wire).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::CodedOutputStream;

    fn runtimeoptions(path: &str, body: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "").unwrap();
            out.write_string(2, path).unwrap();
            out.write_bytes(3, body.as_bytes()).unwrap();
            out.flush().unwrap();
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn an_inline_table_sets_the_driver_the_cache_and_the_engine() {
        let any = runtimeoptions(
            "",
            "SystemdCgroup = true\nCacheDir = \"/var/cache/wasm-gc\"\nWasmGc = true\n\
             WasmFunctionReferences = true\nOptLevel = \"speed_and_size\"\n",
        );
        let options = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert_eq!(options.systemd_cgroup, Some(true));
        assert_eq!(options.cache_dir, Some(PathBuf::from("/var/cache/wasm-gc")));
        assert!(options.engine.wasm_gc && options.engine.wasm_function_references);
        assert_eq!(
            options.engine.opt_level,
            shim_engine::OptLevel::SpeedAndSize
        );
        assert!(options.engine.wasm_simd, "unset keys keep their defaults");
    }

    #[test]
    fn config_path_names_a_file_with_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wasmtime.toml");
        std::fs::write(&file, "WasmThreads = true\nPoolingAllocator = false\n").unwrap();
        let any = runtimeoptions(file.to_str().unwrap(), "");
        let options = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert!(options.engine.wasm_threads);
        assert_eq!(options.systemd_cgroup, None);
        let missing = runtimeoptions("/no/such/options.toml", "");
        let err = RuntimeOptions::from_any(Some(&missing)).unwrap_err();
        assert!(
            err.contains("cannot read ConfigPath /no/such/options.toml"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_values_are_refused_with_the_key() {
        for (table, expected) in [
            ("WasmGC = true", "WasmGC"),
            ("WasmGc = \"yes\"", "WasmGc"),
            ("OptLevel = \"fast\"", "fast"),
            ("SystemdCgroup = 1", "SystemdCgroup"),
            ("CacheDir = \"cache\"", "CacheDir"),
            ("PoolingInstances = 0", "PoolingInstances"),
            ("WasmSimd = false", "simd"),
            ("WasmThreads = true", "PoolingAllocator = false"),
        ] {
            let err = RuntimeOptions::from_any(Some(&runtimeoptions("", table)))
                .and_then(|options| options.validate())
                .unwrap_err();
            assert!(err.contains(expected), "{table}: {err}");
            assert!(err.starts_with("runtime options"), "{err}");
        }
    }

    #[test]
    fn runc_options_and_none_are_read_too() {
        let runc = RuncOptions {
            systemd_cgroup: true,
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: runc.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let options = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert_eq!(options.systemd_cgroup, Some(true));
        // What containerd 2 sends to a container of a user-namespaced pod:
        // runc's options with only IoUid/IoGid; the path decides.
        let io_owner = RuncOptions {
            io_uid: 6553600,
            io_gid: 6553600,
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: io_owner.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let options = RuntimeOptions::from_any(Some(&any)).unwrap();
        assert_eq!(options.systemd_cgroup, None);
        assert!(options.systemd(Some("kubepods-pod1.slice:cri-containerd:abc")));
        assert_eq!(
            RuntimeOptions::from_any(None).unwrap(),
            RuntimeOptions::default()
        );
        let other = Any {
            type_url: "io.containerd.runsc.v1.options".into(),
            ..Default::default()
        };
        assert!(RuntimeOptions::from_any(Some(&other)).is_err());
    }

    #[test]
    fn the_cgroups_path_tells_the_driver_when_the_options_do_not() {
        let unset = RuntimeOptions::default();
        assert!(unset.systemd(Some("kubepods-besteffort.slice:cri-containerd:abc")));
        assert!(!unset.systemd(Some("/k8s.io/abc")));
        assert!(!unset.systemd(None));
        let cgroupfs = RuntimeOptions {
            systemd_cgroup: Some(false),
            ..Default::default()
        };
        assert!(!cgroupfs.systemd(Some("system.slice:cri-containerd:abc")));
    }
}
