//! A directory of content-addressed files on the host, private to the
//! shim's user: the one implementation under both of the node's stores, the
//! code cache's `code/` ([`crate::cache`]) and the wasm-layer store
//! (`shim_task::layers`).
//!
//! Both keep files the node reuses across containers, so both need the same
//! things: a file is whole or absent (written to a temporary name, synced,
//! renamed), nobody else's file is trusted, the directory stays within a
//! size bound (least recently used first out), and a dead writer's leftovers
//! go away. What an entry means and how its content is verified (an HMAC
//! tag, a digest) stays with the store's user. docs/architecture.md,
//! "Node-local state", shows the layout.
//!
//! Names: a file is `<key>.<kind>` (`<sha256>.cwasm`, `sha256-<hex>.wasm`);
//! the files sharing a key are one entry, evicted together. A name starting
//! with `.` is a temporary file (as is one holding `.tmp.`, of an earlier
//! version).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use log::info;
use nix::fcntl::{openat, renameat, Flock, FlockArg, OFlag};
use nix::sys::stat::{fstatat, futimens, FileStat, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};

/// A temporary file older than this belongs to a writer that died, and is
/// removed. A temporary file lives only while its writer copies bytes it
/// already holds and syncs them, seconds as a rule; but the code server
/// doing that is charged to the container's cgroup (see `shim_container::code`),
/// and under a 1m CPU quota or on a saturated disk the copy and the fsync of
/// a large artifact take minutes. Removing a live writer's file fails that
/// write (a code cache miss the container then compiles for itself; a
/// layer's create), so the age is far past any live write; a dead writer's
/// leftover costs only disk until then.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

const TEMP_SUFFIX: &str = ".tmp";
const LOCK: &str = "lock";

/// One store: an open directory, private to the shim's user.
pub struct Store {
    path: PathBuf,
    dir: OwnedFd,
    limit: u64,
    /// What the store is, for log lines ("cache", "layer store").
    what: &'static str,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path` (created 0700 with its parents if need
    /// be), whose entries may hold `limit` bytes in all; `what` names it in
    /// the log. Refuses a directory that is not private ([`check_private`]).
    pub fn open(path: &Path, limit: u64, what: &'static str) -> io::Result<Store> {
        let dir = private_dir(path)?;
        Ok(Store {
            path: path.to_path_buf(),
            dir: dir.into(),
            limit,
            what,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `name` to read; `None` if there is none. An error if it is not
    /// a regular file private to the shim's user (a symlink is never
    /// followed): such a file is not the store's to hand out.
    pub fn open_file(&self, name: &str) -> io::Result<Option<File>> {
        check_name(name)?;
        let file = match self.open_at(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0) {
            Ok(fd) => File::from(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                self.path.join(name).display()
            )));
        }
        check_private(&self.path.join(name), &meta)?;
        Ok(Some(file))
    }

    /// Marks `file` (opened by [`Store::open_file`]) as just used: the least
    /// recently used entries are evicted first.
    pub fn touch(&self, file: &File) {
        let _ = futimens(file.as_raw_fd(), &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW);
    }

    /// Writes each `(name, content)` in turn, read-only (0400): to a
    /// temporary file, synced, then renamed over `name`, so a reader sees a
    /// whole file or the one before; then syncs the directory. The written
    /// pages leave the page cache: they are for later containers, and would
    /// count against the memory limit of the one whose cgroup the writer is in.
    pub fn write(&self, files: &mut [(&str, &mut dyn Read)]) -> io::Result<()> {
        for (name, content) in files.iter_mut() {
            check_name(name)?;
            let temp = temp_name(name);
            let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY;
            let fd = match self.open_at(&temp, flags, 0o400) {
                // A dead process of the same pid left it: ours to replace.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    self.unlink(&temp);
                    self.open_at(&temp, flags, 0o400)?
                }
                other => other?,
            };
            let mut file = File::from(fd);
            let written = io::copy(content, &mut file)
                .and_then(|_| file.sync_all())
                .map(|()| {
                    // SAFETY: an advice about the page cache of a file we own.
                    unsafe {
                        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                    };
                });
            let renamed = written.and_then(|()| {
                let dir = Some(self.dir.as_raw_fd());
                renameat(dir, temp.as_str(), dir, *name).map_err(io::Error::from)
            });
            if let Err(e) = renamed {
                self.unlink(&temp);
                return Err(e);
            }
        }
        fsync(self.dir.as_raw_fd())?;
        Ok(())
    }

    /// Takes entry `key`'s lock (`<key>.lock`), waiting at most `patience`
    /// for whoever holds it; `None` when they held it all that time.
    pub fn lock(&self, key: &str, patience: Duration) -> io::Result<Option<Flock<File>>> {
        let name = format!("{key}.{LOCK}");
        check_name(&name)?;
        let fd = self.open_at(&name, OFlag::O_CREAT | OFlag::O_RDWR, 0o600)?;
        lock_within(File::from(fd), patience)
    }

    /// Removes every file of entry `key`.
    pub fn remove(&self, key: &str) {
        let Ok(files) = self.files() else { return };
        for (name, _) in files {
            if !is_temp(&name) && key_of(&name) == key {
                self.unlink(&name);
            }
        }
    }

    /// Removes whole entries, least recently used first (by the newest
    /// modification time of their files), until the store is within its
    /// limit; never `keep` (just written). Removes temporary files older
    /// than [`STALE_TEMP_AGE`] on the way. A process that already opened a
    /// removed file keeps reading it.
    pub fn evict(&self, keep: &str) {
        let Ok(files) = self.files() else { return };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // key -> (last used, bytes)
        let mut entries = std::collections::BTreeMap::<String, ((i64, i64), u64)>::new();
        for (name, stat) in files {
            if is_temp(&name) {
                if now - stat.st_mtime > STALE_TEMP_AGE.as_secs() as i64 {
                    info!("{}: removing {name}, left by a writer that died", self.what);
                    self.unlink(&name);
                }
                continue;
            }
            let entry = entries.entry(key_of(&name).to_string()).or_default();
            entry.0 = entry.0.max((stat.st_mtime, stat.st_mtime_nsec));
            entry.1 += stat.st_size as u64;
        }
        let mut total: u64 = entries.values().map(|(_, size)| size).sum();
        let mut candidates: Vec<_> = entries
            .into_iter()
            // An entry of no bytes (a lock alone: a compile in progress)
            // frees nothing.
            .filter(|(key, (_, size))| key != keep && *size > 0)
            .map(|(key, (used, size))| (used, size, key))
            .collect();
        candidates.sort();
        for (_, size, key) in candidates {
            if total <= self.limit {
                break;
            }
            info!(
                "{}: over its limit of {} bytes; removing {key}",
                self.what, self.limit
            );
            self.remove(&key);
            total -= size;
        }
    }

    /// The store's files, temporary ones included, with their status.
    fn files(&self) -> io::Result<Vec<(String, FileStat)>> {
        let dir = nix::dir::Dir::openat(
            Some(self.dir.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut out = Vec::new();
        for entry in dir.into_iter().flatten() {
            let Ok(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            if let Ok(stat) = fstatat(
                Some(self.dir.as_raw_fd()),
                name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                out.push((name, stat));
            }
        }
        Ok(out)
    }

    fn unlink(&self, name: &str) {
        let _ = unlinkat(Some(self.dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir);
    }

    /// Opens `name` in the store's directory; never follows a symlink.
    fn open_at(&self, name: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let fd = openat(
            Some(self.dir.as_raw_fd()),
            name,
            flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(mode),
        )?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Creates `path` (0700, with its parents) if it is missing, and opens it;
/// refuses it unless it is a directory private to the shim's user.
pub fn private_dir(path: &Path) -> io::Result<File> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let dir = File::open(path)?;
    let meta = dir.metadata()?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    check_private(path, &meta)?;
    Ok(dir)
}

/// The one ownership check of node-local state: refuses a file or directory
/// that another user owns or that group or others may write. What it holds
/// would be theirs (code every pod loads, a guest every container runs); in
/// a user namespace, an owner this process cannot see as itself is another.
pub fn check_private(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {} with mode {:o}; the shim needs it owned by uid {uid} \
                 and writable by no one else",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The entry a file belongs to: its name up to the first `.`.
fn key_of(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Whether `name` is a temporary file: this store's (`.<name>.<pid>.<n>.tmp`),
/// or an earlier version's (`<name>.tmp.<pid>`, `.<pid>.<n>`).
fn is_temp(name: &str) -> bool {
    name.starts_with('.') || name.contains(".tmp.")
}

/// Only plain names of the store's own: no path, no temporary name.
fn check_name(name: &str) -> io::Result<()> {
    let plain = !name.is_empty()
        && !is_temp(name)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a name of the store"),
        ))
    }
}

/// A temporary name for `name`, unique to this process and call (shims and
/// their threads write at the same time); hidden, and not of `name`'s kind,
/// so nothing that lists the store by kind mistakes it for an entry.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}.{n}{TEMP_SUFFIX}", std::process::id())
}

/// Takes the exclusive lock of `file`, waiting at most `patience`; `None`
/// when someone else held it all that time.
fn lock_within(file: File, patience: Duration) -> io::Result<Option<Flock<File>>> {
    let deadline = std::time::Instant::now() + patience;
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => {
                if std::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                file = back;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EINTR)) => {
                return Err(io::Error::other("interrupted while waiting for a lock"))
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
