//! Measurement scopes: per-test heap figures that other threads cannot pollute.
//!
//! A scope is an id held in a thread-local. A block allocated while a scope is current records
//! that id in its trace; its bytes count in that scope and in every enclosing scope, and its
//! free is credited back to them whichever thread frees it. Code outside any scope pays one
//! thread-local read per traced allocation.
//!
//! Peak attribution is exact and O(1) per event (memray's lazy "contribution to the last
//! peak"): each site (stack) keeps its current bytes and, lazily, its bytes at the last
//! committed peak. A peak is committed on the falling edge (the first decrease after a new
//! maximum); a site touched after a commit first saves its value at that commit. No sweep over
//! the sites ever happens.
//!
//! Lock: one spin lock over the scope registry, a leaf like the others: nothing is allocated
//! through the global allocator while it is held (the maps allocate from `System`).

use crate::lock::SpinLock;
use crate::meta::MetaAlloc;
use crate::stack::StackId;
use crate::table::Entry;
use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

thread_local! {
    // The scope of this thread's allocations; 0 = none. Const-initialized, no destructor.
    static CURRENT: Cell<u32> = const { Cell::new(0) };
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// The scope of an all-threads measurement (`measure_all_threads`) while one runs: the scope of
/// every allocation made on a thread that is in no scope of its own. 0 = none.
static ALL_THREADS: AtomicU32 = AtomicU32::new(0);

/// How many open scopes watch other threads' unscoped allocations (see [`observed`]).
static WATCHERS: AtomicU32 = AtomicU32::new(0);

/// Distinct stacks a scope keeps of other threads' unscoped allocations; more are counted only.
const MAX_OTHERS: usize = 4096;

/// The current thread's own scope (0 = none), not counting an all-threads measurement: the
/// parent of a measurement it opens. (Under an all-threads measurement, a measurement on another
/// thread keeps its own figures and must not end with it.)
#[inline]
pub(crate) fn own_id() -> u32 {
    CURRENT.try_with(Cell::get).unwrap_or(0)
}

/// The all-threads measurement's scope (0 = none): the scope of a thread in no scope of its own.
#[inline]
pub(crate) fn all_threads_id() -> u32 {
    ALL_THREADS.load(Ordering::Relaxed)
}

/// Makes `id` (0: none) the scope of every thread in no scope of its own.
pub(crate) fn set_all_threads(id: u32) {
    ALL_THREADS.store(id, Ordering::Relaxed);
}

/// Whether some open scope watches other threads' unscoped allocations: one relaxed load, on
/// the unscoped path of `tracer::record` only.
#[inline]
pub(crate) fn watching() -> bool {
    WATCHERS.load(Ordering::Relaxed) != 0
}

/// Sets the current thread's scope, returning the previous one.
pub(crate) fn set_current(id: u32) -> u32 {
    CURRENT.try_with(|c| c.replace(id)).unwrap_or(0)
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Site {
    pub(crate) bytes: usize,
    pub(crate) blocks: usize,
    pub(crate) allocations: u64,
    /// Bytes of the allocations (a reallocation counts its new size).
    pub(crate) allocated: u64,
    at_peak_bytes: usize,
    at_peak_blocks: usize,
    stamp: u64,
}

impl Site {
    /// Saves the value this site had at the latest committed peak, if not saved yet.
    fn sync(&mut self, commits: u64) {
        if self.stamp != commits {
            self.at_peak_bytes = self.bytes;
            self.at_peak_blocks = self.blocks;
            self.stamp = commits;
        }
    }
}

#[derive(Debug)]
struct ScopeData {
    parent: u32,
    root: u32,
    /// Ended scopes stay as tombstones (for their parent chain) until their root ends.
    ended: bool,
    current: usize,
    peak: usize,
    allocated: u64,
    allocations: u64,
    /// Of `allocations`, the blocks an all-threads measurement inside this scope (or this
    /// scope itself, when it is one) took from threads in no scope of their own: counted in
    /// the table's unscoped total too, so not left-out work for this scope.
    routed: u64,
    /// `current` is a new maximum not yet followed by a decrease: the peak is *now*.
    rising: bool,
    commits: u64,
    sites: HashMap<StackId, Site, FxBuildHasher, MetaAlloc>,
    /// Site updates lost because the site table could not grow (out of memory).
    lost: u64,
    /// Whether this scope watches other threads' unscoped allocations while it is open.
    watching: bool,
    /// Their stacks (allocations, bytes), up to `MAX_OTHERS` stacks.
    others: HashMap<StackId, (u64, u64), FxBuildHasher, MetaAlloc>,
}

impl ScopeData {
    fn new(parent: u32, root: u32) -> Self {
        ScopeData {
            parent,
            root,
            ended: false,
            current: 0,
            peak: 0,
            allocated: 0,
            allocations: 0,
            routed: 0,
            rising: false,
            commits: 0,
            sites: HashMap::with_hasher_in(FxBuildHasher, MetaAlloc),
            lost: 0,
            watching: false,
            others: HashMap::with_hasher_in(FxBuildHasher, MetaAlloc),
        }
    }

    fn add(&mut self, stack: StackId, size: usize, new_block: bool) {
        self.current += size;
        if new_block {
            self.allocated += size as u64;
            self.allocations += 1;
        }
        if self.current > self.peak {
            self.peak = self.current;
            self.rising = true;
        }
        let commits = self.commits;
        if self.sites.try_reserve(1).is_err() {
            self.lost += 1;
            return;
        }
        let site = self.sites.entry(stack).or_insert(Site {
            stamp: commits,
            ..Site::default()
        });
        site.sync(commits);
        site.bytes += size;
        site.blocks += 1;
        if new_block {
            site.allocations += 1;
            site.allocated += size as u64;
        }
    }

    fn sub(&mut self, stack: StackId, size: usize) {
        if self.rising {
            // The falling edge: the state just before this decrease is the peak.
            self.commits += 1;
            self.rising = false;
        }
        self.current = self.current.saturating_sub(size);
        let commits = self.commits;
        if let Some(site) = self.sites.get_mut(&stack) {
            site.sync(commits);
            site.bytes = site.bytes.saturating_sub(size);
            site.blocks = site.blocks.saturating_sub(1);
        }
    }

    fn reset_peak(&mut self) {
        self.peak = self.current;
        // The current state is the peak from now on; sites touched later save their value.
        self.commits += 1;
        self.rising = true;
    }
}

type Registry = HashMap<u32, ScopeData, FxBuildHasher, MetaAlloc>;

static REGISTRY: SpinLock<Registry> =
    SpinLock::new(HashMap::with_hasher_in(FxBuildHasher, MetaAlloc));

/// Whether this thread holds the registry's lock: a signal handler that interrupted the
/// scopes' bookkeeping must not wait for it (see `table::remove` and `tracer::record`).
#[inline]
pub(crate) fn registry_is_mine() -> bool {
    REGISTRY.is_mine()
}

/// Runs `f` holding the registry's lock, as a signal handler that interrupted the scopes'
/// bookkeeping would run.
#[cfg(test)]
pub(crate) fn holding_registry<R>(f: impl FnOnce() -> R) -> R {
    let _held = REGISTRY.lock();
    f()
}

/// `fork`'s prepare handler: takes the registry's lock (see `fork.rs`).
pub(crate) fn lock_for_fork() {
    REGISTRY.lock_and_keep();
}

/// Releases what [`lock_for_fork`] took, in the parent or the child.
pub(crate) fn unlock_after_fork() {
    // SAFETY: `lock_for_fork` took the lock on this thread and kept no guard.
    unsafe { REGISTRY.force_unlock() };
}

/// Scope updates skipped because this thread held the registry (a signal handler in the
/// scopes' bookkeeping; `table::insert` and `table::remove` refuse before a record of a scope
/// would need an update, so only `observed` can still skip): never otherwise.
static SKIPPED: AtomicU64 = AtomicU64::new(0);

pub(crate) fn skipped_updates() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

fn walk(id: u32, mut f: impl FnMut(&mut ScopeData)) {
    let Some(mut registry) = REGISTRY.lock_unless_mine() else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut id = id;
    // The chain is finite (parents are created before children); bound it anyway.
    for _ in 0..1024 {
        let Some(data) = registry.get_mut(&id) else {
            return;
        };
        if !data.ended {
            f(data);
        }
        id = data.parent;
        if id == 0 {
            return;
        }
    }
}

/// Blocks allocated in a thread's own scope, ever: the rest of the table's allocation total was
/// made outside every scope (see `Measurement::others_unscoped_allocations`). Counted here, on
/// the scoped path, so that allocations outside any scope pay nothing for it. Blocks an
/// all-threads measurement takes from threads in no scope of their own are not counted here:
/// for every other measurement they are still work done outside its scope.
static SCOPED_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn scoped_allocations() -> u64 {
    SCOPED_ALLOCATIONS.load(Ordering::Relaxed)
}

/// A block of `size` bytes was allocated in scope `id`: the thread's own scope when `own`,
/// else the all-threads measurement's.
pub(crate) fn allocated(id: u32, stack: StackId, size: usize, own: bool) {
    if own {
        SCOPED_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        walk(id, |d| d.add(stack, size, true));
    } else {
        walk(id, |d| {
            d.add(stack, size, true);
            d.routed += 1;
        });
    }
}

/// A block's record was put back after a failed `realloc`: live again, not a new allocation.
pub(crate) fn restored(id: u32, stack: StackId, size: usize) {
    walk(id, |d| d.add(stack, size, false));
}

/// A block recorded in a scope was freed (or reallocated away).
pub(crate) fn freed(entry: &Entry) {
    if entry.scope != 0 {
        walk(entry.scope, |d| d.sub(entry.stack, entry.size));
    }
}

/// Opens a scope nested in `parent` (0: none); `None` when the registry cannot grow. With
/// `watch` the scope also keeps the stacks of other threads' allocations
/// made outside every scope while it is open (see [`observed`]).
pub(crate) fn open_watching(parent: u32, watch: bool) -> Option<u32> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut registry = REGISTRY.lock();
    let root = registry
        .get(&parent)
        .map_or(id, |p| if p.root == 0 { parent } else { p.root });
    registry.try_reserve(1).ok()?;
    let mut data = ScopeData::new(parent, root);
    data.watching = watch;
    registry.insert(id, data);
    if watch {
        WATCHERS.fetch_add(1, Ordering::Relaxed);
    }
    Some(id)
}

/// The scopes a routed block counts in: an all-threads measurement's and those around it, at
/// most this many (a deeper nesting would see the block as left-out work too).
const ROUTED_DEPTH: usize = 16;

/// A block of `size` bytes was allocated outside every scope of its own thread while some
/// scope watches: each open watching scope keeps its stack, except those it counts in already
/// (`routed`: the all-threads measurement it went to, 0 = none, and the scopes around that).
pub(crate) fn observed(stack: StackId, size: usize, routed: u32) {
    let Some(mut registry) = REGISTRY.lock_unless_mine() else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut counted = [0u32; ROUTED_DEPTH];
    let (mut id, mut n) = (routed, 0);
    while id != 0 && n < ROUTED_DEPTH {
        counted[n] = id;
        n += 1;
        id = registry.get(&id).map_or(0, |d| d.parent);
    }
    for (id, data) in registry.iter_mut() {
        if !data.watching || data.ended || counted[..n].contains(id) {
            continue;
        }
        if data.others.len() >= MAX_OTHERS && !data.others.contains_key(&stack) {
            continue;
        }
        if data.others.try_reserve(1).is_err() {
            continue;
        }
        let slot = data.others.entry(stack).or_insert((0, 0));
        slot.0 += 1;
        slot.1 += size as u64;
    }
}

/// What a scope measured, with stack ids still raw.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) peak: usize,
    pub(crate) allocated: u64,
    pub(crate) allocations: u64,
    /// See `ScopeData::routed`.
    pub(crate) routed: u64,
    pub(crate) retained: usize,
    /// (stack, bytes, blocks) live at the peak.
    pub(crate) at_peak: Vec<(StackId, usize, usize)>,
    /// (stack, bytes, blocks) still live at the end.
    pub(crate) retained_sites: Vec<(StackId, usize, usize)>,
    /// (stack, allocations, their bytes) made in the scope.
    pub(crate) allocation_sites: Vec<(StackId, u64, u64)>,
    pub(crate) lost: u64,
    /// (stack, allocations, bytes) other threads made outside every scope while it was open
    /// (watching scopes only).
    pub(crate) others: Vec<(StackId, u64, u64)>,
}

/// The figures of a running scope (`None` for an unknown or ended one).
/// Call with the reentrancy guard held: the result is allocated.
pub(crate) fn figures(id: u32) -> Option<Figures> {
    // Copy the sites out without allocating under the lock: size first, then fill.
    let mut sites: Vec<(StackId, Site)> = Vec::new();
    let mut others: Vec<(StackId, u64, u64)> = Vec::new();
    loop {
        let needed = REGISTRY
            .lock()
            .get(&id)
            .map_or((0, 0), |d| (d.sites.len(), d.others.len()));
        sites.reserve(needed.0 + 16);
        others.reserve(needed.1 + 16);
        let registry = REGISTRY.lock();
        let data = registry.get(&id).filter(|d| !d.ended)?;
        if data.sites.len() > sites.capacity() || data.others.len() > others.capacity() {
            continue;
        }
        sites.extend(data.sites.iter().map(|(&k, &v)| (k, v)));
        others.extend(data.others.iter().map(|(&k, &(n, b))| (k, n, b)));
        let (rising, commits) = (data.rising, data.commits);
        let mut f = Figures {
            peak: data.peak,
            allocated: data.allocated,
            allocations: data.allocations,
            routed: data.routed,
            retained: data.current,
            lost: data.lost,
            others: std::mem::take(&mut others),
            ..Figures::default()
        };
        drop(registry);
        for (stack, site) in sites {
            let (bytes, blocks) = if rising || site.stamp != commits {
                (site.bytes, site.blocks)
            } else {
                (site.at_peak_bytes, site.at_peak_blocks)
            };
            if bytes > 0 {
                f.at_peak.push((stack, bytes, blocks));
            }
            if site.bytes > 0 {
                f.retained_sites.push((stack, site.bytes, site.blocks));
            }
            if site.allocations > 0 {
                f.allocation_sites
                    .push((stack, site.allocations, site.allocated));
            }
        }
        return Some(f);
    }
}

/// Sets a running scope's peak to its current bytes.
pub(crate) fn reset_peak(id: u32) {
    let mut registry = REGISTRY.lock();
    if let Some(data) = registry.get_mut(&id).filter(|d| !d.ended) {
        data.reset_peak();
    }
}

/// Ends a scope. Its record stays as a tombstone (so frees of blocks made in it still reach
/// its parents) until its root scope ends; ending a root drops the whole tree.
pub(crate) fn close(id: u32) {
    let mut registry = REGISTRY.lock();
    let Some(data) = registry.get_mut(&id) else {
        return;
    };
    data.ended = true;
    if std::mem::take(&mut data.watching) {
        WATCHERS.fetch_sub(1, Ordering::Relaxed);
    }
    // Free the sites now; the tombstone keeps only the links.
    data.sites = HashMap::with_hasher_in(FxBuildHasher, MetaAlloc);
    data.others = HashMap::with_hasher_in(FxBuildHasher, MetaAlloc);
    if data.parent == 0 {
        // The whole tree goes: the root itself and every descendant (their `root` is `id`).
        // Removing entries does not allocate.
        registry.retain(|&k, d| k != id && d.root != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_peak(d: &ScopeData, stack: StackId) -> usize {
        let s = d.sites[&stack];
        if d.rising || s.stamp != d.commits {
            s.bytes
        } else {
            s.at_peak_bytes
        }
    }

    #[test]
    fn lazy_peak_attribution_matches_a_full_sweep() {
        // Random walk over 5 sites, compared with an eager model that copies all sites at
        // every new maximum.
        let mut d = ScopeData::new(0, 0);
        let mut live: Vec<Vec<usize>> = vec![Vec::new(); 5];
        let mut model_peak_sites = [0usize; 5];
        let (mut model_current, mut model_peak) = (0usize, 0usize);
        let mut x: u64 = 0x1234_5678;
        for _ in 0..if cfg!(miri) { 600 } else { 20_000 } {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let site = (x % 5) as usize;
            if x % 3 != 0 || live[site].is_empty() {
                let size = 1 + (x >> 8) as usize % 100;
                live[site].push(size);
                d.add(site as StackId, size, true);
                model_current += size;
            } else {
                let size = live[site].pop().unwrap();
                d.sub(site as StackId, size);
                model_current -= size;
            }
            if model_current > model_peak {
                model_peak = model_current;
                for (i, l) in live.iter().enumerate() {
                    model_peak_sites[i] = l.iter().sum();
                }
            }
            assert_eq!(d.peak, model_peak);
            for (i, &expected) in model_peak_sites.iter().enumerate() {
                if d.sites.contains_key(&(i as StackId)) {
                    assert_eq!(at_peak(&d, i as StackId), expected, "site {i}");
                }
            }
        }
    }
}
