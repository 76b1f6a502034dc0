//! The node's cache of precompiled guests.
//!
//! Compiling is most of what a wasm container costs to start, in time and in
//! memory (the compiler's heap). The first container that runs a given
//! binary compiles it and writes the native code to this cache; every later
//! one, in any pod, is handed that code instead of compiling it.
//!
//! Loading native code is `unsafe`: a file that is not what this shim wrote
//! is arbitrary code. So each artifact is written with an HMAC-SHA256 tag
//! under a node-local secret key (`<root>/key`, mode 0600), and handed out
//! only if its tag verifies. A file planted in the cache, one changed after
//! it was written, or one written for other bytes fails the check: it is
//! removed and the guest compiled afresh. A "precompiled" file inside an
//! image is never even looked at: the cache key is derived from the wasm
//! bytes, and only this directory is searched.
//!
//! The cache is only ever opened outside containers (the create helper's
//! cache server, `shim_container::code`): whoever holds the directory or
//! the key could forge code every pod would load. A container receives a
//! verified artifact as a sealed memfd ([`Artifact::Code`]): a copy made
//! while its tag was checked, that nobody can write afterwards, so what is
//! verified is what runs.
//!
//! Layout under `<root>` (0700, owned by the shim's user):
//! - `key`: 32 random bytes, created once;
//! - `code/<name>.cwasm`: the artifact, `<name>` = SHA-256 of the wasm bytes,
//!   the kind of binary, this shim's version and wasmtime's compatibility
//!   hash of the engine configuration (so a changed engine never meets old
//!   code);
//! - `code/<name>.tag`: the HMAC of `<name>` and the artifact's bytes;
//! - `code/<name>.lock`: an flock that makes concurrent starts of the same
//!   binary compile it once; a start waits for it at most [`LOCK_PATIENCE`],
//!   then compiles a private copy.
//!
//! Total size is bounded: past the limit the least recently used artifacts
//! are removed.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use nix::fcntl::{openat, renameat, Flock, FlockArg, OFlag};
use nix::sys::stat::{fstatat, futimens, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};
use ring::{digest, hmac, rand::SecureRandom};

use crate::memfd::sealed_copy;
use crate::Kind;

/// Where the cache lives unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd-shim-wasmtime";
/// The default bound on the total size of the cached code.
pub const DEFAULT_LIMIT: u64 = 2 << 30;

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;
const ARTIFACT: &str = ".cwasm";
const TAG: &str = ".tag";
const LOCK: &str = ".lock";
/// A temporary file older than this belongs to a compile that died.
const STALE_SECS: i64 = 600;

/// How a program's code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Mapped from the cache.
    Hit,
    /// Compiled by the cache and stored in it.
    Compiled,
    /// Compiled by the cache but not stored: another start of the same
    /// binary held its compile lock past [`LOCK_PATIENCE`].
    CompiledUnstored,
}

/// What a [`CodeSource`] answers for a binary.
pub enum Artifact {
    /// Verified native code in a sealed, read-only memfd: nobody, not even
    /// its holder, can write, grow or shrink it.
    Code(File, Outcome),
    /// The binary does not compile; the compiler's message.
    Invalid(String),
}

/// Where an [`crate::Engine`] takes precompiled code from. In a container it
/// is a client of the node's [`Cache`] running outside the container; the
/// cache itself is one too (the unit tests use it in process).
pub trait CodeSource: Send + Sync {
    /// The code for `bytes` of `kind` as compiled by `engine`.
    fn artifact(&self, engine: &wasmtime::Engine, kind: Kind, bytes: &[u8])
        -> io::Result<Artifact>;
}

/// A failure of `fetch`: the guest's own (it does not compile) or the cache's.
pub(crate) enum Failure {
    Compile(wasmtime::Error),
    Cache(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Cache(e)
    }
}

impl From<nix::Error> for Failure {
    fn from(e: nix::Error) -> Self {
        Failure::Cache(e.into())
    }
}

/// How long a start waits for another start compiling the same binary
/// before it compiles its own copy in memory: the other may be throttled by
/// a tiny CPU quota, and must not stall every pod using that binary.
pub const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The cache directory, open, with its key. Only ever opened outside
/// containers: whoever holds it can forge code that every pod would load.
pub struct Cache {
    root: PathBuf,
    code: OwnedFd,
    key: hmac::Key,
    limit: u64,
    patience: std::time::Duration,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("root", &self.root)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl CodeSource for Cache {
    fn artifact(
        &self,
        engine: &wasmtime::Engine,
        kind: Kind,
        bytes: &[u8],
    ) -> io::Result<Artifact> {
        match self.fetch(engine, kind, bytes) {
            Ok((file, outcome)) => Ok(Artifact::Code(file, outcome)),
            Err(Failure::Compile(e)) => Ok(Artifact::Invalid(format!("{e:#}"))),
            Err(Failure::Cache(e)) => Err(e),
        }
    }
}

impl Cache {
    /// Opens (creating if needed) the cache under `root`, bounded to `limit`
    /// bytes of code. Refuses a root that someone else could write to.
    pub fn open(root: &Path, limit: u64) -> io::Result<Cache> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        check_private(root, &std::fs::metadata(root)?)?;
        let key = read_or_create_key(&root.join("key"))?;
        let code_dir = root.join("code");
        match std::fs::DirBuilder::new().mode(0o700).create(&code_dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let code = File::open(&code_dir)?;
        check_private(&code_dir, &code.metadata()?)?;
        Ok(Cache {
            root: root.to_path_buf(),
            code: code.into(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            limit,
            patience: LOCK_PATIENCE,
        })
    }

    /// Waits at most `patience` for another compile of the same binary.
    pub fn with_patience(mut self, patience: std::time::Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The cache entry's name for `bytes` of `kind` compiled by `engine`.
    pub(crate) fn name(engine: &wasmtime::Engine, kind: Kind, bytes: &[u8]) -> String {
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut compat);
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(bytes);
        ctx.update(format!("{kind:?}").as_bytes());
        ctx.update(env!("CARGO_PKG_VERSION").as_bytes());
        ctx.update(&compat.finish().to_le_bytes());
        hex(ctx.finish().as_ref())
    }

    /// The code for `bytes`, in a sealed memfd: a verified copy of the
    /// cache's artifact, or compiled (once, however many callers ask at the
    /// same time, unless one takes longer than the patience) and stored.
    pub(crate) fn fetch(
        &self,
        engine: &wasmtime::Engine,
        kind: Kind,
        bytes: &[u8],
    ) -> Result<(File, Outcome), Failure> {
        let name = Self::name(engine, kind, bytes);
        if let Some(found) = self.lookup(&name)? {
            return Ok((found, Outcome::Hit));
        }
        let lock = self.open_at(
            &format!("{name}{LOCK}"),
            OFlag::O_CREAT | OFlag::O_RDWR,
            0o600,
        )?;
        let lock = lock_within(File::from(lock), self.patience)?;
        if lock.is_some() {
            // Whoever held the lock may have just written it.
            if let Some(found) = self.lookup(&name)? {
                return Ok((found, Outcome::Hit));
            }
        } else {
            warn!(
                "cache: another start has been compiling {name} for over {} s; compiling a \
                 private copy",
                self.patience.as_secs()
            );
        }
        let code = match kind {
            Kind::Module => engine.precompile_module(bytes),
            Kind::Component => engine.precompile_component(bytes),
        };
        let code = code.map_err(|e| {
            // Bad wasm leaves nothing behind, not even its lock.
            if lock.is_some() {
                self.remove(&name);
            }
            Failure::Compile(e)
        })?;
        let sealed = sealed_copy(&mut &code[..])?;
        let Some(lock) = lock else {
            return Ok((sealed, Outcome::CompiledUnstored));
        };
        let tag = self.tag(&name, &code);
        drop(code);
        self.store(&name, &tag, &sealed)?;
        io::Seek::rewind(&mut &sealed)?;
        debug!("cache: compiled and stored {name}");
        drop(lock);
        self.evict(&name);
        Ok((sealed, Outcome::Compiled))
    }

    /// A sealed copy of the verified artifact `name`; `None` if there is
    /// none, or it fails verification (it is then removed). The tag is
    /// checked over the copy, so what is handed out is what was verified.
    fn lookup(&self, name: &str) -> io::Result<Option<File>> {
        let artifact = match self.open_at(&format!("{name}{ARTIFACT}"), OFlag::O_RDONLY, 0) {
            Ok(fd) => File::from(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Someone else's file (or, in a user namespace, one whose owner
        // this process cannot see as itself): not ours to load or to remove.
        let meta = artifact.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{name}{ARTIFACT} is not a regular file"
            )));
        }
        check_private(Path::new(&format!("{name}{ARTIFACT}")), &meta)?;
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(name.as_bytes());
        let copy = sealed_copy(&mut Tee {
            from: &artifact,
            mac: &mut ctx,
        })?;
        if let Err(reason) = self.check_tag(name, ctx) {
            warn!("cache: refusing {name}{ARTIFACT} ({reason}); compiling the guest afresh");
            self.remove(name);
            return Ok(None);
        }
        // Least recently used goes first when the cache is full.
        let _ = futimens(
            artifact.as_raw_fd(),
            &TimeSpec::UTIME_NOW,
            &TimeSpec::UTIME_NOW,
        );
        Ok(Some(copy))
    }

    /// Checks the stored tag of `name` against `ctx`, the HMAC of its name
    /// and bytes.
    fn check_tag(&self, name: &str, ctx: hmac::Context) -> Result<(), String> {
        let mut tag = [0u8; TAG_LEN + 1];
        let tag_len = match self.open_at(&format!("{name}{TAG}"), OFlag::O_RDONLY, 0) {
            Ok(fd) => read_up_to(&mut File::from(fd), &mut tag).map_err(|e| e.to_string())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("no tag".into()),
            Err(e) => return Err(format!("cannot read its tag: {e}")),
        };
        if tag_len != TAG_LEN {
            return Err("malformed tag".into());
        }
        // Compared without an early exit, so timing tells nothing about the tag.
        let difference = (ctx.sign().as_ref().iter())
            .zip(&tag[..TAG_LEN])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err("its tag does not match: not written by this node's shim".into());
        }
        Ok(())
    }

    /// The tag of artifact `name` holding `code`.
    fn tag(&self, name: &str, code: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(name.as_bytes());
        ctx.update(code);
        ctx.sign()
    }

    /// Writes `code` (the sealed memfd the caller hands out as well) as
    /// artifact `name` with its `tag`: temporary files, fsync, then renames
    /// (tag first), so a reader sees a whole artifact or none.
    fn store(&self, name: &str, tag: &hmac::Tag, code: &File) -> io::Result<()> {
        let pid = std::process::id();
        for suffix in [TAG, ARTIFACT] {
            let temp = format!("{name}{suffix}.tmp.{pid}");
            let fd = self.open_at(
                &temp,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                0o400,
            )?;
            let mut file = File::from(fd);
            // The data reaches the disk before the name does. The artifact's
            // pages then leave the page cache: they were written for later
            // containers, and count against this one's memory limit.
            let written = match suffix {
                TAG => file.write_all(tag.as_ref()),
                _ => io::Seek::rewind(&mut &*code)
                    .and_then(|_| io::copy(&mut &*code, &mut file).map(drop)),
            }
            .and_then(|()| file.sync_all())
            .map(|()| {
                // SAFETY: an advice about the page cache of a file we own.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            });
            let renamed = written.and_then(|()| {
                renameat(
                    Some(self.code.as_raw_fd()),
                    temp.as_str(),
                    Some(self.code.as_raw_fd()),
                    format!("{name}{suffix}").as_str(),
                )
                .map_err(io::Error::from)
            });
            if let Err(e) = renamed {
                let _ = unlinkat(
                    Some(self.code.as_raw_fd()),
                    temp.as_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
                return Err(e);
            }
        }
        fsync(self.code.as_raw_fd())?;
        Ok(())
    }

    /// Removes artifacts, least recently used first, until the cache is
    /// within its limit (never `keep`, just written); and stale temporaries.
    fn evict(&self, keep: &str) {
        let Ok(entries) = self.entries() else { return };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut artifacts = Vec::new();
        let mut total = 0u64;
        for (file, stat) in entries {
            if file.contains(".tmp.") {
                if now - stat.st_mtime > STALE_SECS {
                    let _ = unlinkat(
                        Some(self.code.as_raw_fd()),
                        file.as_str(),
                        UnlinkatFlags::NoRemoveDir,
                    );
                }
            } else if let Some(name) = file.strip_suffix(ARTIFACT) {
                total += stat.st_size as u64;
                if name != keep {
                    let used = (stat.st_mtime, stat.st_mtime_nsec);
                    artifacts.push((used, stat.st_size as u64, name.to_string()));
                }
            }
        }
        artifacts.sort();
        for (_, size, name) in artifacts {
            if total <= self.limit {
                break;
            }
            info!(
                "cache: over its limit of {} bytes; removing {name}",
                self.limit
            );
            self.remove(&name);
            total -= size;
        }
    }

    /// The files of the code directory with their status.
    fn entries(&self) -> io::Result<Vec<(String, nix::sys::stat::FileStat)>> {
        let dir = nix::dir::Dir::openat(
            Some(self.code.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut out = Vec::new();
        for entry in dir.into_iter().flatten() {
            let Ok(file) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if file.starts_with('.') {
                continue;
            }
            if let Ok(stat) = fstatat(
                Some(self.code.as_raw_fd()),
                file.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                out.push((file, stat));
            }
        }
        Ok(out)
    }

    fn remove(&self, name: &str) {
        for suffix in [ARTIFACT, TAG, LOCK] {
            let _ = unlinkat(
                Some(self.code.as_raw_fd()),
                format!("{name}{suffix}").as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }

    /// Opens `file` in the code directory; never follows a symlink.
    fn open_at(&self, file: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let fd = openat(
            Some(self.code.as_raw_fd()),
            file,
            flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(mode),
        )?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Refuses a cache file or directory that another user owns or that group or
/// others may write: code loaded from it would be theirs.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {} with mode {:o}; the cache needs it owned by uid {uid} \
                 and writable by no one else",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The node's key: read, or created once with fresh random bytes. A new key
/// is written in full to a private file first and then hard-linked into
/// place, which fails if another shim got there first: nobody ever reads a
/// key half written.
fn read_or_create_key(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    if !path.exists() {
        ring::rand::SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| io::Error::other("no randomness for the cache key"))?;
        // Unique per process and per call: shims and threads race here.
        static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staged = path.with_extension(format!("new.{}.{n}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staged)
            .and_then(|mut file| {
                file.write_all(&key)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::hard_link(&staged, path));
        let _ = std::fs::remove_file(&staged);
        match written {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => {}
        }
    }
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    check_private(path, &meta)?;
    if meta.mode() & 0o044 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is readable by others", path.display()),
        ));
    }
    let mut buf = [0u8; KEY_LEN + 1];
    if read_up_to(&mut file, &mut buf)? != KEY_LEN {
        // Damaged: a key is only ever linked into place whole.
        return Err(io::Error::other(format!(
            "{} does not hold a {KEY_LEN}-byte key",
            path.display()
        )));
    }
    key.copy_from_slice(&buf[..KEY_LEN]);
    Ok(key)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `from`, feeding every byte to `mac` as well.
struct Tee<'a> {
    from: &'a File,
    mac: &'a mut hmac::Context,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&mut self.from).read(buf)?;
        self.mac.update(&buf[..n]);
        Ok(n)
    }
}

/// Takes the exclusive lock of `file`, waiting at most `patience`; `None`
/// when someone else held it all that time.
fn lock_within(file: File, patience: std::time::Duration) -> io::Result<Option<Flock<File>>> {
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
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EINTR)) => {
                return Err(io::Error::other(
                    "interrupted while waiting for a compile lock",
                ))
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}
