//! What the shim reads from an OCI bundle: the runtime spec's `process` and the
//! wasm entrypoint it names.
//!
//! `process.args[0]` names the `.wasm` file, optionally followed by `#export`
//! to call that export of a core module instead of `_start`. A name with a `/`
//! is absolute or relative to `process.cwd`; a bare name is looked up in
//! `process.cwd` and then in the directories of `PATH` from `process.env`,
//! like a shell would. Resolution is done inside the container's root, so it
//! cannot reach the host.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

pub mod id;
pub mod layers;
pub mod network;

pub use id::{validate_id, IdError};
pub use network::NetworkPolicy;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the runtime spec has no `process` section")]
    MissingProcess,
    #[error("`process.args` is empty: the first argument must name the .wasm entrypoint")]
    MissingArgs,
    #[error("`process.env` entry {0:?} has no `=`")]
    BadEnv(String),
    #[error("`process.cwd` {0:?} is not an absolute path")]
    RelativeCwd(String),
    #[error("entrypoint {0:?} has an empty `#export` name")]
    EmptyExport(String),
    #[error("{origin} {value:?} is not a TCP port (1-65535)")]
    BadPort { origin: String, value: String },
    #[error("annotation {annotation} {value:?}: {reason}")]
    BadAnnotation {
        annotation: &'static str,
        value: String,
        reason: String,
    },
}

/// The annotation (pod or container) that sets an HTTP component's port.
pub const HTTP_PORT_ANNOTATION: &str = "wasmtime.containerd.io/http-port";
/// The environment variable that sets it for one container (Knative and Cloud
/// Run set it to the container's declared port); it wins over the annotation.
pub const HTTP_PORT_ENV: &str = "PORT";

/// The annotation (pod or container) that narrows the directories a guest
/// sees: a comma-separated list of absolute paths, each optionally `:ro` or
/// `:rw` (see [`narrowed_grants`]).
pub const PREOPENS_ANNOTATION: &str = "wasmtime.containerd.io/preopens";
/// The annotation (pod or container) that gives each wasm instance a
/// wall-clock budget, e.g. `30s`, `500ms`, `2m`, `1h` (see [`deadline`]).
pub const DEADLINE_ANNOTATION: &str = "wasmtime.containerd.io/deadline";
/// The annotation (pod or container) that narrows the guest's own network
/// use: `none`, or `listen`, `dns`, `connect:ADDR[/PREFIX][:PORT]` rules
/// (see [`network_policy`]).
pub const NETWORK_ANNOTATION: &str = "wasmtime.containerd.io/network";

/// The entrypoint named by `process.args[0]`: a path and an optional export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    /// The path as written in the spec, without `#export`.
    pub path: String,
    /// The export to call instead of the default (`_start` for modules).
    pub export: Option<String>,
}

impl Entrypoint {
    pub fn parse(arg0: &str) -> Result<Self, SpecError> {
        match arg0.rsplit_once('#') {
            Some((_, "")) => Err(SpecError::EmptyExport(arg0.to_string())),
            Some((path, export)) => Ok(Self {
                path: path.to_string(),
                export: Some(export.to_string()),
            }),
            None => Ok(Self {
                path: arg0.to_string(),
                export: None,
            }),
        }
    }

    /// The paths to try, in order, for this entrypoint (see the module docs).
    pub fn candidates(&self, cwd: &Path, path_env: Option<&str>) -> Vec<PathBuf> {
        let name = Path::new(&self.path);
        if self.path.contains('/') {
            return vec![cwd.join(name)];
        }
        let mut candidates = vec![cwd.join(name)];
        let dirs = path_env
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty());
        candidates.extend(dirs.map(|dir| cwd.join(dir).join(name)));
        candidates
    }

    /// The first candidate for which `is_file` holds, or the first candidate
    /// (so the error names the path the user most likely meant).
    pub fn resolve(
        &self,
        cwd: &Path,
        path_env: Option<&str>,
        is_file: impl Fn(&Path) -> bool,
    ) -> PathBuf {
        let candidates = self.candidates(cwd, path_env);
        let found = candidates.iter().find(|c| is_file(c)).cloned();
        found.unwrap_or_else(|| candidates[0].clone())
    }
}

/// The part of `process` a wasm guest runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmProcess {
    pub entrypoint: Entrypoint,
    /// argv as given to the guest: `process.args`, with `#export` kept in `argv[0]`.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

impl WasmProcess {
    pub fn from_spec(spec: &Spec) -> Result<Self, SpecError> {
        let process = spec.process().as_ref().ok_or(SpecError::MissingProcess)?;
        let args = process.args().clone().unwrap_or_default();
        let arg0 = args.first().ok_or(SpecError::MissingArgs)?;
        let entrypoint = Entrypoint::parse(arg0)?;
        let env = process
            .env()
            .iter()
            .flatten()
            .map(|entry| match entry.split_once('=') {
                Some((key, value)) => Ok((key.to_string(), value.to_string())),
                None => Err(SpecError::BadEnv(entry.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = process.cwd().clone();
        if !cwd.is_absolute() {
            return Err(SpecError::RelativeCwd(cwd.display().to_string()));
        }
        Ok(Self {
            entrypoint,
            args,
            env,
            cwd,
        })
    }

    /// The port an HTTP component serves on: `PORT` from the environment, else
    /// the [`HTTP_PORT_ANNOTATION`], else `default`.
    pub fn http_port(&self, spec: &Spec, default: u16) -> Result<u16, SpecError> {
        let env = self.env.iter().rev().find(|(k, _)| k == HTTP_PORT_ENV);
        let (origin, value) = match (env, annotation(spec, HTTP_PORT_ANNOTATION)) {
            (Some((_, value)), _) => (format!("env {HTTP_PORT_ENV}"), value.as_str()),
            (None, Some(value)) => (format!("annotation {HTTP_PORT_ANNOTATION}"), value),
            (None, None) => return Ok(default),
        };
        match value.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(SpecError::BadPort {
                origin,
                value: value.to_string(),
            }),
        }
    }

    /// The value of `PATH` in the guest's environment, if set.
    pub fn path_env(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
    }
}

/// The container's memory limit in bytes (`linux.resources.memory.limit`),
/// if it has one (a negative limit means none).
pub fn memory_limit(spec: &Spec) -> Option<u64> {
    let limit = spec
        .linux()
        .as_ref()?
        .resources()
        .as_ref()?
        .memory()
        .as_ref()?
        .limit()?;
    u64::try_from(limit).ok()
}

/// A directory of the container the guest may use, and whether it may write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The directories to preopen for the guest: the container's root, plus each
/// mount whose writability differs from the directory it is mounted in, so a
/// read-only root or mount is read-only in WASI too (the guest picks the
/// longest matching preopen for a path).
pub fn filesystem_grants(spec: &Spec) -> Vec<Grant> {
    let root_read_only = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut grants = vec![Grant {
        path: PathBuf::from("/"),
        read_only: root_read_only,
    }];
    let mut mounts: Vec<_> = spec.mounts().iter().flatten().collect();
    mounts.sort_by_key(|m| m.destination().components().count());
    for mount in mounts {
        let read_only = mount.options().iter().flatten().any(|o| o == "ro");
        if grant_for(&grants, mount.destination()).is_some_and(|g| g.read_only != read_only) {
            grants.push(Grant {
                path: mount.destination().clone(),
                read_only,
            });
        }
    }
    grants
}

/// The grant that governs `path`: the one with the longest matching prefix,
/// if any (a narrowed list may not cover it).
pub fn grant_for<'a>(grants: &'a [Grant], path: &Path) -> Option<&'a Grant> {
    grants
        .iter()
        .filter(|g| path.starts_with(&g.path))
        .max_by_key(|g| g.path.components().count())
}

/// The spec's grants, narrowed by the [`PREOPENS_ANNOTATION`] when it is set.
///
/// Each listed directory is granted with the access the spec gives it, or
/// read-only with `:ro`; `:rw` is refused where the spec makes it read-only
/// (an annotation narrows, never widens). The spec's mounts below a listed
/// directory keep their own grant (a read-only mount stays read-only, and
/// nothing below a `:ro` directory becomes writable). An empty value grants
/// no directory at all. Whether each path is a directory is checked inside
/// the container, by the caller.
pub fn narrowed_grants(spec: &Spec) -> Result<Vec<Grant>, SpecError> {
    let grants = filesystem_grants(spec);
    let Some(value) = annotation(spec, PREOPENS_ANNOTATION) else {
        return Ok(grants);
    };
    let bad = |reason: String| SpecError::BadAnnotation {
        annotation: PREOPENS_ANNOTATION,
        value: value.to_string(),
        reason,
    };
    let mut narrowed: Vec<Grant> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (path, mode) = match entry.rsplit_once(':') {
            Some((path, mode)) => (path, Some(mode)),
            None => (entry, None),
        };
        let normal = path.starts_with('/') && !path.split('/').any(|s| s == "." || s == "..");
        // Trailing and doubled slashes go: the guest sees the path as listed.
        let path: PathBuf = Path::new(path).components().collect();
        if !normal {
            return Err(bad(format!(
                "{entry:?} is not an absolute path without `.` or `..` (expected /path, /path:ro or /path:rw)"
            )));
        }
        let spec_read_only = grant_for(&grants, &path).is_some_and(|g| g.read_only);
        let read_only = match mode {
            None => spec_read_only,
            Some("ro") => true,
            Some("rw") if spec_read_only => {
                return Err(bad(format!(
                    "{} cannot be writable: the container's spec makes it read-only",
                    path.display()
                )))
            }
            Some("rw") => false,
            Some(other) => {
                return Err(bad(format!("{entry:?} has access {other:?}; use ro or rw")))
            }
        };
        if narrowed.iter().any(|g| g.path == path) {
            return Err(bad(format!("{} is listed twice", path.display())));
        }
        narrowed.push(Grant { path, read_only });
    }
    let listed = narrowed.clone();
    for below in &grants {
        let Some(parent) = grant_for(&listed, &below.path) else {
            continue;
        };
        if parent.path != below.path && !narrowed.iter().any(|g| g.path == below.path) {
            narrowed.push(Grant {
                path: below.path.clone(),
                read_only: below.read_only || parent.read_only,
            });
        }
    }
    Ok(narrowed)
}

/// The [`DEADLINE_ANNOTATION`]: how long one wasm instance may run, if set.
/// A number with a unit (`ms`, `s`, `m`, `h`); a bare number is seconds.
pub fn deadline(spec: &Spec) -> Result<Option<std::time::Duration>, SpecError> {
    let Some(value) = annotation(spec, DEADLINE_ANNOTATION) else {
        return Ok(None);
    };
    let trimmed = value.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale = match unit {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let duration = match number.parse::<f64>().map(|n| n * scale) {
        Ok(secs) if secs > 0.0 && secs <= 366.0 * 86400.0 => {
            Some(std::time::Duration::from_secs_f64(secs))
        }
        _ => None,
    };
    // Under a nanosecond is a zero Duration: no budget at all, as `0s`.
    match duration.filter(|d| !d.is_zero()) {
        Some(duration) => Ok(Some(duration)),
        None => Err(SpecError::BadAnnotation {
            annotation: DEADLINE_ANNOTATION,
            value: value.to_string(),
            reason: "not a duration (a positive number with ms, s, m or h, e.g. 30s)".into(),
        }),
    }
}

/// The [`NETWORK_ANNOTATION`]: what of the container's network the guest may
/// use ([`NetworkPolicy::All`] when it is not set).
pub fn network_policy(spec: &Spec) -> Result<NetworkPolicy, SpecError> {
    let Some(value) = annotation(spec, NETWORK_ANNOTATION) else {
        return Ok(NetworkPolicy::All);
    };
    NetworkPolicy::parse(value).map_err(|reason| SpecError::BadAnnotation {
        annotation: NETWORK_ANNOTATION,
        value: value.to_string(),
        reason,
    })
}

/// The value of annotation `name` in the spec, if set.
pub fn annotation<'a>(spec: &'a Spec, name: &str) -> Option<&'a str> {
    spec.annotations().as_ref()?.get(name).map(String::as_str)
}

#[cfg(test)]
mod tests;
