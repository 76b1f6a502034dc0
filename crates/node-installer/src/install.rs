//! `install` and `uninstall`: the plan for a node, applied file by file and
//! recorded, then one restart and the CRI check.
//!
//! The plan (`plan`) decides which files change, `changes` writes them
//! and records what was there before; the flavours, the state file and the
//! uninstall rules are described in docs/installation.md.

mod changes;
mod plan;

use std::path::Path;

use crate::config::{HANDLER, RUNTIME_TYPE};
use crate::flavour;
use crate::host::{sha256, Host};
use crate::restart::Restarter;
use crate::state::{FileKind, Original, Store};
use crate::{cri, label, Error, Options};
use changes::{log_diff, Changes};
use plan::plan_config;

/// The shim's file name: containerd derives it from the runtime type.
pub const SHIM: &str = "containerd-shim-wasmtime-v1";

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub binary_changed: bool,
    pub config_changed: bool,
    pub restarted: bool,
    /// Why the config was not touched, when another party configures `wasmtime`.
    pub left_alone: Option<String>,
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
