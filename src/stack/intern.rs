//! Stack interning: a list of return addresses becomes a `StackId` (u32), stored once.
//!
//! Two levels: a per-thread direct-mapped cache from the stack's 64-bit hash to its id (no lock,
//! no comparison: the hash is trusted, a collision between two distinct stacks has a chance of
//! about n²/2⁶⁴), then a global table sharded by hash, where a hit is confirmed by comparing the
//! addresses. Ids are never reused and the table is never emptied, so cached ids stay valid for
//! the life of the process.
//!
//! Locks: each shard's lock is a leaf lock; nothing else is locked and nothing allocates
//! through the global allocator while it is held (storage comes from [`MetaAlloc`]). They are
//! the crate's spin locks rather than `std::sync::Mutex` so that `fork`'s prepare handler can
//! hold them across the fork and release them in the child (a `Mutex` guard cannot outlive
//! the handler); they are taken only when a stack misses the per-thread cache.

use crate::lock::SpinLock;
use crate::meta::{MetaAlloc, Padded};
use allocator_api2::vec::Vec as MetaVec;
use hashbrown::HashTable;
use std::cell::Cell;

/// Identifies an interned stack.
pub(crate) type StackId = u32;

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;

#[derive(Debug)]
struct StackRecord {
    hash: u64,
    start: u32,
    len: u32,
}

#[derive(Debug)]
struct Shard {
    index: HashTable<u32, MetaAlloc>,
    stacks: MetaVec<StackRecord, MetaAlloc>,
    addresses: MetaVec<usize, MetaAlloc>,
}

impl Shard {
    const fn new() -> Self {
        Shard {
            index: HashTable::new_in(MetaAlloc),
            stacks: MetaVec::new_in(MetaAlloc),
            addresses: MetaVec::new_in(MetaAlloc),
        }
    }

    fn addresses_of(&self, local: u32) -> &[usize] {
        let Some(rec) = self.stacks.get(local as usize) else {
            return &[];
        };
        let start = rec.start as usize;
        self.addresses
            .get(start..start + rec.len as usize)
            .unwrap_or(&[])
    }
}

static TABLE: [Padded<SpinLock<Shard>>; SHARDS] =
    [const { Padded(SpinLock::new(Shard::new())) }; SHARDS];

/// `fork`'s prepare handler: takes every shard lock (see `table::lock_for_fork`).
pub(crate) fn lock_for_fork() {
    for shard in &TABLE {
        shard.0.lock_and_keep();
    }
}

/// Releases what [`lock_for_fork`] took, in the parent or the child.
pub(crate) fn unlock_after_fork() {
    for shard in TABLE.iter().rev() {
        // SAFETY: this thread took every shard lock in `lock_for_fork` and holds no guard.
        unsafe { shard.0.force_unlock() };
    }
}

/// Hashes a list of addresses: one multiply per address (as rustc-hash's Fx), so that the
/// frame-pointer walk can compute it on the fly ([`hash_step`] per address, then
/// [`hash_finish`]).
#[inline]
pub(crate) fn hash_stack(addresses: &[usize]) -> u64 {
    let hash = addresses.iter().fold(HASH_START, |h, &a| hash_step(h, a));
    hash_finish(hash, addresses.len())
}

pub(crate) const HASH_START: u64 = 0;
const HASH_MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

#[inline(always)]
pub(crate) fn hash_step(hash: u64, address: usize) -> u64 {
    hash.wrapping_add(address as u64)
        .wrapping_mul(HASH_MULTIPLIER)
}

#[inline(always)]
pub(crate) fn hash_finish(hash: u64, len: usize) -> u64 {
    // The length, then the well-mixed high bits moved down (the cache slot and the shard are
    // taken from the low and the high bits); 0 marks an empty cache slot.
    hash_step(hash, len).rotate_left(26).max(1)
}

const CACHE_SLOTS: usize = 256;

struct ThreadCache {
    hashes: [Cell<u64>; CACHE_SLOTS],
    ids: [Cell<StackId>; CACHE_SLOTS],
}

thread_local! {
    // Const-initialized, no destructor: usable inside the allocator during thread teardown.
    static CACHE: ThreadCache = const {
        ThreadCache {
            hashes: [const { Cell::new(0) }; CACHE_SLOTS],
            ids: [const { Cell::new(0) }; CACHE_SLOTS],
        }
    };
}

/// Returns the id of `addresses`, interning it on first sight; `None` when the tracer could not
/// allocate room for a new stack.
#[cfg(test)]
pub(crate) fn intern(addresses: &[usize]) -> Option<StackId> {
    intern_hashed(addresses, hash_stack(addresses))
}

/// [`intern`] with the stack's [`hash_stack`] already known.
#[inline]
pub(crate) fn intern_hashed(addresses: &[usize], hash: u64) -> Option<StackId> {
    let slot = (hash as usize) % CACHE_SLOTS;
    let cached = CACHE
        .try_with(|c| {
            // `slot` < CACHE_SLOTS by construction.
            let (h, id) = (&c.hashes[slot], &c.ids[slot]);
            (h.get() == hash).then(|| id.get())
        })
        .ok()
        .flatten();
    if let Some(id) = cached {
        return Some(id);
    }
    let id = intern_shared(addresses, hash)?;
    let _ = CACHE.try_with(|c| {
        c.hashes[slot].set(hash);
        c.ids[slot].set(id);
    });
    Some(id)
}

#[cold]
#[inline(never)]
fn intern_shared(addresses: &[usize], hash: u64) -> Option<StackId> {
    let shard_index = (hash >> (64 - SHARD_BITS)) as usize;
    let mut shard = TABLE[shard_index].0.lock();
    // Looking up and adding are separate functions, so that the stack holds only one of
    // their frames at a time: in a debug build (no inlining, a stack slot for every
    // temporary) the two together took 6.2 KiB of stack, which an allocation in a signal
    // handler on a small alternate stack cannot spare.
    let local = match shard.find(addresses, hash) {
        Some(local) => local,
        None => shard.add(addresses, hash)?,
    };
    Some(make_id(shard_index, local))
}

impl Shard {
    #[inline(never)]
    fn find(&self, addresses: &[usize], hash: u64) -> Option<u32> {
        self.index
            .find(hash, |&local| {
                self.stacks
                    .get(local as usize)
                    .is_some_and(|r| r.hash == hash)
                    && self.addresses_of(local) == addresses
            })
            .copied()
    }

    /// Adds a stack not in the shard. Room is made first, then the stack is stored; each its
    /// own function (allocator-api2's vector operations are always inlined, also in debug
    /// builds, and all of them in one function made a 5 KiB frame there).
    #[inline(never)]
    fn add(&mut self, addresses: &[usize], hash: u64) -> Option<u32> {
        let local = u32::try_from(self.stacks.len()).ok()?;
        // Ids stay below 2^31 (the trace table keeps ids from 2^24 up aside, in a side table).
        if local >= (u32::MAX >> (SHARD_BITS + 1)) {
            return None;
        }
        let start = u32::try_from(self.addresses.len()).ok()?;
        let len = u32::try_from(addresses.len()).ok()?;
        start.checked_add(len)?;
        self.reserve_addresses(addresses.len())?;
        self.reserve_record()?;
        self.reserve_index()?;
        self.store(addresses, StackRecord { hash, start, len }, local);
        Some(local)
    }

    #[inline(never)]
    fn reserve_addresses(&mut self, n: usize) -> Option<()> {
        self.addresses.try_reserve(n).ok()
    }

    #[inline(never)]
    fn reserve_record(&mut self) -> Option<()> {
        self.stacks.try_reserve(1).ok()
    }

    #[inline(never)]
    fn reserve_index(&mut self) -> Option<()> {
        let stacks = &self.stacks;
        self.index
            .try_reserve(1, |&l| stacks.get(l as usize).map_or(0, |r| r.hash))
            .ok()
    }

    /// Stores a stack; room was reserved.
    fn store(&mut self, addresses: &[usize], record: StackRecord, local: u32) {
        let hash = record.hash;
        self.store_addresses(addresses);
        self.store_record(record);
        self.index_stack(hash, local);
    }

    #[inline(never)]
    fn store_addresses(&mut self, addresses: &[usize]) {
        self.addresses.extend_from_slice(addresses);
    }

    #[inline(never)]
    fn store_record(&mut self, record: StackRecord) {
        self.stacks.push(record);
    }

    #[inline(never)]
    fn index_stack(&mut self, hash: u64, local: u32) {
        let stacks = &self.stacks;
        self.index.insert_unique(hash, local, |&l| {
            stacks.get(l as usize).map_or(0, |r| r.hash)
        });
    }
}

#[inline]
fn make_id(shard: usize, local: u32) -> StackId {
    (local << SHARD_BITS) | shard as u32
}

/// Appends the addresses of stack `id` to `out` (nothing for an unknown id).
pub(crate) fn addresses(id: StackId, out: &mut Vec<usize>) {
    let shard_index = (id as usize) & (SHARDS - 1);
    let shard = TABLE[shard_index].0.lock();
    out.extend_from_slice(shard.addresses_of(id >> SHARD_BITS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_addresses_same_id_and_round_trip() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3001];
        let ia = intern(&a).unwrap();
        let ib = intern(&b).unwrap();
        assert_ne!(ia, ib);
        assert_eq!(intern(&a), Some(ia));
        assert_eq!(intern_shared(&a, hash_stack(&a)), Some(ia));
        let mut out = Vec::new();
        addresses(ia, &mut out);
        assert_eq!(out, a);
        out.clear();
        addresses(ib, &mut out);
        assert_eq!(out, b);
        let empty = intern(&[]).unwrap();
        out.clear();
        addresses(empty, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn many_stacks_across_threads_stay_distinct() {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..if cfg!(miri) { 50usize } else { 2000 })
                        .map(|i| {
                            let s = [t * 100_000 + i, i, 7];
                            (s, intern(&s).unwrap())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for h in handles {
            for (s, id) in h.join().unwrap() {
                assert!(seen.insert(id), "ids are unique per distinct stack");
                let mut out = Vec::new();
                addresses(id, &mut out);
                assert_eq!(out, s);
            }
        }
    }
}
