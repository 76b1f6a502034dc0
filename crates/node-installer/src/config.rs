//! containerd's TOML config, read and edited with `toml_edit` so an edited
//! file keeps its comments, order and formatting: an operator diffing it
//! sees only the runtime that was added.
//!
//! The CRI plugin's name depends on the config's `version` key, not on the
//! text: `version = 2` (containerd 1.x) keeps runtimes under
//! `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`, `version = 3`
//! (containerd 2.x) under `plugins."io.containerd.cri.v1.runtime".containerd.runtimes`.
//! Version 1 (no key; `plugins.cri`) is refused: containerd 1.x still reads
//! it, but the installer would have to guess its layout.

use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use crate::Error;

/// The runtime handler pods name with `runtimeClassName: wasmtime`.
pub const HANDLER: &str = "wasmtime";
/// The shim's runtime type; containerd looks up `containerd-shim-wasmtime-v1` on its PATH.
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";
/// Annotations the shim reads (docs/configuration.md); containerd passes on
/// only those a runtime lists.
pub const ANNOTATIONS: &str = "wasmtime.containerd.io/*";
const RUNC_TYPE: &str = "io.containerd.runc.v2";

/// A containerd config schema version the installer knows how to edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `version = 2`: containerd 1.x.
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl Version {
    /// The plugin whose `containerd.runtimes` map CRI handlers come from.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            Version::V2 => "io.containerd.grpc.v1.cri",
            Version::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    pub fn number(self) -> i64 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// One parsed config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub doc: DocumentMut,
}

/// A runtime found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub runtime_type: Option<String>,
    pub systemd_cgroup: Option<bool>,
}

impl Config {
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let doc = text.parse::<DocumentMut>().map_err(|e| Error::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            doc,
        })
    }

    /// The `version` key; a missing key is version 1.
    pub fn version_number(&self) -> Result<i64, Error> {
        match self.doc.get("version") {
            None => Ok(1),
            Some(item) => item.as_integer().ok_or_else(|| Error::Config {
                path: self.path.clone(),
                message: format!("`version` is not an integer: {}", item.to_string().trim()),
            }),
        }
    }

    pub fn version(&self) -> Result<Version, Error> {
        match self.version_number()? {
            2 => Ok(Version::V2),
            3 => Ok(Version::V3),
            n => Err(Error::Config {
                path: self.path.clone(),
                message: format!(
                    "config version {n} is not supported (2 for containerd 1.x, 3 for 2.x); \
                     migrate it with `containerd config migrate`"
                ),
            }),
        }
    }

    /// The `imports` list as written (globs and relative paths unresolved).
    pub fn imports(&self) -> Vec<String> {
        self.doc
            .get("imports")
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The CRI plugin's runtimes map (a standard or inline table).
    fn runtimes(&self, version: Version) -> Option<&dyn toml_edit::TableLike> {
        self.doc
            .get("plugins")?
            .get(version.cri_plugin())?
            .get("containerd")?
            .get("runtimes")?
            .as_table_like()
    }

    /// A runtime under the CRI plugin's `containerd.runtimes`, if configured.
    pub fn runtime(&self, version: Version, name: &str) -> Option<Runtime> {
        let runtime = self.runtimes(version)?.get(name)?;
        Some(Runtime {
            runtime_type: runtime
                .get("runtime_type")
                .and_then(Item::as_str)
                .map(str::to_string),
            systemd_cgroup: runtime
                .get("options")
                .and_then(|o| o.get("SystemdCgroup"))
                .and_then(Item::as_bool),
        })
    }

    /// `default_runtime_name` of the CRI plugin, if set.
    pub fn default_runtime_name(&self, version: Version) -> Option<String> {
        self.doc
            .get("plugins")?
            .get(version.cri_plugin())?
            .get("containerd")?
            .get("default_runtime_name")?
            .as_str()
            .map(str::to_string)
    }

    /// `grpc.address`, the socket the CRI is served on.
    pub fn grpc_address(&self) -> Option<String> {
        self.doc
            .get("grpc")?
            .get("address")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    pub fn to_text(&self) -> String {
        self.doc.to_string()
    }
}

/// A `runc` entry to add beside the handler: needed when the runtimes map
/// being written has no entry for the default runtime, because a configured
/// map replaces containerd's built-in one and the CRI plugin then refuses to
/// load.
#[derive(Debug, Clone, Copy)]
pub struct Runc {
    /// The node's runc `SystemdCgroup`.
    pub systemd_cgroup: bool,
}

/// Adds (or brings up to date) the `wasmtime` runtime in `doc`, and `runc`
/// if given and missing. Idempotent: applied to its own output it changes
/// nothing.
///
/// The handler gets no `options` table: the shim takes the cgroup driver
/// from the container's cgroups path, which containerd's CRI shapes after
/// kubelet's pod parent (`slice:prefix:name` under a `.slice`), so it always
/// matches kubelet's driver. A table would also stop containerd 2.x from
/// running pods with their own user namespace on the handler: it sets their
/// containers' I/O owner in runc's options type and refuses any other
/// (docs/kubernetes.md, "User namespaces"). A `SystemdCgroup` that an
/// earlier version of the installer wrote there is removed, and the table
/// with it when nothing else is in it.
pub fn set_wasmtime_runtime(doc: &mut DocumentMut, version: Version, runc: Option<Runc>) {
    let plugin = version.cri_plugin();
    let runtimes = table_path(
        doc.as_table_mut(),
        &["plugins", plugin, "containerd", "runtimes"],
    );
    // New tables go right after the last table already under `runtimes`, so
    // the runtime appears next to runc in the file, not at its end.
    let anchor = last_position(runtimes);
    if let Some(Runc { systemd_cgroup }) = runc.filter(|_| !runtimes.contains_key("runc")) {
        let runc = child_table(runtimes, "runc", anchor);
        set_if_changed(runc, "runtime_type", Value::from(RUNC_TYPE));
        let options = child_table(runc, "options", anchor);
        set_if_changed(options, "SystemdCgroup", Value::from(systemd_cgroup));
    }
    let runtime = child_table(runtimes, HANDLER, anchor);
    set_if_changed(runtime, "runtime_type", Value::from(RUNTIME_TYPE));
    for key in ["pod_annotations", "container_annotations"] {
        let mut list = runtime
            .get(key)
            .and_then(Item::as_array)
            .cloned()
            .unwrap_or_default();
        if !list.iter().any(|v| v.as_str() == Some(ANNOTATIONS)) {
            list.push(ANNOTATIONS);
            runtime.insert(key, Item::Value(Value::Array(list)));
        }
    }
    if let Some(options) = runtime.get_mut("options").and_then(Item::as_table_like_mut) {
        options.remove("SystemdCgroup");
        if options.is_empty() {
            runtime.remove("options");
        }
    }
}

/// Adds `path` to the top-level `imports` list unless it is there already.
pub fn add_import(doc: &mut DocumentMut, path: &str) {
    let mut imports = doc
        .get("imports")
        .and_then(Item::as_array)
        .cloned()
        .unwrap_or_else(Array::new);
    if imports.iter().any(|v| v.as_str() == Some(path)) {
        return;
    }
    imports.push(path);
    match doc.get_mut("imports") {
        Some(item) => *item = Item::Value(Value::Array(imports)),
        None => {
            // A top-level key must come before the first table; toml_edit
            // prints root keys first, after any existing ones.
            doc.insert("imports", Item::Value(Value::Array(imports)));
        }
    }
}

/// The text of a drop-in file holding only the `wasmtime` runtime.
pub fn drop_in(version: Version, runc: Option<Runc>) -> String {
    let mut doc = DocumentMut::new();
    doc.insert("version", toml_edit::value(version.number()));
    set_wasmtime_runtime(&mut doc, version, runc);
    format!(
        "# Written by containerd-wasmtime-installer: the runtime handler `wasmtime`\n\
         # (containerd-shim-wasmtime-v1). `containerd-wasmtime-installer uninstall` removes it.\n{doc}"
    )
}

fn set_if_changed(table: &mut Table, key: &str, value: Value) {
    let same = table
        .get(key)
        .and_then(Item::as_value)
        .map(|v| v.to_string().trim() == value.to_string().trim())
        .unwrap_or(false);
    if !same {
        table.insert(key, Item::Value(value));
    }
}

/// The table at `path`, creating implicit (header-less) tables on the way.
fn table_path<'a>(mut table: &'a mut Table, path: &[&str]) -> &'a mut Table {
    for key in path {
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        if !item.is_table() {
            // A dotted-key or inline table: turn it into a standard table so
            // children can be added with their own headers.
            if let Some(inline) = item.as_inline_table().cloned() {
                *item = Item::Table(inline.into_table());
            } else {
                *item = Item::Table(Table::new());
            }
        }
        table = item.as_table_mut().expect("made a table above");
    }
    table
}

fn child_table<'a>(parent: &'a mut Table, key: &str, anchor: Option<isize>) -> &'a mut Table {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_position(anchor);
        Item::Table(t)
    });
    if !item.is_table() {
        *item = Item::Table(Table::new());
    }
    item.as_table_mut().expect("made a table above")
}

/// The largest document position of `table` and the tables under it.
fn last_position(table: &Table) -> Option<isize> {
    let mut last = table.position();
    for (_, item) in table.iter() {
        if let Some(child) = item.as_table() {
            last = last.max(last_position(child));
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"version = 2
# keep me
[plugins]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
"#;

    #[test]
    fn adds_wasmtime_next_to_runc_keeping_the_rest() {
        let mut config = Config::parse(Path::new("/c.toml"), V2).unwrap();
        let version = config.version().unwrap();
        assert_eq!(version, Version::V2);
        let runc = config.runtime(version, "runc").unwrap();
        assert_eq!(runc.systemd_cgroup, Some(true));
        let want = None;
        set_wasmtime_runtime(&mut config.doc, version, want);
        let text = config.to_text();
        assert!(text.starts_with(
            V2.split("  [plugins.\"io.containerd.grpc.v1.cri\".cni]")
                .next()
                .unwrap()
        ));
        let wasm_at = text.find("runtimes.wasmtime]").unwrap();
        assert!(wasm_at < text.find(".cni]").unwrap(), "{text}");
        assert!(text.contains(r#"pod_annotations = ["wasmtime.containerd.io/*"]"#));
        let again = Config::parse(Path::new("/c.toml"), &text).unwrap();
        let wasm = again.runtime(version, HANDLER).unwrap();
        assert_eq!(wasm.runtime_type.as_deref(), Some(RUNTIME_TYPE));
        assert_eq!(wasm.systemd_cgroup, None, "no options table: {text}");
        assert!(!text.contains("wasmtime.options"), "{text}");
        let mut twice = again.clone();
        set_wasmtime_runtime(&mut twice.doc, version, want);
        assert_eq!(twice.to_text(), text, "a second edit changes nothing");
    }

    #[test]
    fn adds_runc_when_the_map_would_lose_it() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n";
        let mut config = Config::parse(Path::new("/c.toml"), text).unwrap();
        set_wasmtime_runtime(
            &mut config.doc,
            Version::V2,
            Some(Runc {
                systemd_cgroup: true,
            }),
        );
        let edited = Config::parse(Path::new("/c.toml"), &config.to_text()).unwrap();
        assert_eq!(
            edited
                .runtime(Version::V2, "runc")
                .unwrap()
                .runtime_type
                .as_deref(),
            Some(RUNC_TYPE)
        );
        assert_eq!(
            edited.runtime(Version::V2, "runc").unwrap().systemd_cgroup,
            Some(true)
        );
        assert!(edited.runtime(Version::V2, HANDLER).is_some());
    }

    #[test]
    fn an_earlier_installs_systemd_cgroup_is_removed_and_other_options_kept() {
        let old = format!(
            "{V2}    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n\
             \x20     runtime_type = \"io.containerd.wasmtime.v1\"\n\
             \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime.options]\n\
             \x20       SystemdCgroup = true\n"
        );
        let want = None;
        let mut config = Config::parse(Path::new("/c.toml"), &old).unwrap();
        set_wasmtime_runtime(&mut config.doc, Version::V2, want);
        let text = config.to_text();
        assert!(!text.contains("wasmtime.options"), "{text}");
        let runc = Config::parse(Path::new("/c.toml"), &text).unwrap();
        assert_eq!(
            runc.runtime(Version::V2, "runc").unwrap().systemd_cgroup,
            Some(true)
        );

        let with_more = old.replace(
            "SystemdCgroup = true\n",
            "SystemdCgroup = true\n        ConfigPath = \"/etc/containerd/wasmtime.toml\"\n",
        );
        let mut config = Config::parse(Path::new("/c.toml"), &with_more).unwrap();
        set_wasmtime_runtime(&mut config.doc, Version::V2, want);
        let text = config.to_text();
        assert!(text.contains("wasmtime.options]"), "{text}");
        assert!(text.contains("ConfigPath"), "{text}");
        assert_eq!(
            text.matches("SystemdCgroup").count(),
            1,
            "runc's only: {text}"
        );
    }

    #[test]
    fn version_three_uses_the_new_plugin_and_imports_are_appended_once() {
        let drop = drop_in(Version::V3, None);
        let config = Config::parse(Path::new("/d.toml"), &drop).unwrap();
        assert_eq!(config.version().unwrap(), Version::V3);
        assert!(
            drop.contains(
                "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]"
            ),
            "{drop}"
        );
        let mut main =
            Config::parse(Path::new("/c.toml"), "version = 3\nimports = []\n[grpc]\n").unwrap();
        add_import(&mut main.doc, "/etc/containerd/conf.d/x.toml");
        add_import(&mut main.doc, "/etc/containerd/conf.d/x.toml");
        assert_eq!(main.imports(), vec!["/etc/containerd/conf.d/x.toml"]);
    }

    #[test]
    fn refuses_version_one_and_garbage() {
        let v1 = Config::parse(Path::new("/c.toml"), "[plugins.cri]\n").unwrap();
        let err = v1.version().unwrap_err().to_string();
        assert!(
            err.contains("/c.toml") && err.contains("version 1"),
            "{err}"
        );
        let err = Config::parse(Path::new("/c.toml"), "version = [")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/c.toml"), "{err}");
    }
}
