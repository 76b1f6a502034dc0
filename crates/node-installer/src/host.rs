//! The node's filesystem as the installer sees it: the host's root is mounted
//! at `--host-root` (`/host` in the DaemonSet), so every host path is read and
//! written through [`Host`]. Paths in configs, the state file and the log are
//! host paths (what an operator sees on the node); only this module turns
//! them into files.
//!
//! Every host path is resolved inside the host root ([`resolve`]): a symlink
//! on the node, anywhere in the path (`/usr/local -> /opt`, an absolute link
//! into `/etc`), means what it means on the node and never reaches outside
//! the mount. Files are then created and renamed relative to the descriptor
//! of the directory so resolved, never by path again.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of
//! the directory) so a node that loses power mid-install has either the old
//! or the new file, never half of one: containerd refuses a truncated config.

mod resolve;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};
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

    /// Where the host path `host_path` (absolute on the node) is under the
    /// mount, for what only takes a path (the CRI socket). Files are opened
    /// with [`Host::read`] and the others, which resolve symlinks inside the
    /// root. `..` components are refused: a config naming `/../../etc` must
    /// not reach outside the host mount.
    pub fn path(&self, host_path: &Path) -> Result<PathBuf, Error> {
        Ok(self.root.join(relative(host_path)?))
    }

    /// Opens `host_path` inside the host root (see [`resolve`]).
    fn open(&self, host_path: &Path, flags: OFlag) -> Result<std::io::Result<OwnedFd>, Error> {
        let relative = relative(host_path)?;
        let root = fs::File::open(&self.root)
            .map_err(|e| Error::io("opening the host root", &self.root, e))?;
        Ok(resolve::open_in_root(
            std::os::fd::AsFd::as_fd(&root),
            &relative,
            flags,
        ))
    }

    /// The directory that holds `host_path`, opened inside the host root,
    /// and the name `host_path` has in it.
    fn parent(&self, host_path: &Path) -> Result<(std::io::Result<OwnedFd>, OsString), Error> {
        let name = relative(host_path)?
            .file_name()
            .ok_or_else(|| Error::HostPath(host_path.to_path_buf()))?
            .to_os_string();
        let dir = host_path.parent().unwrap_or(Path::new("/"));
        Ok((self.open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?, name))
    }

    pub fn exists(&self, host_path: &Path) -> bool {
        self.open(host_path, OFlag::O_PATH)
            .is_ok_and(|fd| fd.is_ok())
    }

    fn is_dir(&self, host_path: &Path) -> Result<bool, Error> {
        Ok(self
            .open(host_path, OFlag::O_PATH | OFlag::O_DIRECTORY)?
            .is_ok())
    }

    /// The file's bytes, or `None` when it does not exist.
    pub fn read(&self, host_path: &Path) -> Result<Option<Vec<u8>>, Error> {
        let read = self.open(host_path, OFlag::O_RDONLY)?.and_then(|fd| {
            let mut bytes = Vec::new();
            fs::File::from(fd).read_to_end(&mut bytes).map(|_| bytes)
        });
        match read {
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

    /// The names in directory `host_dir`, or `None` when it does not exist.
    pub fn list_dir(&self, host_dir: &Path) -> Result<Option<Vec<OsString>>, Error> {
        let listed = self
            .open(host_dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?
            .and_then(|fd| {
                let mut dir = nix::dir::Dir::from(fd)?;
                let mut names = Vec::new();
                for entry in dir.iter() {
                    let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_os_string();
                    if name != "." && name != ".." {
                        names.push(name);
                    }
                }
                Ok(names)
            });
        match listed {
            Ok(names) => Ok(Some(names)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("listing", host_dir, e)),
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
        let (dir, name) = self.parent(host_path)?;
        // Renaming over a link would replace the link, not its target.
        if dir.as_ref().is_ok_and(|dir| is_symlink(dir, &name)) {
            return Err(Error::Symlink(host_path.to_path_buf()));
        }
        let created = self.create_dirs(host_path.parent().unwrap_or(Path::new("/")))?;
        let dir = match dir {
            Ok(dir) => dir,
            Err(_) => self
                .parent(host_path)?
                .0
                .map_err(|e| Error::io("opening the directory of", host_path, e))?,
        };
        let mut temp = OsString::from(".");
        temp.push(&name);
        temp.push(format!(".wasmtime-installer.{}", std::process::id()));
        let result = (|| {
            let mut file = fs::File::from(create_new(&dir, &temp)?);
            file.write_all(bytes)?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            drop(file);
            renameat(
                Some(dir.as_raw_fd()),
                temp.as_os_str(),
                Some(dir.as_raw_fd()),
                name.as_os_str(),
            )?;
            fsync(dir.as_raw_fd())?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = unlinkat(
                Some(dir.as_raw_fd()),
                temp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
            return Err(Error::io("writing", host_path, e));
        }
        Ok(created)
    }

    /// The permission bits of an existing file (kept when it is edited).
    pub fn mode(&self, host_path: &Path) -> Result<u32, Error> {
        self.open(host_path, OFlag::O_PATH)?
            .and_then(|fd| Ok(fstat(fd.as_raw_fd())?.st_mode & 0o7777))
            .map_err(|e| Error::io("reading the mode of", host_path, e))
    }

    /// Unlinks `host_path` in its parent, resolved inside the root: the
    /// outer error is the parent's, the inner the unlink's.
    fn unlink(&self, host_path: &Path, flag: UnlinkatFlags) -> Result<std::io::Result<()>, Error> {
        let (dir, name) = self.parent(host_path)?;
        Ok(dir.and_then(|dir| Ok(unlinkat(Some(dir.as_raw_fd()), name.as_os_str(), flag)?)))
    }

    pub fn remove_file(&self, host_path: &Path) -> Result<(), Error> {
        match self.unlink(host_path, UnlinkatFlags::NoRemoveDir)? {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", host_path, e)),
        }
    }

    /// Removes a directory this installer created, only if it is empty now
    /// (someone else may have put files there since).
    pub fn remove_dir_if_empty(&self, host_path: &Path) -> Result<bool, Error> {
        match self.unlink(host_path, UnlinkatFlags::RemoveDir)? {
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
            if self.is_dir(d)? {
                break;
            }
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        missing.reverse();
        for d in &missing {
            let (parent, name) = self.parent(d)?;
            parent
                .and_then(|parent| {
                    Ok(mkdirat(
                        Some(parent.as_raw_fd()),
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o777),
                    )?)
                })
                .map_err(|e| Error::io("creating the directory", d, e))?;
        }
        Ok(missing)
    }
}

/// `host_path` relative to the host root: its normal components. `..` is
/// refused rather than resolved, so a path never climbs even inside the root.
fn relative(host_path: &Path) -> Result<PathBuf, Error> {
    let mut relative = PathBuf::new();
    for component in host_path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::HostPath(host_path.to_path_buf()))
            }
        }
    }
    Ok(relative)
}

fn is_symlink(dir: &OwnedFd, name: &OsStr) -> bool {
    fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|stat| SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// Creates `name` in `dir` for writing: a new file, never through a symlink.
/// A leftover of the same name (a run that crashed, or a link someone
/// planted) is removed, not followed, and the file created afresh.
fn create_new(dir: &OwnedFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let create = || {
        openat(
            Some(dir.as_raw_fd()),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
    };
    let fd = match create() {
        Err(Errno::EEXIST) => {
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)?;
            create()?
        }
        other => other?,
    };
    Ok(resolve::owned(fd))
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

    /// A directory outside every host root, as `/tmp/outside-<unique>`.
    fn outside() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("outside-")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn an_absolute_symlink_in_the_path_is_the_nodes_not_the_installers() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let outside = outside();
        fs::create_dir(outside.path().join("bin")).unwrap();
        fs::create_dir_all(dir.path().join("usr")).unwrap();
        // On the node, /usr/local is a link to /tmp/outside-…: the node's,
        // which does not exist yet.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("usr/local")).unwrap();
        let shim = Path::new("/usr/local/bin/containerd-shim-wasmtime-v1");
        assert!(
            host.write_atomic(shim, b"shim", 0o755).is_err(),
            "as `mkdir -p` on the node: /usr/local is a dangling link"
        );
        assert!(!host.exists(shim));
        let inside = dir
            .path()
            .join(outside.path().strip_prefix("/").unwrap())
            .join("bin");
        fs::create_dir_all(&inside).unwrap();
        let created = host.write_atomic(shim, b"shim", 0o755).unwrap();
        assert!(created.is_empty(), "{created:?}");
        assert_eq!(
            fs::read(inside.join("containerd-shim-wasmtime-v1")).unwrap(),
            b"shim"
        );
        assert_eq!(host.read(shim).unwrap().unwrap(), b"shim");
        assert_eq!(host.mode(shim).unwrap(), 0o755);
        host.remove_file(shim).unwrap();
        assert!(!inside.join("containerd-shim-wasmtime-v1").exists());
        assert_eq!(
            fs::read_dir(outside.path().join("bin")).unwrap().count(),
            0,
            "nothing was written outside the host root"
        );
        // Directories created through the link are the node's too.
        let created = host
            .write_atomic(Path::new("/usr/local/etc/x/file"), b"x", 0o644)
            .unwrap();
        assert_eq!(
            created,
            vec![
                PathBuf::from("/usr/local/etc"),
                PathBuf::from("/usr/local/etc/x")
            ]
        );
        assert!(inside.parent().unwrap().join("etc/x/file").is_file());
        assert!(!outside.path().join("etc").exists());
        assert!(host
            .remove_dir_if_empty(Path::new("/usr/local/etc/x"))
            .is_ok());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let outside = outside();
        let victim = outside.path().join("victim");
        fs::write(&victim, "victim").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        let temp = dir.path().join(format!(
            "etc/.config.toml.wasmtime-installer.{}",
            std::process::id()
        ));
        std::os::unix::fs::symlink(&victim, &temp).unwrap();
        host.write_atomic(Path::new("/etc/config.toml"), b"new", 0o644)
            .unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "victim");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let written = dir.path().join("etc/config.toml");
        assert!(fs::symlink_metadata(&written).unwrap().is_file());
        assert_eq!(fs::read(&written).unwrap(), b"new");
        assert!(fs::symlink_metadata(&temp).is_err(), "the link is gone");
    }

    #[test]
    fn imports_are_listed_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path());
        let outside = outside();
        fs::write(outside.path().join("secret.toml"), "").unwrap();
        fs::create_dir_all(dir.path().join("etc/containerd")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc/containerd/conf.d"))
            .unwrap();
        assert_eq!(
            host.list_dir(Path::new("/etc/containerd/conf.d")).unwrap(),
            None,
            "the link names the node's {}, which does not exist",
            outside.path().display()
        );
        fs::write(dir.path().join("etc/containerd/a.toml"), "").unwrap();
        assert_eq!(
            host.list_dir(Path::new("/etc/containerd"))
                .unwrap()
                .map(|mut n| {
                    n.sort();
                    n
                }),
            Some(vec![OsString::from("a.toml"), OsString::from("conf.d")])
        );
    }
}
