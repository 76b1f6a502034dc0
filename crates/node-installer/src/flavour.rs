//! Which containerd a node runs, found from files only (the installer sees
//! the host's root, not its processes' configs): each flavour keeps its
//! config at a known place and has its own socket and service.
//!
//! Detection looks for every flavour's marker file; exactly one must match.
//! None or several is an error that lists what was looked for, and
//! `--flavour` settles it: a wrong guess would edit a config containerd does
//! not read, or restart the wrong service.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::host::Host;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// containerd from a distro or upstream package: /etc/containerd/config.toml.
    Containerd,
    /// k3s: renders config.toml from config.toml.tmpl at each start.
    K3s,
    /// rke2: as k3s, under /var/lib/rancher/rke2.
    Rke2,
    /// microk8s: containerd-template.toml in the snap's args.
    Microk8s,
    /// k0s: merges drop-ins of /etc/k0s/containerd.d into its CRI config.
    K0s,
}

pub const ALL: [Kind; 5] = [
    Kind::Containerd,
    Kind::K3s,
    Kind::Rke2,
    Kind::Microk8s,
    Kind::K0s,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Containerd => "containerd",
            Kind::K3s => "k3s",
            Kind::Rke2 => "rke2",
            Kind::Microk8s => "microk8s",
            Kind::K0s => "k0s",
        }
    }

    /// The file whose presence marks this flavour.
    pub fn marker(self) -> &'static str {
        match self {
            Kind::Containerd => "/etc/containerd/config.toml",
            Kind::K3s => "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            Kind::Rke2 => "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
            Kind::Microk8s => "/var/snap/microk8s/current/args/containerd-template.toml",
            Kind::K0s => "/etc/k0s/containerd.toml",
        }
    }

    fn socket(self) -> &'static str {
        match self {
            Kind::Containerd => "/run/containerd/containerd.sock",
            Kind::K3s | Kind::Rke2 => "/run/k3s/containerd/containerd.sock",
            Kind::Microk8s => "/var/snap/microk8s/common/run/containerd.sock",
            Kind::K0s => "/run/k0s/containerd.sock",
        }
    }

    /// Service units that run this flavour's containerd, most likely first.
    fn units(self) -> &'static [&'static str] {
        match self {
            Kind::Containerd => &["containerd"],
            Kind::K3s => &["k3s", "k3s-agent"],
            Kind::Rke2 => &["rke2-server", "rke2-agent"],
            Kind::Microk8s => &["snap.microk8s.daemon-containerd"],
            Kind::K0s => &["k0sworker", "k0scontroller"],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|k| k.name()).collect();
            format!("unknown flavour {s:?} (one of {})", names.join(", "))
        })
    }
}

/// A detected node: what to read, where the CRI listens, what to restart.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// The config containerd is started with (k3s/rke2: the rendered one;
    /// microk8s: the template it is rendered from).
    pub config: PathBuf,
    /// The flavour's default CRI socket (stock containerd: `grpc.address`).
    pub socket: PathBuf,
    /// The service unit to restart.
    pub unit: String,
}

impl Node {
    /// k3s/rke2's template, next to the rendered config.
    pub fn template(&self) -> PathBuf {
        self.config.with_extension("toml.tmpl")
    }
}

/// Finds the node's flavour (or takes `forced`) and its files.
pub fn detect(host: &Host, forced: Option<Kind>) -> Result<Node, Error> {
    let kind = match forced {
        Some(kind) => {
            if !host.exists(Path::new(kind.marker())) {
                return Err(Error::Unsupported(format!(
                    "--flavour {kind}, but {} does not exist under {}",
                    kind.marker(),
                    host.root().display()
                )));
            }
            kind
        }
        None => {
            let found: Vec<Kind> = ALL
                .into_iter()
                .filter(|k| host.exists(Path::new(k.marker())))
                .collect();
            match found.as_slice() {
                [one] => *one,
                [] => {
                    let looked: Vec<_> = ALL
                        .iter()
                        .map(|k| format!("{} ({k})", k.marker()))
                        .collect();
                    return Err(Error::Unsupported(format!(
                        "no known containerd configuration under {}; looked for {}. \
                         A stock containerd running without a config file needs one first \
                         (`containerd config default > /etc/containerd/config.toml`); other \
                         runtimes (CRI-O, a config elsewhere) are not handled: configure the \
                         runtime by hand (docs/kubernetes.md)",
                        host.root().display(),
                        looked.join(", ")
                    )));
                }
                several => {
                    let names: Vec<_> = several
                        .iter()
                        .map(|k| format!("{k} ({})", k.marker()))
                        .collect();
                    return Err(Error::Unsupported(format!(
                        "more than one containerd configuration found: {}; \
                         pass --flavour with the one kubelet uses",
                        names.join(", ")
                    )));
                }
            }
        }
    };
    let unit = kind
        .units()
        .iter()
        .find(|u| has_unit(host, u))
        .unwrap_or(&kind.units()[0])
        .to_string();
    Ok(Node {
        kind,
        config: PathBuf::from(kind.marker()),
        socket: PathBuf::from(kind.socket()),
        unit,
    })
}

/// Whether the host has a systemd unit or an OpenRC service of this name.
fn has_unit(host: &Host, unit: &str) -> bool {
    [
        format!("/etc/systemd/system/{unit}.service"),
        format!("/lib/systemd/system/{unit}.service"),
        format!("/usr/lib/systemd/system/{unit}.service"),
        format!("/etc/init.d/{unit}"),
    ]
    .iter()
    .any(|p| host.exists(Path::new(p)))
}

/// Resolves a config's `imports` the way containerd does: relative to the
/// importing file's directory, `*`/`?` globs in the file name (sorted).
/// A glob elsewhere in the path is refused rather than half-handled.
pub fn resolve_imports(
    host: &Host,
    config: &Path,
    imports: &[String],
) -> Result<Vec<PathBuf>, Error> {
    let base = config.parent().unwrap_or(Path::new("/"));
    let mut files = Vec::new();
    for import in imports {
        let path = if Path::new(import).is_absolute() {
            PathBuf::from(import)
        } else {
            base.join(import)
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("/"));
        if dir.to_string_lossy().contains(['*', '?', '[']) {
            return Err(Error::Config {
                path: config.to_path_buf(),
                message: format!("import {import:?} has a glob in its directory, which the installer does not follow"),
            });
        }
        if !name.contains(['*', '?', '[']) {
            if host.exists(&path) {
                files.push(path);
            }
            continue;
        }
        let mut matched: Vec<PathBuf> = host
            .list_dir(dir)?
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| glob_match(&name, n))
            .map(|n| dir.join(n))
            .collect();
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

/// Whether an import pattern (possibly with a glob file name) names `file`.
pub fn import_covers(config: &Path, import: &str, file: &Path) -> bool {
    let base = config.parent().unwrap_or(Path::new("/"));
    let path = if Path::new(import).is_absolute() {
        PathBuf::from(import)
    } else {
        base.join(import)
    };
    path.parent() == file.parent()
        && match (path.file_name(), file.file_name()) {
            (Some(p), Some(f)) => glob_match(&p.to_string_lossy(), &f.to_string_lossy()),
            _ => false,
        }
}

/// `*` and `?` as in a shell glob; `[` classes are compared literally
/// (containerd configs in the field use `*.toml`).
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    // Like Go's filepath.Match, `*` also matches a leading dot.
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_go() {
        assert!(glob_match("*.toml", "99-wasmtime.toml"));
        assert!(!glob_match("*.toml", "x.toml.bak"));
        assert!(glob_match("a?c", "abc"));
        assert!(import_covers(
            Path::new("/etc/containerd/config.toml"),
            "conf.d/*.toml",
            Path::new("/etc/containerd/conf.d/99-wasmtime.toml")
        ));
    }

    #[test]
    fn refuses_no_flavour_and_two_flavours() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let err = detect(&host, None).unwrap_err().to_string();
        assert!(
            err.contains("/etc/containerd/config.toml") && err.contains("k0s"),
            "{err}"
        );
        host.write_atomic(
            Path::new(Kind::Containerd.marker()),
            b"version = 2\n",
            0o644,
        )
        .unwrap();
        host.write_atomic(Path::new(Kind::K3s.marker()), b"version = 2\n", 0o644)
            .unwrap();
        let err = detect(&host, None).unwrap_err().to_string();
        assert!(err.contains("--flavour"), "{err}");
        let node = detect(&host, Some(Kind::K3s)).unwrap();
        assert_eq!(node.unit, "k3s");
        assert_eq!(
            node.template(),
            Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl")
        );
    }
}
