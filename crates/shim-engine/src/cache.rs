//! The node's cache of precompiled guests: compiled once per node, handed
//! to every later container of the binary, in any pod.
//!
//! Why it is built as it is (docs/architecture.md, "The node's code cache"):
//! loading native code is `unsafe`, so a file that is not what this shim
//! wrote must never load. Each artifact is stored with an HMAC-SHA256 tag
//! under a node-local secret key and handed out only as a sealed copy made
//! while its tag was checked; one that fails the check is removed and the
//! guest compiled afresh. Only the code server (`shim_container::code`),
//! outside every container, opens the cache and reads the key: whoever
//! holds either could forge code every pod would load. An image's
//! "precompiled" file is never looked at: entries are named from the wasm
//! bytes, and only this directory is searched.
//!
//! The files themselves (atomic writes, ownership checks, LRU eviction,
//! locks) are a [`Store`]; this module adds the names, the tags and the key.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use ring::{digest, hmac, rand::SecureRandom};

use crate::memfd::sealed_copy;
use crate::store::{self, check_private, Store};
use crate::Kind;

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;
const ARTIFACT: &str = ".cwasm";
const TAG: &str = ".tag";

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

/// How long a start waits for another start compiling the same binary
/// before it compiles its own copy in memory: the other may be throttled by
/// a tiny CPU quota, and must not stall every pod using that binary.
pub const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// The cache directory, open, with its key. Only ever opened outside
/// containers: whoever holds it can forge code that every pod would load.
pub struct Cache {
    root: PathBuf,
    /// `<root>/code`: `<name>.cwasm` (the artifact; `<name>` is
    /// [`Cache::name`]), `<name>.tag` (the HMAC of the name and the
    /// artifact's bytes), `<name>.lock` (one compile at a time).
    code: Store,
    key: hmac::Key,
    patience: std::time::Duration,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("root", &self.root)
            .field("code", &self.code)
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
    /// bytes of code. Refuses a root, code directory or key that someone
    /// else could write to ([`check_private`]).
    pub fn open(root: &Path, limit: u64) -> io::Result<Cache> {
        store::private_dir(root)?;
        let key = read_or_create_key(&root.join("key"))?;
        let code = Store::open(&root.join("code"), limit, "cache")?;
        Ok(Cache {
            root: root.to_path_buf(),
            code,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            patience: LOCK_PATIENCE,
        })
    }

    /// Waits at most `patience` for another compile of the same binary.
    pub fn with_patience(mut self, patience: std::time::Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The cache entry's name for `bytes` of `kind` compiled by `engine`:
    /// SHA-256 of the bytes, the kind, this shim's version and wasmtime's
    /// compatibility hash of the engine's configuration (a changed engine
    /// never meets old code).
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
        let lock = self.code.lock(&name, self.patience)?;
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
                self.code.remove(&name);
            }
            Failure::Compile(e)
        })?;
        let sealed = sealed_copy(&mut &code[..])?;
        let Some(lock) = lock else {
            return Ok((sealed, Outcome::CompiledUnstored));
        };
        let tag = self.tag(&name, &code);
        drop(code);
        // The tag first: an artifact is never there without its tag. The
        // artifact is the sealed memfd the caller hands out as well.
        self.code.write(&mut [
            (&format!("{name}{TAG}"), &mut tag.as_ref()),
            (&format!("{name}{ARTIFACT}"), &mut &sealed),
        ])?;
        io::Seek::rewind(&mut &sealed)?;
        debug!("cache: compiled and stored {name}");
        drop(lock);
        self.code.evict(&name);
        Ok((sealed, Outcome::Compiled))
    }

    /// A sealed copy of the verified artifact `name`; `None` if there is
    /// none, or it fails verification (it is then removed). The tag is
    /// checked over the copy, so what is handed out is what was verified.
    /// An artifact that is not the shim's own (another owner, a symlink) is
    /// an error: neither loaded nor removed.
    fn lookup(&self, name: &str) -> io::Result<Option<File>> {
        let Some(artifact) = self.code.open_file(&format!("{name}{ARTIFACT}"))? else {
            return Ok(None);
        };
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(name.as_bytes());
        let copy = sealed_copy(&mut Tee {
            from: &artifact,
            mac: &mut ctx,
        })?;
        if let Err(reason) = self.check_tag(name, ctx) {
            warn!("cache: refusing {name}{ARTIFACT} ({reason}); compiling the guest afresh");
            self.code.remove(name);
            return Ok(None);
        }
        self.code.touch(&artifact);
        Ok(Some(copy))
    }

    /// Checks the stored tag of `name` against `ctx`, the HMAC of its name
    /// and bytes.
    fn check_tag(&self, name: &str, ctx: hmac::Context) -> Result<(), String> {
        let mut tag = [0u8; TAG_LEN + 1];
        let tag_len = match self.code.open_file(&format!("{name}{TAG}")) {
            Ok(Some(mut file)) => read_up_to(&mut file, &mut tag).map_err(|e| e.to_string())?,
            Ok(None) => return Err("no tag".into()),
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
