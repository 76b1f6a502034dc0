//! The node's filesystem as the installer sees it: the host's root is mounted
//! at `--host-root` (`/host` in the DaemonSet), so every host path is read and
//! written through [`Host::path`]. Paths in configs, the state file and the
//! log are host paths (what an operator sees on the node); only this module
//! joins them onto the mount.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of
//! the directory) so a node that loses power mid-install has either the old
//! or the new file, never half of one: containerd refuses a truncated config.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::Error;

/// The host's root filesystem, mounted somewhere in the installer's own.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the host path `host_path` (absolute on the node) is reachable
    /// from here. `..` components are refused: a config naming
    /// `/../../etc` must not reach outside the host mount.
    pub fn path(&self, host_path: &Path) -> Result<PathBuf, Error> {
        let mut local = self.root.clone();
        for component in host_path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => local.push(part),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Error::HostPath(host_path.to_path_buf()))
                }
            }
        }
        Ok(local)
    }

    pub fn exists(&self, host_path: &Path) -> bool {
        self.path(host_path).map(|p| p.exists()).unwrap_or(false)
    }

    /// The file's bytes, or `None` when it does not exist.
    pub fn read(&self, host_path: &Path) -> Result<Option<Vec<u8>>, Error> {
        let local = self.path(host_path)?;
        match fs::read(&local) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", host_path, e)),
        }
    }

    pub fn read_string(&self, host_path: &Path) -> Result<Option<String>, Error> {
        match self.read(host_path)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| Error::NotUtf8(host_path.to_path_buf())),
        }
    }

    /// Writes `bytes` to `host_path` atomically with `mode`, creating missing
    /// parent directories; returns the directories it created (outermost
    /// first), so uninstall can remove exactly those.
    pub fn write_atomic(
        &self,
        host_path: &Path,
        bytes: &[u8],
        mode: u32,
    ) -> Result<Vec<PathBuf>, Error> {
        let local = self.path(host_path)?;
        // Renaming over a link would replace the link, not its target (and an
        // absolute target would name a path outside the host mount).
        if fs::symlink_metadata(&local).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::Symlink(host_path.to_path_buf()));
        }
        let created = self.create_dirs(host_path.parent().unwrap_or(Path::new("/")))?;
        let dir = local.parent().unwrap_or(Path::new("/"));
        let name = local
            .file_name()
            .ok_or_else(|| Error::HostPath(host_path.to_path_buf()))?;
        let temp = dir.join(format!(
            ".{}.wasmtime-installer.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut file = fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, &local)?;
            fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(Error::io("writing", host_path, e));
        }
        Ok(created)
    }

    /// The permission bits of an existing file (kept when it is edited).
    pub fn mode(&self, host_path: &Path) -> Result<u32, Error> {
        let local = self.path(host_path)?;
        fs::metadata(&local)
            .map(|m| m.permissions().mode() & 0o7777)
            .map_err(|e| Error::io("reading the mode of", host_path, e))
    }

    pub fn remove_file(&self, host_path: &Path) -> Result<(), Error> {
        let local = self.path(host_path)?;
        match fs::remove_file(&local) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", host_path, e)),
        }
    }

    /// Removes a directory this installer created, only if it is empty now
    /// (someone else may have put files there since).
    pub fn remove_dir_if_empty(&self, host_path: &Path) -> Result<bool, Error> {
        let local = self.path(host_path)?;
        match fs::remove_dir(&local) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(false),
            Err(e) => Err(Error::io("removing the directory", host_path, e)),
        }
    }

    /// Creates `host_dir` and missing parents; returns those it created, outermost first.
    pub fn create_dirs(&self, host_dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let mut missing = Vec::new();
        let mut dir = Some(host_dir);
        while let Some(d) = dir {
            if self.path(d)?.is_dir() {
                break;
            }
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        missing.reverse();
        for d in &missing {
            fs::create_dir(self.path(d)?).map_err(|e| Error::io("creating the directory", d, e))?;
        }
        Ok(missing)
    }
}

/// Lower-case hex sha256, as `sha256sum` prints it.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_stay_under_the_root() {
        let host = Host::new("/host");
        assert_eq!(
            host.path(Path::new("/etc/containerd/config.toml")).unwrap(),
            Path::new("/host/etc/containerd/config.toml")
        );
        assert!(host.path(Path::new("/etc/../../x")).is_err());
    }

    #[test]
    fn atomic_write_reports_the_directories_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let created = host
            .write_atomic(Path::new("/a/b/file"), b"x", 0o640)
            .unwrap();
        assert_eq!(created, vec![PathBuf::from("/a"), PathBuf::from("/a/b")]);
        assert_eq!(host.read(Path::new("/a/b/file")).unwrap().unwrap(), b"x");
        assert_eq!(host.mode(Path::new("/a/b/file")).unwrap(), 0o640);
        let again = host
            .write_atomic(Path::new("/a/b/file"), b"y", 0o640)
            .unwrap();
        assert!(again.is_empty());
        assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1);
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("a/link")).unwrap();
        let err = host
            .write_atomic(Path::new("/a/link"), b"x", 0o644)
            .unwrap_err();
        assert!(
            err.to_string().contains("/a/link is a symbolic link"),
            "{err}"
        );
    }
}
