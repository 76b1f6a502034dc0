//! The config files each flavour gets: a plan, computed from the node's
//! files before anything is written.
//!
//! Where the runtime goes per flavour, and why there (containerd 1.x edited in
//! place, 2.x a drop-in), is in docs/installation.md ("What each flavour
//! gets"); tests/containerd.rs pins the containerd behaviour it rests on. A
//! `wasmtime` runtime in a file this installer did not write is left alone
//! or refused: `foreign_wasmtime`.

use std::path::{Path, PathBuf};

use super::SHIM;
use crate::config::{self, Config, Runc, Version, HANDLER, RUNTIME_TYPE};
use crate::flavour::{self, Kind, Node};
use crate::host::Host;
use crate::state::State;
use crate::Error;

const DROP_IN: &str = "99-wasmtime.toml";

/// The config files to write, and what the plan found.
pub(super) struct ConfigPlan {
    pub writes: Vec<(PathBuf, String)>,
    pub left_alone: Option<String>,
    /// The CRI socket as a host path.
    pub socket: PathBuf,
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

/// The node's runc `SystemdCgroup`: the last file setting it wins, as in
/// containerd's merge.
fn runc_systemd_cgroup(configs: &[Config], version: Version) -> bool {
    configs
        .iter()
        .rev()
        .filter_map(|c| c.runtime(version, "runc"))
        .find_map(|r| r.systemd_cgroup)
        .unwrap_or(false)
}

/// `runc`, with the node's `SystemdCgroup`, when no file configures it and
/// it is the default runtime: the runtimes map written would otherwise
/// replace containerd's built-in one without it.
fn runc_to_add(configs: &[Config], version: Version) -> Option<Runc> {
    let has_runc = configs.iter().any(|c| c.runtime(version, "runc").is_some());
    (!has_runc && default_is_runc(configs, version)).then(|| Runc {
        systemd_cgroup: runc_systemd_cgroup(configs, version),
    })
}

fn default_is_runc(configs: &[Config], version: Version) -> bool {
    configs
        .iter()
        .rev()
        .find_map(|c| c.default_runtime_name(version))
        .is_none_or(|name| name == "runc")
}

pub(super) fn plan_config(host: &Host, node: &Node, state: &State) -> Result<ConfigPlan, Error> {
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
    let runc = runc_to_add(&node_configs, version);
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
            config::set_wasmtime_runtime(&mut target.doc, version, runc);
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
            let mut writes = vec![(drop_in.clone(), config::drop_in(version, runc))];
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
    // The template replaces the rendered config: it needs `runc` if it has
    // none, whatever the rendered one has.
    let configs = [rendered];
    let runc = (base.runtime(version, "runc").is_none() && default_is_runc(&configs, version))
        .then(|| Runc {
            systemd_cgroup: runc_systemd_cgroup(&configs, version),
        });
    config::set_wasmtime_runtime(&mut base.doc, version, runc);
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
    let runc = runc_to_add(&configs, version);
    config::set_wasmtime_runtime(&mut config.doc, version, runc);
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
    // k0s merges the drop-in into its own CRI config, which keeps runc.
    let text = config::drop_in(version, None);
    Ok(ConfigPlan {
        writes: vec![(drop_in, text)],
        left_alone: None,
        socket: node.socket.clone(),
    })
}
