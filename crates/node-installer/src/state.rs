//! What the installer changed on the node, kept on the node
//! (`<state dir>/state.json`, originals under `<state dir>/backup/`), so
//! `uninstall` reverses exactly that — also from a newer installer image, or
//! after the pod that installed is gone.
//!
//! A file is recorded once, at its first change: later runs update what was
//! written but keep the original, so uninstall always goes back to the
//! node as it was before the first install.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::{sha256, Host};
use crate::Error;

/// What a recorded file is: only config changes need a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Config,
    Binary,
}

/// The file before the installer touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "was", rename_all = "lowercase")]
pub enum Original {
    /// Created by the installer: uninstall removes it.
    Absent,
    /// Edited or replaced: its bytes are at `backup` (a host path), `mode` kept.
    Present {
        backup: PathBuf,
        sha256: String,
        mode: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: PathBuf,
    pub kind: FileKind,
    pub original: Original,
    /// sha256 of what the installer last wrote: a file that differs was
    /// changed by someone else since, and uninstall leaves it alone.
    pub written_sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The flavour, service unit and socket at install time, for uninstall.
    pub flavour: String,
    pub unit: String,
    pub socket: PathBuf,
    pub files: Vec<FileRecord>,
    /// Directories the installer created, outermost first.
    pub dirs: Vec<PathBuf>,
    /// Directories created to hold this state file and the backups.
    #[serde(default)]
    pub state_dirs: Vec<PathBuf>,
}

/// The state file and backup directory of one node.
pub struct Store<'a> {
    host: &'a Host,
    dir: PathBuf,
    /// Directories created by this run for backups, not yet in the state.
    created: RefCell<Vec<PathBuf>>,
}

impl<'a> Store<'a> {
    pub fn new(host: &'a Host, dir: &Path) -> Self {
        Self {
            host,
            dir: dir.to_path_buf(),
            created: RefCell::new(Vec::new()),
        }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn backup_dir(&self) -> PathBuf {
        self.dir.join("backup")
    }

    pub fn load(&self) -> Result<Option<State>, Error> {
        let Some(bytes) = self.host.read(&self.file())? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State {
                path: self.file(),
                message: format!("cannot be read ({e}); it was not written by this installer"),
            })
    }

    /// Writes the state, first recording any directory created for it.
    pub fn save(&self, state: &mut State) -> Result<(), Error> {
        let created = self.host.create_dirs(&self.dir)?;
        for dir in self.created.take().into_iter().chain(created) {
            if !state.state_dirs.contains(&dir) {
                state.state_dirs.push(dir);
            }
        }
        let mut json = serde_json::to_vec_pretty(state).map_err(|e| Error::State {
            path: self.file(),
            message: e.to_string(),
        })?;
        json.push(b'\n');
        self.host.write_atomic(&self.file(), &json, 0o600)?;
        Ok(())
    }

    /// Saves the original bytes of `path` before its first change.
    pub fn backup(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<Original, Error> {
        let name = path
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "_");
        let backup = self.backup_dir().join(name);
        let created = self.host.write_atomic(&backup, bytes, 0o600)?;
        self.created.borrow_mut().extend(created);
        Ok(Original::Present {
            backup,
            sha256: sha256(bytes),
            mode,
        })
    }

    /// Removes the state file, the backups and the directory (if then
    /// empty): after a full uninstall nothing of the installer is left.
    pub fn remove(&self, state: &State) -> Result<(), Error> {
        for record in &state.files {
            if let Original::Present { backup, .. } = &record.original {
                self.host.remove_file(backup)?;
            }
        }
        self.host.remove_file(&self.file())?;
        self.host.remove_dir_if_empty(&self.backup_dir())?;
        self.host.remove_dir_if_empty(&self.dir)?;
        for dir in state.state_dirs.iter().rev() {
            self.host.remove_dir_if_empty(dir)?;
        }
        Ok(())
    }
}

impl State {
    pub fn record(&self, path: &Path) -> Option<&FileRecord> {
        self.files.iter().find(|r| r.path == path)
    }

    /// Whether the installer created `path` (a drop-in or template of its own).
    pub fn created(&self, path: &Path) -> bool {
        self.record(path)
            .is_some_and(|r| r.original == Original::Absent)
    }

    /// Whether the installer wrote `path` (so a `wasmtime` runtime in it is ours).
    pub fn owns(&self, path: &Path) -> bool {
        self.record(path).is_some()
    }
}
