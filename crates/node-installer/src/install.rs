//! `install` and `uninstall`: the plan for a node, applied file by file and
//! recorded, then one restart and the CRI check.
//!
//! Where the runtime goes, per flavour (see docs/installation.md):
//! - containerd 1.x (`version = 2`): edited in place, in the file whose CRI
//!   section containerd uses. A drop-in does not work there: containerd 1.x
//!   replaces a whole plugin section with an import's (checked with 1.6 and
//!   1.7: a drop-in holding only `runtimes.wasmtime` drops runc and the CRI
//!   plugin fails to load).
//! - containerd 2.x (`version = 3`): a drop-in, imported from the main
//!   config; 2.x merges imported plugin sections key by key.
//! - k3s/rke2: `config.toml.tmpl` (they rewrite config.toml at each start);
//!   a k3s that registers `wasmtime` itself is left alone.
//! - microk8s: its `containerd-template.toml`, in place.
//! - k0s: a drop-in in /etc/k0s/containerd.d, which k0s merges into its CRI config.
//!
//! A file that already configures `wasmtime` and was not written by this
//! installer is left alone (the operator's or the distribution's choice).

use std::path::{Path, PathBuf};

use crate::config::{self, Config, Version, WasmtimeRuntime, HANDLER, RUNTIME_TYPE};
use crate::flavour::{self, Kind, Node};
use crate::host::{sha256, Host};
use crate::restart::Restarter;
use crate::state::{FileKind, FileRecord, Original, State, Store};
use crate::{cri, label, Error, Options};

/// The shim's file name: containerd derives it from the runtime type.
pub const SHIM: &str = "containerd-shim-wasmtime-v1";
const DROP_IN: &str = "99-wasmtime.toml";

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub binary_changed: bool,
    pub config_changed: bool,
    pub restarted: bool,
    /// Why the config was not touched, when another party configures `wasmtime`.
    pub left_alone: Option<String>,
}

/// The config files to write, and what the plan found.
struct ConfigPlan {
    writes: Vec<(PathBuf, String)>,
    left_alone: Option<String>,
    /// The CRI socket as a host path.
    socket: PathBuf,
}

pub fn install(options: &Options) -> Result<Outcome, Error> {
    let host = Host::new(&options.host_root);
    let node = flavour::detect(&host, options.flavour)?;
    log::info!(
        "node: {} (config {}, service {})",
        node.kind,
        node.config.display(),
        node.unit
    );
    let restarter =
        Restarter::detect(&host, options.restart_command.as_deref()).map_err(|message| {
            Error::Restart {
                unit: node.unit.clone(),
                message,
            }
        })?;
    let store = Store::new(&host, &options.state_dir);
    let mut state = store.load()?.unwrap_or_default();
    let plan = plan_config(&host, &node, &state)?;
    let socket = match &options.cri_socket {
        Some(socket) => socket.clone(),
        None => host.path(&plan.socket)?,
    };
    state.flavour = node.kind.name().to_string();
    state.unit = node.unit.clone();
    state.socket = plan.socket.clone();

    let mut outcome = Outcome {
        left_alone: plan.left_alone.clone(),
        ..Outcome::default()
    };
    let shim = std::fs::read(&options.shim)
        .map_err(|e| Error::io("reading the shim binary", &options.shim, e))?;
    let target = options.bin_dir.join(SHIM);
    let mut changes = Changes {
        host: &host,
        store: &store,
        state: &mut state,
        any: false,
    };
    outcome.binary_changed = changes.put(&target, shim.as_slice(), 0o755, FileKind::Binary)?;
    if outcome.binary_changed {
        log::info!("installed {} (sha256 {})", target.display(), sha256(&shim));
    } else {
        log::info!(
            "{} is up to date (sha256 {})",
            target.display(),
            sha256(&shim)
        );
    }
    if let Some(why) = &plan.left_alone {
        log::info!("config left alone: {why}");
    }
    for (path, text) in &plan.writes {
        let mode = if host.exists(path) {
            host.mode(path)?
        } else {
            0o644
        };
        if changes.put(path, text.as_bytes(), mode, FileKind::Config)? {
            outcome.config_changed = true;
        } else {
            log::info!("{} already has the runtime `{HANDLER}`", path.display());
        }
    }
    if changes.any {
        store.save(&mut state)?;
        log::info!("recorded the changes in {}", store.file().display());
    }

    if outcome.config_changed {
        restarter.restart(&node.unit)?;
        outcome.restarted = true;
    } else {
        log::info!("no config change: {} not restarted", node.unit);
    }
    if options.verify {
        if !outcome.restarted && plan.left_alone.is_none() && !reports_wasmtime(&socket) {
            // The config is right but the running containerd predates it
            // (a run interrupted between writing and restarting).
            log::info!(
                "the config has `{HANDLER}` but the running containerd does not: restarting"
            );
            restarter.restart(&node.unit)?;
            outcome.restarted = true;
        }
        verify(&socket, options)?;
    } else {
        log::info!("not asking the CRI (--no-verify)");
    }
    label::set(&options.service_account_dir, true)?;
    Ok(outcome)
}

pub fn uninstall(options: &Options) -> Result<Outcome, Error> {
    let host = Host::new(&options.host_root);
    // Unlabel first: no new wasm pod should land here while the runtime goes.
    label::set(&options.service_account_dir, false)?;
    let store = Store::new(&host, &options.state_dir);
    let Some(mut state) = store.load()? else {
        log::info!(
            "no {}: nothing was installed by this installer on this node",
            store.file().display()
        );
        return Ok(Outcome::default());
    };
    let mut outcome = Outcome::default();
    let mut kept = Vec::new();
    for record in state.files.iter().rev() {
        let current = host.read(&record.path)?;
        if current.is_none() && record.original == Original::Absent {
            log::info!("{} is gone already", record.path.display());
            continue;
        }
        let current_sha = current.as_deref().map(sha256);
        if current_sha.as_deref() != Some(record.written_sha256.as_str()) {
            log::warn!(
                "{} changed since it was installed (sha256 {}, installed {}): leaving it",
                record.path.display(),
                current_sha.as_deref().unwrap_or("none: removed"),
                record.written_sha256
            );
            kept.push(record.clone());
            continue;
        }
        match &record.original {
            Original::Absent => {
                host.remove_file(&record.path)?;
                log::info!("removed {}", record.path.display());
            }
            Original::Present {
                backup,
                sha256: want,
                mode,
            } => {
                let bytes = host.read(backup)?.ok_or_else(|| Error::State {
                    path: store.file(),
                    message: format!(
                        "the backup {} of {} is gone",
                        backup.display(),
                        record.path.display()
                    ),
                })?;
                if sha256(&bytes) != *want {
                    return Err(Error::State {
                        path: store.file(),
                        message: format!(
                            "the backup {} does not match its recorded sha256",
                            backup.display()
                        ),
                    });
                }
                if record.kind == FileKind::Config {
                    log_diff(&record.path, current.as_deref().unwrap_or_default(), &bytes);
                }
                host.write_atomic(&record.path, &bytes, *mode)?;
                log::info!("restored {} (sha256 {want})", record.path.display());
            }
        }
        match record.kind {
            FileKind::Config => outcome.config_changed = true,
            FileKind::Binary => outcome.binary_changed = true,
        }
    }
    for dir in state.dirs.iter().rev() {
        if !host.remove_dir_if_empty(dir)? {
            log::info!("kept {}: it is not empty", dir.display());
        }
    }
    if outcome.config_changed {
        let restarter =
            Restarter::detect(&host, options.restart_command.as_deref()).map_err(|message| {
                Error::Restart {
                    unit: state.unit.clone(),
                    message,
                }
            })?;
        restarter.restart(&state.unit)?;
        outcome.restarted = true;
        if options.verify {
            let socket = match &options.cri_socket {
                Some(s) => s.clone(),
                None => host.path(&state.socket)?,
            };
            cri::wait_for_handler(&socket, false, options.verify_timeout)?;
            log::info!("the CRI no longer reports `{HANDLER}`");
        }
    }
    if kept.is_empty() {
        store.remove(&state)?;
        log::info!("uninstalled; {} removed", store.file().display());
        Ok(outcome)
    } else {
        kept.reverse();
        state.files = kept;
        state.dirs.clear();
        store.save(&mut state)?;
        Err(Error::State {
            path: store.file(),
            message: format!(
                "{} file(s) changed by someone else since install were left as they are; \
                 their originals are still in the backup directory",
                state.files.len()
            ),
        })
    }
}

fn reports_wasmtime(socket: &Path) -> bool {
    cri::handlers(socket)
        .map(|h| cri::wasmtime_type(&h).is_some())
        .unwrap_or(false)
}

fn verify(socket: &Path, options: &Options) -> Result<(), Error> {
    log::info!(
        "waiting for the CRI at {} to report `{HANDLER}`",
        socket.display()
    );
    let handlers = cri::wait_for_handler(socket, true, options.verify_timeout)?;
    let runtime_type = cri::wasmtime_type(&handlers).unwrap_or_default();
    if runtime_type != RUNTIME_TYPE {
        return Err(Error::Cri {
            socket: socket.to_path_buf(),
            message: format!(
                "the handler `{HANDLER}` has runtime type {runtime_type:?}, not {RUNTIME_TYPE}"
            ),
        });
    }
    let names: Vec<_> = handlers.iter().map(|(n, _)| n.as_str()).collect();
    log::info!(
        "verified: the CRI reports `{HANDLER}` → {runtime_type} (handlers: {})",
        names.join(", ")
    );
    Ok(())
}

/// Writes files and records their first change in the state.
struct Changes<'a> {
    host: &'a Host,
    store: &'a Store<'a>,
    state: &'a mut State,
    any: bool,
}

impl Changes<'_> {
    /// Makes `path` hold `bytes`; false when it already did.
    fn put(&mut self, path: &Path, bytes: &[u8], mode: u32, kind: FileKind) -> Result<bool, Error> {
        let current = self.host.read(path)?;
        if current.as_deref() == Some(bytes) {
            return Ok(false);
        }
        if kind == FileKind::Config {
            log_diff(path, current.as_deref().unwrap_or_default(), bytes);
        }
        let original = match (self.state.record(path), &current) {
            (Some(record), _) => record.original.clone(),
            (None, None) => Original::Absent,
            (None, Some(old)) => self.store.backup(path, old, self.host.mode(path)?)?,
        };
        if let (None, Original::Present { backup, .. }) = (self.state.record(path), &original) {
            log::info!("backed up {} to {}", path.display(), backup.display());
        }
        let created = self.host.write_atomic(path, bytes, mode)?;
        let written = self.host.read(path)?.unwrap_or_default();
        let want = sha256(bytes);
        if sha256(&written) != want {
            return Err(Error::Binary(format!(
                "{} reads back with sha256 {}, wrote {want}",
                path.display(),
                sha256(&written)
            )));
        }
        for dir in created {
            if !self.state.dirs.contains(&dir) {
                self.state.dirs.push(dir);
            }
        }
        let record = FileRecord {
            path: path.to_path_buf(),
            kind,
            original,
            written_sha256: want,
        };
        match self.state.files.iter_mut().find(|r| r.path == path) {
            Some(existing) => *existing = record,
            None => self.state.files.push(record),
        }
        self.any = true;
        Ok(true)
    }
}

/// Logs a unified diff of a config change, line by line.
fn log_diff(path: &Path, old: &[u8], new: &[u8]) {
    let old = String::from_utf8_lossy(old);
    let new = String::from_utf8_lossy(new);
    let name = path.display().to_string();
    let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
    let text = diff
        .unified_diff()
        .context_radius(2)
        .header(&name, &name)
        .to_string();
    for line in text.lines() {
        log::info!("  {line}");
    }
}

fn read_config(host: &Host, path: &Path) -> Result<Config, Error> {
    let text = host.read_string(path)?.ok_or_else(|| Error::Config {
        path: path.to_path_buf(),
        message: "does not exist".into(),
    })?;
    Config::parse(path, &text)
}

/// A `wasmtime` runtime in a file the installer did not write: leave the
/// node's config alone if it is ours (`io.containerd.wasmtime.v1`), refuse
/// if it is something else under our handler's name.
fn foreign_wasmtime(
    configs: &[Config],
    version: Version,
    state: &State,
) -> Result<Option<String>, Error> {
    for config in configs.iter().filter(|c| !state.owns(&c.path)) {
        if let Some(runtime) = config.runtime(version, HANDLER) {
            return match runtime.runtime_type.as_deref() {
                Some(RUNTIME_TYPE) => Ok(Some(format!(
                    "{} already configures the runtime `{HANDLER}` ({RUNTIME_TYPE})",
                    config.path.display()
                ))),
                other => Err(Error::Config {
                    path: config.path.clone(),
                    message: format!(
                        "already configures a runtime `{HANDLER}` with runtime_type {other:?}, \
                         not {RUNTIME_TYPE}; not changing it"
                    ),
                }),
            };
        }
    }
    Ok(None)
}

/// The node's runc `SystemdCgroup` (the last file setting it wins, as in
/// containerd's merge), and whether any file configures `runc`.
fn runc_settings(configs: &[Config], version: Version) -> (bool, bool) {
    let runc: Vec<_> = configs
        .iter()
        .filter_map(|c| c.runtime(version, "runc"))
        .collect();
    let systemd = runc
        .iter()
        .rev()
        .find_map(|r| r.systemd_cgroup)
        .unwrap_or(false);
    (systemd, !runc.is_empty())
}

fn default_is_runc(configs: &[Config], version: Version) -> bool {
    configs
        .iter()
        .rev()
        .find_map(|c| c.default_runtime_name(version))
        .is_none_or(|name| name == "runc")
}

fn plan_config(host: &Host, node: &Node, state: &State) -> Result<ConfigPlan, Error> {
    match node.kind {
        Kind::Containerd => plan_containerd(host, node, state),
        Kind::K3s | Kind::Rke2 => plan_k3s(host, node, state),
        Kind::Microk8s => plan_in_place(host, node, state),
        Kind::K0s => plan_k0s(host, node, state),
    }
}

fn plan_containerd(host: &Host, node: &Node, state: &State) -> Result<ConfigPlan, Error> {
    let mut main = read_config(host, &node.config)?;
    let version = main.version()?;
    let imports = flavour::resolve_imports(host, &node.config, &main.imports())?;
    let mut configs = vec![main.clone()];
    for path in &imports {
        configs.push(read_config(host, path)?);
    }
    log::info!(
        "{}: config version {} (containerd {}), CRI plugin {}, imports [{}]",
        node.config.display(),
        version.number(),
        if version == Version::V2 { "1.x" } else { "2.x" },
        version.cri_plugin(),
        imports
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let socket = main
        .grpc_address()
        .map(PathBuf::from)
        .unwrap_or_else(|| node.socket.clone());
    let left_alone = foreign_wasmtime(&configs, version, state)?;
    if left_alone.is_some() {
        return Ok(ConfigPlan {
            writes: Vec::new(),
            left_alone,
            socket,
        });
    }
    // The node's own settings: not those of a drop-in this installer wrote.
    let node_configs: Vec<Config> = configs
        .iter()
        .filter(|c| !state.created(&c.path))
        .cloned()
        .collect();
    let (systemd_cgroup, has_runc) = runc_settings(&node_configs, version);
    let with_runc = !has_runc && default_is_runc(&node_configs, version);
    let want = WasmtimeRuntime {
        systemd_cgroup,
        with_runc,
    };
    log::info!("runc's SystemdCgroup = {systemd_cgroup}: the same for `{HANDLER}`");
    let writes = match version {
        Version::V2 => {
            // containerd 1.x takes a plugin's section from the last file that
            // has it, whole: edit that one.
            let mut target = configs
                .iter()
                .rev()
                .find(|c| {
                    c.doc
                        .get("plugins")
                        .and_then(|p| p.get(version.cri_plugin()))
                        .is_some()
                })
                .unwrap_or(&main)
                .clone();
            log::info!(
                "editing {} in place (containerd 1.x replaces a whole plugin section with an \
                 import's, so a drop-in with only this runtime would drop the others)",
                target.path.display()
            );
            config::set_wasmtime_runtime(&mut target.doc, version, want);
            vec![(target.path.clone(), target.to_text())]
        }
        Version::V3 => {
            let dir = node.config.parent().unwrap_or(Path::new("/"));
            let covered = main.imports().into_iter().find(|i| {
                Path::new(i)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains('*'))
            });
            let drop_in = match &covered {
                Some(glob) => {
                    let glob = if Path::new(glob).is_absolute() {
                        PathBuf::from(glob)
                    } else {
                        dir.join(glob)
                    };
                    glob.with_file_name(DROP_IN)
                }
                None => dir.join("conf.d").join(DROP_IN),
            };
            let imported = main
                .imports()
                .iter()
                .any(|i| flavour::import_covers(&node.config, i, &drop_in));
            let mut writes = vec![(drop_in.clone(), config::drop_in(version, want))];
            if imported {
                log::info!(
                    "drop-in {} (imported by {})",
                    drop_in.display(),
                    node.config.display()
                );
            } else {
                log::info!(
                    "drop-in {}, added to the imports of {}",
                    drop_in.display(),
                    node.config.display()
                );
                config::add_import(&mut main.doc, &drop_in.to_string_lossy());
                writes.push((node.config.clone(), main.to_text()));
            }
            writes
        }
    };
    Ok(ConfigPlan {
        writes,
        left_alone: None,
        socket,
    })
}

fn plan_k3s(host: &Host, node: &Node, state: &State) -> Result<ConfigPlan, Error> {
    let rendered = read_config(host, &node.config)?;
    let version = rendered.version()?;
    let template = node.template();
    log::info!(
        "{}: config version {} rendered by {} (from {} when present)",
        node.config.display(),
        version.number(),
        node.kind,
        template.display()
    );
    let socket = node.socket.clone();
    if !state.owns(&template) {
        if let Some(why) = foreign_wasmtime(std::slice::from_ref(&rendered), version, state)? {
            let why = format!(
                "{why}: {} registers it itself (k3s ≥1.30 does when it finds {SHIM} on its PATH)",
                node.kind
            );
            return Ok(ConfigPlan {
                writes: Vec::new(),
                left_alone: Some(why),
                socket,
            });
        }
    }
    let mut base = match host.read_string(&template)? {
        Some(text) => Config::parse(&template, &text).map_err(|e| Error::Config {
            path: template.clone(),
            message: format!(
                "is not plain TOML (a Go template?), so the installer cannot edit it safely ({e}); \
                 add the runtime `{HANDLER}` (runtime_type {RUNTIME_TYPE}) to it by hand"
            ),
        })?,
        None => {
            log::info!(
                "{} does not exist: writing it from the rendered {} plus the runtime",
                template.display(),
                node.config.display()
            );
            let text = format!(
                "# Written by containerd-wasmtime-installer from the config {} rendered;\n\
                 # `containerd-wasmtime-installer uninstall` removes this file again.\n{}",
                node.kind,
                rendered.to_text()
            );
            Config::parse(&template, &text)?
        }
    };
    let configs = [rendered];
    let (systemd_cgroup, _) = runc_settings(&configs, version);
    let with_runc = base.runtime(version, "runc").is_none() && default_is_runc(&configs, version);
    config::set_wasmtime_runtime(
        &mut base.doc,
        version,
        WasmtimeRuntime {
            systemd_cgroup,
            with_runc,
        },
    );
    Ok(ConfigPlan {
        writes: vec![(template, base.to_text())],
        left_alone: None,
        socket,
    })
}

fn plan_in_place(host: &Host, node: &Node, state: &State) -> Result<ConfigPlan, Error> {
    let mut config = read_config(host, &node.config)?;
    let version = config.version()?;
    log::info!(
        "{}: config version {}, edited in place",
        node.config.display(),
        version.number()
    );
    let configs = [config.clone()];
    let left_alone = foreign_wasmtime(&configs, version, state)?;
    if left_alone.is_some() {
        return Ok(ConfigPlan {
            writes: Vec::new(),
            left_alone,
            socket: node.socket.clone(),
        });
    }
    let (systemd_cgroup, has_runc) = runc_settings(&configs, version);
    let want = WasmtimeRuntime {
        systemd_cgroup,
        with_runc: !has_runc && default_is_runc(&configs, version),
    };
    config::set_wasmtime_runtime(&mut config.doc, version, want);
    Ok(ConfigPlan {
        writes: vec![(node.config.clone(), config.to_text())],
        left_alone: None,
        socket: node.socket.clone(),
    })
}

/// k0s: the CRI config it generates (and merges drop-ins into) is
/// /run/k0s/containerd-cri.toml; drop-ins go to /etc/k0s/containerd.d.
fn plan_k0s(host: &Host, node: &Node, state: &State) -> Result<ConfigPlan, Error> {
    const CRI: &str = "/run/k0s/containerd-cri.toml";
    const DROP_INS: &str = "/etc/k0s/containerd.d";
    let main = read_config(host, &node.config)?;
    let version = main.version()?;
    let drop_in = Path::new(DROP_INS).join("wasmtime.toml");
    let mut configs = Vec::new();
    if host.exists(Path::new(CRI)) {
        configs.push(read_config(host, Path::new(CRI))?);
    }
    for path in flavour::resolve_imports(host, &node.config, &[format!("{DROP_INS}/*.toml")])? {
        configs.push(read_config(host, &path)?);
    }
    log::info!(
        "{}: config version {}; drop-in {} (k0s merges it into {CRI})",
        node.config.display(),
        version.number(),
        drop_in.display()
    );
    // k0s writes the CRI config itself: a `wasmtime` there came from a drop-in.
    let others: Vec<Config> = configs
        .iter()
        .filter(|c| c.path != Path::new(CRI))
        .cloned()
        .collect();
    let left_alone = foreign_wasmtime(&others, version, state)?;
    if left_alone.is_some() {
        return Ok(ConfigPlan {
            writes: Vec::new(),
            left_alone,
            socket: node.socket.clone(),
        });
    }
    let node_configs: Vec<Config> = configs
        .iter()
        .filter(|c| !state.created(&c.path))
        .cloned()
        .collect();
    let (systemd_cgroup, _) = runc_settings(&node_configs, version);
    let text = config::drop_in(
        version,
        WasmtimeRuntime {
            systemd_cgroup,
            with_runc: false,
        },
    );
    Ok(ConfigPlan {
        writes: vec![(drop_in, text)],
        left_alone: None,
        socket: node.socket.clone(),
    })
}
