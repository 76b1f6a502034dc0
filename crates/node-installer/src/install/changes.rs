//! Writing the plan's files: each write atomic, read back, and recorded in
//! the state with the file's original (backed up) the first time, so that
//! `uninstall` can put back exactly what was there (docs/installation.md,
//! "Uninstall").

use std::path::Path;

use crate::host::{sha256, Host};
use crate::state::{FileKind, FileRecord, Original, State, Store};
use crate::Error;

/// Writes files and records their first change in the state.
pub(super) struct Changes<'a> {
    pub host: &'a Host,
    pub store: &'a Store<'a>,
    pub state: &'a mut State,
    pub any: bool,
}

impl Changes<'_> {
    /// Makes `path` hold `bytes`; false when it already did.
    pub fn put(
        &mut self,
        path: &Path,
        bytes: &[u8],
        mode: u32,
        kind: FileKind,
    ) -> Result<bool, Error> {
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
pub(super) fn log_diff(path: &Path, old: &[u8], new: &[u8]) {
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
