//! The trace table: live block address → (requested size, stack id).
//!
//! 64 shards (a power of two), each a `std::sync::Mutex` around a Swiss table, each on its own
//! cache lines. The shard is picked by the top bits of a multiplicative (Fibonacci) hash of the
//! address; within a shard the table hashes the middle bits, so shard choice and bucket choice
//! use independent bits. The trade-off: one uncontended futex lock per event (~5 ns) buys
//! exact enumeration of live blocks for snapshots; 64 shards keep two threads from meeting.
//!
//! # Lock order
//! Every lock in this crate is a leaf: a thread holds at most one of them, and never allocates
//! through the global allocator while holding it (tables grow through `MetaAlloc`, i.e. `System`).
//! The locks are: the 64 shard locks here, the 16 interner shard locks (`stack/intern.rs`), and
//! the symbol cache (`stack/symbolize.rs`, cold path only, taken with the reentrancy guard held
//! and never together with the others). No lock is `parking_lot`: its slow path allocates while
//! holding its own bucket locks, which deadlocked dhat-rs.

use crate::counters;
use crate::meta::{MetaAlloc, Padded};
use crate::stack::StackId;
use hashbrown::HashTable;
use std::sync::{Mutex, MutexGuard};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// One live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) address: usize,
    pub(crate) size: usize,
    pub(crate) stack: StackId,
}

type Shard = HashTable<Entry, MetaAlloc>;

static SHARDS_TABLE: [Padded<Mutex<Shard>>; SHARDS] =
    [const { Padded(Mutex::new(HashTable::new_in(MetaAlloc))) }; SHARDS];

#[inline]
fn spread(address: usize) -> u64 {
    (address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[inline]
fn locate(address: usize) -> (MutexGuard<'static, Shard>, u64) {
    let h = spread(address);
    (
        lock(&SHARDS_TABLE[(h >> (64 - SHARD_BITS)) as usize]),
        inner_hash(h),
    )
}

#[inline]
fn inner_hash(h: u64) -> u64 {
    // The top SHARD_BITS are fixed within a shard; move fresh bits to both ends.
    h.rotate_left(26)
}

#[inline]
fn rehash(e: &Entry) -> u64 {
    inner_hash(spread(e.address))
}

/// Records a live block. Returns false, recording nothing, when the table could not grow.
#[inline]
pub(crate) fn insert(address: usize, size: usize, stack: StackId) -> bool {
    let (mut shard, h) = locate(address);
    if let Some(stale) = shard.find_mut(h, |e| e.address == address) {
        // A record survived a free we did not see (a race with `stop`); the address is live
        // again, so the old block is gone.
        counters::removed(stale.size);
        *stale = Entry {
            address,
            size,
            stack,
        };
        counters::added(size);
        return true;
    }
    if shard.try_reserve(1, rehash).is_err() {
        return false;
    }
    shard.insert_unique(
        h,
        Entry {
            address,
            size,
            stack,
        },
        rehash,
    );
    counters::added(size);
    true
}

/// Puts back the record of a block whose `realloc` failed (the block is still live). Totals
/// are not counted again.
pub(crate) fn restore(entry: Entry) {
    let (mut shard, h) = locate(entry.address);
    if shard.try_reserve(1, rehash).is_ok() {
        shard.insert_unique(h, entry, rehash);
        counters::restored(entry.size);
    }
}

/// Forgets a block about to be freed; returns its record if it was traced.
#[inline]
pub(crate) fn remove(address: usize) -> Option<Entry> {
    let (mut shard, h) = locate(address);
    let (entry, _) = shard.find_entry(h, |e| e.address == address).ok()?.remove();
    counters::removed(entry.size);
    Some(entry)
}

/// The record of a live block.
pub(crate) fn get(address: usize) -> Option<Entry> {
    let (shard, h) = locate(address);
    shard.find(h, |e| e.address == address).copied()
}

/// Appends every live record to `out`, one shard at a time (no lock is held longer than one
/// shard's copy). `out` grows only while no lock is held: growing it frees its old buffer,
/// and a free takes a shard lock (possibly the same one).
pub(crate) fn copy_into(out: &mut Vec<Entry>) {
    for shard in &SHARDS_TABLE {
        loop {
            let len = lock(shard).len();
            // Room for what the shard holds now, and some growth before we lock it again.
            out.reserve(len + len / 8 + 16);
            let shard = lock(shard);
            if shard.len() <= out.capacity() - out.len() {
                out.extend(shard.iter().copied());
                break;
            }
        }
    }
}

fn lock(shard: &Padded<Mutex<Shard>>) -> MutexGuard<'_, Shard> {
    shard
        .0
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Empties the table, releasing its memory, and subtracts what it held from `current`.
pub(crate) fn clear() {
    for shard in &SHARDS_TABLE {
        let mut shard = lock(shard);
        let held: usize = shard.iter().map(|e| e.size).sum();
        *shard = HashTable::new_in(MetaAlloc);
        counters::removed(held);
    }
}
