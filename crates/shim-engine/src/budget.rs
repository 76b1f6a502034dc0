//! The container's memory budget: how many bytes of linear memory all its
//! guests' instances may hold together, and how many they hold.
//!
//! Every store gets a [`Limiter`] (wasmtime's `ResourceLimiter`) drawing on
//! one [`MemoryBudget`]: a `memory.grow` (or an instance's first memory)
//! succeeds only if the whole container stays within its limit, and what a
//! store held is given back when it is dropped. The limit is the container's
//! memory limit, and it can change while the guest runs (in-place resize:
//! [`MemoryBudget::set_limit`]).
//!
//! The counters live in one page of a file the shim creates beside the
//! container's state and every process of the container maps shared
//! ([`MemoryBudget::open`]) before its guest exists. The shim raises or
//! lowers the limit there; the container's processes publish what they hold
//! (task metrics). The page is the only thing they share, and the shim only
//! reads numbers from it: a guest that broke out of wasm could change its
//! own budget, never the cgroup's limit, which the kernel enforces.
//!
//! The page also counts how the container's guests got their code (from the
//! node's cache, or compiled): with the memory numbers, the container's
//! wasm metrics ([`WasmMetrics`]).
//!
//! The limit and the bytes held are one counter, the headroom (limit − held),
//! changed only by compare-and-swap: a grow takes from it, a lower limit takes
//! the difference from it, so a limit can never be lowered below what is
//! held, even while a guest grows at that moment.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The limit of a container without one: larger than any linear memory.
const UNLIMITED: u64 = 1 << 62;

/// Marks an initialised page (and its layout's version).
const MAGIC: u64 = u64::from_le_bytes(*b"wasmmem1");

/// The shared page. Only atomics: two processes use it at once.
#[repr(C)]
#[derive(Default)]
struct Counters {
    magic: AtomicU64,
    limit: AtomicU64,
    /// `limit` minus `held`.
    headroom: AtomicU64,
    /// Bytes of linear memory held by the container's live instances.
    held: AtomicU64,
    /// Live stores (instances of the guest: a command, or one per request).
    stores: AtomicU64,
    /// Grows refused because of the limit.
    refused: AtomicU64,
    /// Guests whose code came from the node's cache, and guests compiled.
    code_hits: AtomicU64,
    code_compiles: AtomicU64,
}

const PAGE: usize = 4096;
const _: () = assert!(std::mem::size_of::<Counters>() <= PAGE);

enum Backing {
    Private(Counters),
    /// A `MAP_SHARED` page of the budget file.
    Mapped(NonNull<Counters>),
}

// SAFETY: the mapped page is only ever reached through atomics, and stays
// mapped until the last handle is dropped.
unsafe impl Send for Backing {}
unsafe impl Sync for Backing {}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Backing::Mapped(page) = self {
            // SAFETY: the page was mapped by `map` with this length, and no
            // reference into it outlives the last handle.
            unsafe { libc::munmap(page.as_ptr().cast(), PAGE) };
        }
    }
}

/// A container's memory budget (see the module's documentation); clones
/// share it.
#[derive(Clone)]
pub struct MemoryBudget(Arc<Backing>);

/// A container's wasm numbers (docs/architecture.md, "Task metrics").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WasmMetrics {
    /// Live instances of its guests (a command, an exec, a request in flight).
    pub instances: u64,
    /// Linear memory they hold, in bytes.
    pub linear_memory_bytes: u64,
    /// The limit on it; 0: none.
    pub linear_memory_limit: u64,
    /// `memory.grow`s refused at the limit.
    pub grows_refused: u64,
    /// Guests whose code was mapped from the node's cache.
    pub code_cache_hits: u64,
    /// Guests compiled (into the cache, or by the process itself).
    pub code_compiles: u64,
}

/// The limit could not be lowered: the container's instances hold more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse {
    pub held: u64,
}

impl MemoryBudget {
    /// A budget of this process only (no file): what a container without a
    /// budget file, or a unit test, gets.
    pub fn new(limit: Option<u64>) -> Self {
        let counters = Counters::default();
        init(&counters, limit);
        Self(Arc::new(Backing::Private(counters)))
    }

    /// Shim side: creates the budget file at `path` (replacing a stale one)
    /// with the container's limit at create.
    pub fn create(path: &Path, limit: Option<u64>) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        file.set_len(PAGE as u64)?;
        let budget = map(&file)?;
        init(budget.counters(), limit);
        Ok(budget)
    }

    /// Maps the budget file a shim created; an uninitialised page is an error.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        if file.metadata()?.len() < PAGE as u64 {
            return Err(std::io::Error::other("the memory budget file is too short"));
        }
        let budget = map(&file)?;
        if budget.counters().magic.load(Ordering::Acquire) != MAGIC {
            return Err(std::io::Error::other("the memory budget file is not one"));
        }
        Ok(budget)
    }

    fn counters(&self) -> &Counters {
        match &*self.0 {
            Backing::Private(counters) => counters,
            // SAFETY: mapped for as long as `self` lives (see `Backing`).
            Backing::Mapped(page) => unsafe { page.as_ref() },
        }
    }

    /// The limit on all linear memories together; `None`: none.
    pub fn limit(&self) -> Option<u64> {
        Some(self.counters().limit.load(Ordering::Acquire)).filter(|&l| l < UNLIMITED)
    }

    /// Bytes of linear memory the container's instances hold now.
    pub fn held(&self) -> u64 {
        self.counters().held.load(Ordering::Acquire)
    }

    /// The container's live stores (instances of its guests).
    pub fn stores(&self) -> u64 {
        self.counters().stores.load(Ordering::Acquire)
    }

    /// How many grows the limit has refused.
    pub fn refused(&self) -> u64 {
        self.counters().refused.load(Ordering::Acquire)
    }

    /// Counts a guest of the container prepared: its code mapped from the
    /// node's cache (`hit`), or compiled.
    pub fn count_code(&self, hit: bool) {
        let counters = self.counters();
        let counter = if hit {
            &counters.code_hits
        } else {
            &counters.code_compiles
        };
        counter.fetch_add(1, Ordering::AcqRel);
    }

    /// The container's wasm numbers, for its task metrics.
    pub fn metrics(&self) -> WasmMetrics {
        let counters = self.counters();
        WasmMetrics {
            instances: self.stores(),
            linear_memory_bytes: self.held(),
            linear_memory_limit: self.limit().unwrap_or(0),
            grows_refused: self.refused(),
            code_cache_hits: counters.code_hits.load(Ordering::Acquire),
            code_compiles: counters.code_compiles.load(Ordering::Acquire),
        }
    }

    /// Changes the limit (`None`: none). Lowering it below what the
    /// instances hold fails, and changes nothing. Callers change one
    /// budget's limit one at a time.
    pub fn set_limit(&self, limit: Option<u64>) -> Result<(), InUse> {
        let counters = self.counters();
        let new = limit.map_or(UNLIMITED, |l| l.min(UNLIMITED));
        let old = counters.limit.load(Ordering::Acquire);
        if new >= old {
            counters.headroom.fetch_add(new - old, Ordering::AcqRel);
        } else {
            take(&counters.headroom, old - new).map_err(|()| InUse { held: self.held() })?;
        }
        counters.limit.store(new, Ordering::Release);
        Ok(())
    }

    /// A limiter for one store; it gives back what it held when dropped.
    pub fn limiter(&self) -> Limiter {
        self.counters().stores.fetch_add(1, Ordering::AcqRel);
        Limiter {
            budget: self.clone(),
            held: 0,
            last_grant: 0,
        }
    }

    fn charge(&self, bytes: u64) -> bool {
        let counters = self.counters();
        if take(&counters.headroom, bytes).is_err() {
            counters.refused.fetch_add(1, Ordering::AcqRel);
            return false;
        }
        counters.held.fetch_add(bytes, Ordering::AcqRel);
        true
    }

    fn release(&self, bytes: u64) {
        let counters = self.counters();
        counters.held.fetch_sub(bytes, Ordering::AcqRel);
        counters.headroom.fetch_add(bytes, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit())
            .field("held", &self.held())
            .finish()
    }
}

/// Two handles are equal when they share their counters.
impl PartialEq for MemoryBudget {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.counters(), other.counters())
    }
}

impl Eq for MemoryBudget {}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::new(None)
    }
}

fn init(counters: &Counters, limit: Option<u64>) {
    let limit = limit.map_or(UNLIMITED, |l| l.min(UNLIMITED));
    counters.limit.store(limit, Ordering::Release);
    counters.headroom.store(limit, Ordering::Release);
    counters.magic.store(MAGIC, Ordering::Release);
}

/// Takes `bytes` from `counter` if it has that many.
fn take(counter: &AtomicU64, bytes: u64) -> Result<(), ()> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| {
            have.checked_sub(bytes)
        })
        .map(drop)
        .map_err(drop)
}

fn map(file: &File) -> std::io::Result<MemoryBudget> {
    // SAFETY: a fresh shared mapping of one page of a file we opened
    // read-write; it is only reached through `Counters`' atomics.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let page = NonNull::new(address.cast::<Counters>()).expect("mmap never maps page 0");
    Ok(MemoryBudget(Arc::new(Backing::Mapped(page))))
}

/// One store's share of the budget: wasmtime asks it before each linear
/// memory grows (an instance's first memory too).
pub struct Limiter {
    budget: MemoryBudget,
    held: u64,
    /// What the last allowed grow took, given back if that grow fails.
    last_grant: u64,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let more = desired.saturating_sub(current) as u64;
        if !self.budget.charge(more) {
            return Ok(false);
        }
        self.held += more;
        self.last_grant = more;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        let grant = std::mem::take(&mut self.last_grant);
        self.held -= grant;
        self.budget.release(grant);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.release(self.held);
        self.budget.counters().stores.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    const MIB: usize = 1 << 20;

    #[test]
    fn instances_share_the_limit_and_give_back_what_they_held() {
        let budget = MemoryBudget::new(Some(10 * MIB as u64));
        let mut a = budget.limiter();
        let mut b = budget.limiter();
        assert!(a.memory_growing(0, 6 * MIB, None).unwrap());
        assert!(
            !b.memory_growing(0, 6 * MIB, None).unwrap(),
            "past the limit together"
        );
        assert!(b.memory_growing(0, 4 * MIB, None).unwrap());
        assert_eq!(
            (budget.held(), budget.stores(), budget.refused()),
            (10 * MIB as u64, 2, 1)
        );
        drop(a);
        assert_eq!((budget.held(), budget.stores()), (4 * MIB as u64, 1));
        assert!(b.memory_growing(4 * MIB, 10 * MIB, None).unwrap());
        assert!(!b
            .memory_growing(10 * MIB, 11 * MIB, Some(20 * MIB))
            .unwrap());
        assert!(!b
            .memory_growing(10 * MIB, 10 * MIB + 1, Some(10 * MIB))
            .unwrap());
        budget.count_code(true);
        budget.count_code(false);
        budget.count_code(true);
        assert_eq!(
            budget.metrics(),
            WasmMetrics {
                instances: 1,
                linear_memory_bytes: 10 * MIB as u64,
                linear_memory_limit: 10 * MIB as u64,
                grows_refused: 2,
                code_cache_hits: 2,
                code_compiles: 1,
            }
        );
    }

    #[test]
    fn a_raised_limit_lets_a_guest_grow_and_a_lower_one_below_use_is_refused() {
        let budget = MemoryBudget::new(Some(4 * MIB as u64));
        let mut store = budget.limiter();
        assert!(store.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(!store.memory_growing(4 * MIB, 5 * MIB, None).unwrap());
        budget.set_limit(Some(8 * MIB as u64)).unwrap();
        assert!(store.memory_growing(4 * MIB, 6 * MIB, None).unwrap());
        assert_eq!(
            budget.set_limit(Some(5 * MIB as u64)),
            Err(InUse {
                held: 6 * MIB as u64
            })
        );
        assert_eq!(
            budget.limit(),
            Some(8 * MIB as u64),
            "unchanged when refused"
        );
        budget.set_limit(Some(7 * MIB as u64)).unwrap();
        assert!(store.memory_growing(6 * MIB, 7 * MIB, None).unwrap());
        assert!(!store
            .memory_growing(7 * MIB, 7 * MIB + 65536, None)
            .unwrap());
        budget.set_limit(None).unwrap();
        assert_eq!(budget.limit(), None);
        assert!(store.memory_growing(7 * MIB, 1 << 32, None).unwrap());
        budget.set_limit(Some(5 << 30)).unwrap();
        assert_eq!(budget.limit(), Some(5 << 30));
    }

    #[test]
    fn a_failed_grow_gives_its_grant_back() {
        let budget = MemoryBudget::new(Some(2 * MIB as u64));
        let mut store = budget.limiter();
        assert!(store.memory_growing(0, 2 * MIB, None).unwrap());
        store
            .memory_grow_failed(wasmtime::format_err!("no memory"))
            .unwrap();
        assert_eq!(budget.held(), 0);
        assert!(store.memory_growing(0, 2 * MIB, None).unwrap());
    }

    #[test]
    fn the_file_is_shared_by_every_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budget");
        let shim = MemoryBudget::create(&path, Some(3 * MIB as u64)).unwrap();
        let guest = MemoryBudget::open(&path).unwrap();
        assert_ne!(shim, guest);
        let mut store = guest.limiter();
        assert!(store.memory_growing(0, 3 * MIB, None).unwrap());
        assert_eq!((shim.held(), shim.stores()), (3 * MIB as u64, 1));
        assert_eq!(
            shim.set_limit(Some(MIB as u64)),
            Err(InUse {
                held: 3 * MIB as u64
            })
        );
        shim.set_limit(Some(4 * MIB as u64)).unwrap();
        assert!(store.memory_growing(3 * MIB, 4 * MIB, None).unwrap());
        drop(store);
        assert_eq!(shim.held(), 0);
        std::fs::write(dir.path().join("other"), vec![0u8; PAGE]).unwrap();
        assert!(MemoryBudget::open(&dir.path().join("other")).is_err());
    }
}
