//! The trace table: live block address → (requested size, stack id).
//!
//! 64 shards (a power of two), each a spin-then-yield lock (`lock.rs`) around a Swiss table and
//! the shard's allocation totals, each on its own cache lines. The shard is picked by the top bits
//! of a multiplicative (Fibonacci) hash of the address, in unequal shares so that the shards'
//! tables do not all double at once (see [`SHARES`]); within a shard the table hashes the middle
//! bits, so shard choice and bucket choice use independent bits. The trade-off: one uncontended lock per event (one compare-exchange)
//! buys exact enumeration of live blocks for snapshots; 64 shards keep two threads from
//! meeting. Totals live in the shards, under the lock, so they cost no extra atomic operation.
//!
//! # Order of the peak figures
//! A table operation changes `current` first and its stack's site after (both under the shard
//! lock), so the site reads the peak word *after* its bytes moved: a peak reached by another
//! thread before that move (its state held the block, or did not yet) is seen, and the site's
//! figures at that peak are its figures before the change. What stays inexact is the few
//! instructions between an operation's own change of `current` and its read of the peak word,
//! and between another thread's change of `current` and its raise of the word: an event inside
//! either window may land on the wrong side of a peak reached by another thread. A `realloc`
//! takes its old block out of the site before the inner reallocation and out of `current` with
//! the new block's arrival, so for that time a peak reached by another thread misses the old
//! block.
//!
//! # Lock order
//! Every lock in this crate is a leaf: a thread holds at most one of them, and never allocates
//! through the global allocator while holding it (tables grow through `MetaAlloc`, i.e. `System`).
//! The locks are: the 64 shard locks here (spin locks), the 16 interner shard locks
//! (`std::sync::Mutex`, futex-based, taken only when a stack misses the per-thread cache) in
//! `stack/intern.rs`, and
//! the symbol cache (`stack/symbolize.rs`, cold path only, taken with the reentrancy guard held
//! and never together with the others). No lock is `parking_lot`: its slow path allocates while
//! holding its own bucket locks, which deadlocked dhat-rs.

use crate::counters;
use crate::ledger;
use crate::lock::{SpinGuard, SpinLock};
use crate::meta::{MetaAlloc, Padded};
use crate::sample;
use crate::stack::StackId;
use hashbrown::HashTable;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// One live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) address: usize,
    pub(crate) size: usize,
    pub(crate) stack: StackId,
    /// The measurement scope the block was made in (0: none). Fits in `Entry`'s padding.
    pub(crate) scope: u32,
}

/// What one stack did in one shard: allocated since the totals were reset and freed as
/// temporaries (moved here from the threads' ledgers, see `ledger.rs`: these are in the stack's
/// home shard, [`home`]), held now and held at the peak (in the shard of each block's address).
/// Kept under the shard lock, and no atomic. What the site holds, and held at the peak, is kept
/// only while the peak breakdown is (see [`set_detail`]): a probe on each allocation and free;
/// without it, no table operation touches a site.
///
/// The peak figures are lazy (memray's high-water-mark bookkeeping): `epoch` is the peak word
/// (`counters::epoch`) when the site last changed. If the word has changed since, a new peak
/// (or a reset) came after the site's last change, so what it holds now is what it held at
/// the peak; otherwise `peak_*` is, saved at the site's first change after that peak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Site {
    stack: StackId,
    allocated_bytes: u64,
    allocated_blocks: u64,
    live_bytes: u64,
    live_blocks: u64,
    peak_bytes: u64,
    peak_blocks: u64,
    epoch: u64,
    /// Blocks freed by the thread that allocated them before it allocated again (heaptrack's
    /// temporary allocations), and their bytes.
    temporary_blocks: u64,
    temporary_bytes: u64,
    /// Block lifetimes, in [`counters::ticks`], kept with the peak breakdown: the sum of the
    /// times the site's blocks left the table minus the sum of the times they entered it
    /// (wrapping). With the site's live blocks counted to a time `t`, `lifetime + live_blocks
    /// × t` is the sum of every block's lifetime to `t`: no timestamp per block.
    lifetime: u128,
}

impl Site {
    /// Brings the peak figures to `epoch` before a change.
    #[inline(always)]
    fn sync(&mut self, epoch: u64) {
        if self.epoch != epoch {
            self.peak_bytes = self.live_bytes;
            self.peak_blocks = self.live_blocks;
            self.epoch = epoch;
        }
    }

    /// What the site held at the peak of `epoch`.
    fn at_peak(&self, epoch: u64) -> (u64, u64) {
        if self.epoch == epoch {
            (self.peak_bytes, self.peak_blocks)
        } else {
            (self.live_bytes, self.live_blocks)
        }
    }
}

/// What one stack did in one shard, as snapshots read it (see [`copy_sites_into`]). Blocks
/// are in 1/`BLOCK_UNIT`ths while sampling. The peak figures are 0 unless the breakdown is
/// kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SiteFigures {
    pub(crate) stack: StackId,
    /// Recorded since the totals were reset. What of it is released (freed, reallocated, or
    /// dropped from the table by `clear`) is this minus what the live table holds.
    pub(crate) allocated_bytes: u64,
    pub(crate) allocated_blocks: u64,
    /// Held when the peak was reached.
    pub(crate) peak_bytes: u64,
    pub(crate) peak_blocks: u64,
    pub(crate) temporary_bytes: u64,
    pub(crate) temporary_blocks: u64,
    /// Held now (kept with the peak breakdown only).
    pub(crate) live_blocks: u64,
    /// See `Site::lifetime`; meaningful when [`SitesCopy::lifetimes`] is.
    pub(crate) lifetime: u128,
}

/// Power-of-two buckets of requested sizes: bucket `i > 0` counts sizes from `2^(i-1)` to
/// `2^i - 1`, bucket 0 zero-sized requests.
pub(crate) const SIZE_BUCKETS: usize = 65;

#[inline(always)]
pub(crate) fn size_bucket(size: usize) -> usize {
    (usize::BITS - size.leading_zeros()) as usize
}

/// A live block as the table stores it: 12 bytes (with hashbrown's control byte, 13 a
/// bucket), four-byte aligned. Its key is the block's address: an address fits in 48 bits on
/// the 64-bit targets' user space; one that does not goes by an alias (see [`Shard::far`]).
/// A 24-bit size and a 24-bit stack id; a block of [`BIG`] bytes or more, a stack id of
/// [`SIDE`] or more, or a block allocated inside a measurement scope has its record in
/// `Shard::side`, and [`SIDE`] in its stack field.
#[derive(Clone, Copy, Debug)]
#[repr(C, packed(4))]
struct Slot {
    /// The key (48 bits), then the size's low 16 bits.
    key_and_size: u64,
    /// The size's high 8 bits, then the stack field (24 bits).
    rest: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 12 && std::mem::align_of::<Slot>() == 4);

/// The largest key: addresses above it are keyed by an alias.
const NEAR: u64 = (1 << 48) - 1;
/// The sizes a slot holds are below this.
const BIG: usize = 1 << 24;
/// In the stack field: the record is in `Shard::side`. Stack ids a slot holds are below it.
const SIDE: u32 = (1 << 24) - 1;
/// Aliases for addresses above [`NEAR`]: the first page's addresses, which no block has.
const FAR_ALIASES: usize = 4096;

/// Whether the block at `address` is keyed by an alias: above [`NEAR`], or (never for a real
/// block) below [`FAR_ALIASES`], where the aliases are. One compare.
#[inline(always)]
fn keyed_by_alias(address: usize) -> bool {
    (address as u64).wrapping_sub(FAR_ALIASES as u64) > NEAR - FAR_ALIASES as u64
}

impl Slot {
    /// The slot of a block whose record fits in it (see [`Slot::fits`]).
    #[inline(always)]
    fn new(key: usize, size: usize, stack: StackId) -> Slot {
        Slot {
            key_and_size: key as u64 | ((size as u64) << 48),
            rest: ((size >> 16) as u32) | (stack << 8),
        }
    }

    /// Whether a block of `size` bytes and stack `stack`, outside any scope, fits in a slot.
    #[inline(always)]
    fn fits(size: usize, stack: StackId) -> bool {
        size < BIG && stack < SIDE
    }

    /// The slot of a block whose record is in `Shard::side`.
    fn side(key: usize) -> Slot {
        Slot {
            key_and_size: key as u64,
            rest: SIDE << 8,
        }
    }

    #[inline(always)]
    fn key(&self) -> usize {
        (self.key_and_size & NEAR) as usize
    }

    #[inline(always)]
    fn is(&self, key: usize) -> bool {
        self.key_and_size & NEAR == key as u64
    }

    #[inline(always)]
    fn size(&self) -> usize {
        (self.key_and_size >> 48) as usize | ((self.rest & 0xff) as usize) << 16
    }

    #[inline(always)]
    fn stack(&self) -> StackId {
        self.rest >> 8
    }

    /// Whether the record is in `Shard::side`.
    #[inline(always)]
    fn in_side(&self) -> bool {
        self.rest >= SIDE << 8
    }
}

#[derive(Debug)]
struct Shard {
    live: HashTable<Slot, MetaAlloc>,
    /// The records of live blocks that do not fit in a slot, by key (in `Entry::address`):
    /// blocks allocated inside a measurement scope, of [`BIG`] bytes or more, or of stacks
    /// with ids of [`SIDE`] or more.
    side: HashTable<Entry, MetaAlloc>,
    /// Alias → address, for live blocks at addresses above [`NEAR`] (none on the usual
    /// kernels' user space): an alias below [`FAR_ALIASES`] is their key.
    far: HashTable<(usize, usize), MetaAlloc>,
    /// Per stack, what this shard recorded, holds, held at the peak.
    sites: HashTable<Site, MetaAlloc>,
    /// Blocks recorded per size bucket (see [`size_bucket`]): their sum is the shard's
    /// allocated blocks.
    sizes: [u64; SIZE_BUCKETS],
    /// Bytes recorded in this shard since the totals were last reset.
    allocated_bytes: u64,
    /// Bytes (weights, when sampling) of the records in `live`: what this shard counts for in
    /// `current`. The child of a `fork` sets `current` to their sum (a thread that does not
    /// exist there may have been between a `realloc`'s removal and its insertion).
    held: u64,
}

/// A shard's live table (and its table of records aside) is given back once it holds fewer
/// records than 1/`SHRINK_BELOW` of its buckets, and only from `SHRINK_FLOOR` buckets up (small
/// tables are not worth the rehash; see [`mostly_empty`]).
const SHRINK_BELOW: usize = 16;
const SHRINK_FLOOR: usize = 1 << 9;

impl Shard {
    /// After a removal: a mostly empty live table (after a peak, or a phase of the program that
    /// freed what it built) moves to one sized for twice what it holds. Hysteresis: the new
    /// table is about a quarter full, hashbrown grows it again at 7/8 (3.5 times as many
    /// records), and it shrinks again only below 1/16 of its buckets (a quarter as many), so
    /// no run of frees and allocations can make it grow and shrink in turn; the rehash of `n`
    /// records is paid for by the more than `10 n` removals since the table last held 7/8.
    #[inline(always)]
    fn maybe_shrink(&mut self) {
        if mostly_empty(&self.live) {
            shrink(&mut self.live, rehash);
        }
    }

    /// [`Shard::maybe_shrink`] for the records aside, after one of them is removed: the table
    /// of a measurement's blocks (or of blocks of 16 MiB and more) gives its memory back once
    /// they are freed, on the same terms.
    #[inline(always)]
    fn maybe_shrink_side(&mut self) {
        if mostly_empty(&self.side) {
            shrink(&mut self.side, |e| address_hash(e.address));
        }
    }

    const fn new() -> Self {
        Shard {
            live: HashTable::new_in(MetaAlloc),
            side: HashTable::new_in(MetaAlloc),
            far: HashTable::new_in(MetaAlloc),
            sites: HashTable::new_in(MetaAlloc),
            sizes: [0; SIZE_BUCKETS],
            allocated_bytes: 0,
            held: 0,
        }
    }

    /// The slot of a block keyed by `key` (its address, or the alias of one), its record
    /// stored in `side` when it does not fit; `Err`, storing nothing, when `side` cannot grow.
    /// `h`: the key's hash.
    #[inline(always)]
    fn pack(
        &mut self,
        key: usize,
        size: usize,
        stack: StackId,
        scope: u32,
        h: u64,
    ) -> Result<Slot, ()> {
        if scope == 0 && Slot::fits(size, stack) {
            Ok(Slot::new(key, size, stack))
        } else {
            self.pack_aside(key, size, stack, scope, h)
        }
    }

    #[cold]
    #[inline(never)]
    fn pack_aside(
        &mut self,
        key: usize,
        size: usize,
        stack: StackId,
        scope: u32,
        h: u64,
    ) -> Result<Slot, ()> {
        #[cfg(test)]
        if tests::REFUSE_ASIDE.load(Relaxed) {
            return Err(());
        }
        self.side
            .try_reserve(1, |e| address_hash(e.address))
            .map_err(|_| ())?;
        let record = Entry {
            address: key,
            size,
            stack,
            scope,
        };
        self.side
            .insert_unique(h, record, |e| address_hash(e.address));
        Ok(Slot::side(key))
    }

    /// The whole record of `slot`; `h`: its key's hash.
    fn unpack(&self, slot: &Slot, h: u64) -> Entry {
        let key = slot.key();
        let mut entry = if slot.in_side() {
            self.side
                .find(h, |e| e.address == key)
                .copied()
                .unwrap_or(Entry {
                    address: key,
                    size: 0,
                    stack: SIDE,
                    scope: 0,
                })
        } else {
            Entry {
                address: key,
                size: slot.size(),
                stack: slot.stack(),
                scope: 0,
            }
        };
        if key < FAR_ALIASES {
            if let Some(&(_, address)) = self.far.find(h, |&(alias, _)| alias == key) {
                entry.address = address;
            }
        }
        entry
    }

    /// The whole record of `slot`, whose record in `side` is removed (not its alias: the
    /// caller decides, see [`Shard::forget_alias`]).
    #[cold]
    #[inline(never)]
    fn unpack_and_forget(&mut self, slot: &Slot, h: u64) -> Entry {
        let entry = self.unpack(slot, h);
        let key = slot.key();
        if let Ok(e) = self.side.find_entry(h, |e| e.address == key) {
            e.remove();
        }
        entry
    }

    /// The key of a block at `address`, for which [`keyed_by_alias`] holds, and the key's hash:
    /// its alias, made when `make` and it has none. `None` when it has none, or no alias is
    /// free (4095 such blocks live in this shard), or the alias table cannot grow.
    #[cold]
    #[inline(never)]
    fn alias(&mut self, address: usize, make: bool) -> Option<(usize, u64)> {
        let known = self.far.iter().find(|&&(_, a)| a == address);
        if let Some(&(alias, _)) = known {
            return Some((alias, address_hash(alias)));
        }
        if !make || self.far.len() >= FAR_ALIASES - 1 {
            return None;
        }
        self.far.try_reserve(1, |&(k, _)| address_hash(k)).ok()?;
        let alias = (1..FAR_ALIASES)
            .find(|&k| self.far.find(address_hash(k), |&(a, _)| a == k).is_none())?;
        let h = address_hash(alias);
        self.far
            .insert_unique(h, (alias, address), |&(k, _)| address_hash(k));
        Some((alias, h))
    }

    /// The block at `address` is gone: its alias, if it has one, is free again.
    #[cold]
    #[inline(never)]
    fn forget_alias(&mut self, address: usize) {
        let Some(&(alias, _)) = self.far.iter().find(|&&(_, a)| a == address) else {
            return;
        };
        if let Ok(e) = self
            .far
            .find_entry(address_hash(alias), |&(k, _)| k == alias)
        {
            e.remove();
        }
    }

    /// Finds the site of `stack`, then runs `counter` (the operation's change of `current`),
    /// then, with `peak` (the breakdown is kept), brings the site's peak figures to the peak
    /// word as it is after that change, and applies `change` (with `counter`'s answer). The
    /// order matters for the peak figures (see the module's notes); the site is looked up first
    /// so that its loads are not held up behind the counter's locked instruction. A new site
    /// that the table has no room for is counted in `counters::lost_release` (the totals become
    /// unknown) and `change` is not applied.
    #[inline(always)]
    fn with_site<R>(
        &mut self,
        stack: StackId,
        peak: bool,
        counter: impl FnOnce() -> R,
        change: impl FnOnce(&mut Site, R),
    ) {
        let h = stack_hash(stack);
        if let Some(site) = self.sites.find_mut(h, |r| r.stack == stack) {
            let r = counter();
            if peak {
                site.sync(counters::epoch());
            }
            change(site, r);
            return;
        }
        let r = counter();
        self.new_site(stack, h, move |site| change(site, r));
    }

    #[cold]
    #[inline(never)]
    fn new_site(&mut self, stack: StackId, h: u64, change: impl FnOnce(&mut Site)) {
        if self.sites.try_reserve(1, |r| stack_hash(r.stack)).is_err() {
            counters::lost_release();
            return;
        }
        let mut site = Site {
            stack,
            allocated_bytes: 0,
            allocated_blocks: 0,
            live_bytes: 0,
            live_blocks: 0,
            peak_bytes: 0,
            peak_blocks: 0,
            // New: it held nothing at the current peak.
            epoch: counters::epoch(),
            temporary_blocks: 0,
            temporary_bytes: 0,
            lifetime: 0,
        };
        change(&mut site);
        self.sites.insert_unique(h, site, |r| stack_hash(r.stack));
    }

    /// Applies `add` to the site of each record in `live` (the shard's records, taken out of
    /// it for the loop), with the record's weight.
    fn add_to_sites(
        &mut self,
        live: &HashTable<Slot, MetaAlloc>,
        add: impl Fn(&mut Site, sample::Weight),
    ) {
        for slot in live.iter() {
            let entry = self.unpack(slot, address_hash(slot.key()));
            let weight = sample::weight(entry.size);
            self.with_site(entry.stack, false, || (), |site, ()| add(site, weight));
        }
    }

    /// One block of `stack` enters the table, in place of `credit` bytes of a reallocated
    /// block (see [`counters::replaced`]): `current` changes, then (when the peak breakdown is
    /// kept) the site.
    #[inline(always)]
    fn add_block(&mut self, stack: StackId, weight: sample::Weight, credit: usize) {
        if !peak_kept() {
            let _ = counters::replaced(credit, weight.bytes as usize);
        } else {
            self.with_site(
                stack,
                true,
                || counters::replaced(credit, weight.bytes as usize),
                |site, raised| {
                    site.live_bytes += weight.bytes;
                    site.live_blocks += weight.blocks;
                    if lifetimes_wanted() {
                        site.lifetime = site.lifetime.wrapping_sub(counters::ticks() as u128);
                    }
                    if raised {
                        // This block made a new peak, which holds it.
                        site.peak_bytes = site.live_bytes;
                        site.peak_blocks = site.live_blocks;
                    }
                },
            );
        }
        if credit > weight.bytes as usize {
            counters::decreased();
        }
    }

    /// One block of `stack` leaves the table (freed, reallocated, replaced, cleared); with
    /// `count`, its bytes leave `current` first. Only the breakdown needs its site.
    #[inline(always)]
    fn release(&mut self, stack: StackId, weight: sample::Weight, count: bool) {
        let subtract = || {
            if count {
                counters::subtract(weight.bytes as usize);
            }
        };
        if !peak_kept() {
            subtract();
        } else {
            self.with_site(stack, true, subtract, |site, ()| {
                site.live_bytes = site.live_bytes.saturating_sub(weight.bytes);
                site.live_blocks = site.live_blocks.saturating_sub(weight.blocks);
                if lifetimes_wanted() {
                    site.lifetime = site.lifetime.wrapping_add(counters::ticks() as u128);
                }
            });
        }
        if count {
            counters::decreased();
        }
    }

    /// Counts a recorded block in this thread's ledger, or, without one, in this shard's site.
    #[inline(always)]
    fn count_allocated(
        &mut self,
        stack: StackId,
        weight: sample::Weight,
        totals: Option<ledger::Counting>,
    ) {
        match totals {
            Some(counting) => counting.add(weight.bytes, weight.blocks),
            None => self.add_totals(
                stack,
                ledger::Totals {
                    bytes: weight.bytes,
                    blocks: weight.blocks,
                    ..Default::default()
                },
            ),
        }
    }

    /// Counts a temporary allocation, freed by the thread whose last capture was `stack`: in
    /// that thread's ledger slot (hot), with the reentrancy guard held so that a signal
    /// handler cannot give the slot to another stack in the middle; in this shard's site when
    /// the slot does not count for `stack` or the thread is inside the tracer.
    #[inline(always)]
    fn count_temporary(&mut self, stack: StackId, weight: sample::Weight) {
        if let Some(_quiet) = crate::guard::Guard::enter() {
            if let Some(slot) = ledger::slot_of(stack) {
                slot.add_temporary(weight.bytes, weight.blocks);
                return;
            }
        }
        self.add_totals(
            stack,
            ledger::Totals {
                temporary_bytes: weight.bytes,
                temporary_blocks: weight.blocks,
                ..Default::default()
            },
        );
    }

    /// Adds totals to the site of `stack` in this shard: the stack's [`home`] for a ledger
    /// slot's, the block's shard for a count made without a ledger.
    #[cold]
    #[inline(never)]
    fn add_totals(&mut self, stack: StackId, totals: ledger::Totals) {
        self.with_site(
            stack,
            false,
            || (),
            |site, ()| {
                site.allocated_bytes += totals.bytes;
                site.allocated_blocks += totals.blocks;
                site.temporary_bytes += totals.temporary_bytes;
                site.temporary_blocks += totals.temporary_blocks;
            },
        );
    }
}

/// The shard whose sites hold a stack's allocation totals.
#[inline]
fn home(stack: StackId) -> &'static Padded<SpinLock<Shard>> {
    &SHARDS_TABLE[(stack_hash(stack) >> (64 - SHARD_BITS)) as usize]
}

/// Moves the totals of `slot` (of `ledger`, this thread's) to its stack's site, and gives the
/// slot to `next` (renewing the ledger first if a reset made it old). Under the home shard's
/// lock of the slot's stack (or of `next` when the slot is empty), so that a snapshot, which
/// holds every lock, sees the totals in one place or the other. `Err(Busy)`, changing
/// nothing, when this thread holds that lock (a signal handler that interrupted the tracer).
#[cold]
#[inline(never)]
pub(crate) fn flush_ledger_slot(
    ledger: &ledger::Ledger,
    slot: &ledger::Slot,
    next: Option<StackId>,
) -> Result<(), Busy> {
    let Some(stack) = slot.stack().or(next) else {
        return Ok(());
    };
    let mut shard = home(stack).0.lock_unless_mine().ok_or(Busy)?;
    if !ledger.is_current() {
        ledger::renew(ledger);
    } else if let Some(old) = slot.stack() {
        let totals = slot.totals();
        if !totals.is_zero() {
            shard.add_totals(old, totals);
        }
    }
    slot.reassign(next);
    Ok(())
}

/// Whether the per-stack peak breakdown is kept unless the program or the environment says.
pub(crate) const PEAK_BREAKDOWN_DEFAULT: bool = false;
/// Whether the per-stack peak breakdown is wanted (see [`set_detail`]); set at the first
/// allocation from the `Tracer` and the environment.
static PEAK_WANTED: AtomicBool = AtomicBool::new(PEAK_BREAKDOWN_DEFAULT);
/// Whether it is kept now: wanted, and tracing every allocation. Changed only with every shard
/// lock held (or before anything is recorded), so an operation sees one value from its lock to
/// its unlock.
static PEAK_KEPT: AtomicBool = AtomicBool::new(PEAK_BREAKDOWN_DEFAULT);

/// Whether block lifetimes are kept (with the breakdown): set once, at the first allocation.
static LIFETIMES_WANTED: AtomicBool = AtomicBool::new(false);
/// Whether every site's `lifetime` covers all its blocks since the totals were last reset:
/// they were kept all that time. Changed with every shard lock held, as `PEAK_KEPT`.
static LIFETIMES: AtomicBool = AtomicBool::new(false);

/// The settings at the first allocation, before any record exists.
pub(crate) fn init_detail(peak: bool, lifetimes: bool) {
    PEAK_WANTED.store(peak, Relaxed);
    LIFETIMES_WANTED.store(lifetimes && counters::HAS_TICKS, Relaxed);
    let kept = peak && sample::mean() == 0;
    PEAK_KEPT.store(kept, Relaxed);
    LIFETIMES.store(kept && lifetimes_wanted(), Relaxed);
}

#[inline(always)]
fn lifetimes_wanted() -> bool {
    LIFETIMES_WANTED.load(Relaxed)
}

#[inline(always)]
fn peak_kept() -> bool {
    PEAK_KEPT.load(Relaxed)
}

/// Whether the tables keep what each stack holds, and held at the peak: the answer of
/// `peak_snapshot`.
pub(crate) fn peak_breakdown() -> bool {
    peak_kept()
}

pub(crate) fn peak_breakdown_wanted() -> bool {
    PEAK_WANTED.load(Relaxed)
}

/// Keeps the per-stack peak breakdown or stops keeping it. Turning it on with tracing running
/// counts what each stack holds from the table and starts a new peak from what is live now
/// (what was live at the earlier peak was not kept). Returns whether it is kept now (never
/// while sampling).
pub(crate) fn set_detail(peak: bool) -> bool {
    PEAK_WANTED.store(peak, Relaxed);
    let mut shards: [SpinGuard<'static, Shard>; SHARDS] =
        std::array::from_fn(|i| lock(&SHARDS_TABLE[i]));
    let kept = peak && sample::mean() == 0;
    if kept && !peak_kept() {
        for shard in &mut shards {
            let shard = &mut **shard;
            for site in shard.sites.iter_mut() {
                site.live_bytes = 0;
                site.live_blocks = 0;
            }
            let live = std::mem::replace(&mut shard.live, HashTable::new_in(MetaAlloc));
            shard.add_to_sites(&live, |site, weight| {
                site.live_bytes += weight.bytes;
                site.live_blocks += weight.blocks;
            });
            shard.live = live;
        }
        counters::reset_peak();
        // Blocks allocated, and blocks freed, while it was off have no times.
        LIFETIMES.store(false, Relaxed);
    }
    PEAK_KEPT.store(kept, Relaxed);
    drop(shards);
    kept
}

/// Whether `table` holds fewer records than 1/[`SHRINK_BELOW`] of its buckets, from
/// [`SHRINK_FLOOR`] buckets up. Buckets, not `capacity()`: a removal often leaves a tombstone,
/// which takes from the capacity what it gives to nothing.
#[inline(always)]
fn mostly_empty<T>(table: &HashTable<T, MetaAlloc>) -> bool {
    let buckets = table.num_buckets();
    buckets >= SHRINK_FLOOR && table.len() < buckets / SHRINK_BELOW
}

/// Moves the records of `table` to a table sized for twice their number; keeps the old one
/// when the new one cannot be had (no memory, or this thread is inside `System`).
#[cold]
#[inline(never)]
fn shrink<T>(table: &mut HashTable<T, MetaAlloc>, hash: impl Fn(&T) -> u64) {
    let mut smaller = HashTable::new_in(MetaAlloc);
    if smaller.try_reserve(table.len() * 2, &hash).is_err() {
        return;
    }
    if smaller.num_buckets() >= table.num_buckets() {
        return;
    }
    for record in table.drain() {
        smaller.insert_unique(hash(&record), record, &hash);
    }
    // The old table's memory goes back to `System` here, under the lock (never to us).
    *table = smaller;
}

#[inline]
fn stack_hash(stack: StackId) -> u64 {
    (stack as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(26)
}

static SHARDS_TABLE: [Padded<SpinLock<Shard>>; SHARDS] =
    [const { Padded(SpinLock::new(Shard::new())) }; SHARDS];

#[inline]
fn spread(address: usize) -> u64 {
    (address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The shard of `address`, locked, and the address's hash within it (cold paths).
#[inline]
fn locate(address: usize) -> (SpinGuard<'static, Shard>, u64) {
    let h = spread(address);
    (lock(&SHARDS_TABLE[shard_of(h)]), inner_hash(h))
}

/// This thread holds the lock that an operation needs: it is a signal handler that interrupted
/// the tracer (or a `fork` in progress). The operation must not wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Busy;

/// [`locate`] for the hot path: `Err(Busy)` instead of waiting for this thread itself.
#[inline(always)]
fn locate_unless_mine(address: usize) -> Result<(SpinGuard<'static, Shard>, u64), Busy> {
    let h = spread(address);
    let shard = SHARDS_TABLE[shard_of(h)].0.lock_unless_mine().ok_or(Busy)?;
    Ok((shard, inner_hash(h)))
}

/// The shares of the address hash's top bits that the shards get, by shard index modulo 8:
/// unequal on purpose. A Swiss table doubles when it is 7/8 full, so 64 equal shards would all
/// double at the same live-set size, and just past it every table is half its load (27 B a
/// block with 13-byte buckets: 1 M live blocks is such a size). Shares spaced by about 2^(1/8)
/// make eight groups of shards double at eight different sizes, so the tables cost between
/// 19.5 and 23.2 B a block at any live-set size from 100 k to 100 M blocks, against 14.9 to
/// 29.7 B with equal shares (a model of hashbrown's growth; the mean over sizes is the same,
/// 21.4 B). The shares sum to 64, times eight groups: the 512 values of the hash's top 9 bits,
/// a table of eight cache lines.
const SHARES: [u16; 8] = [6, 6, 7, 7, 8, 9, 10, 11];
const SHARE_BITS: u32 = 9;

/// Top `SHARE_BITS` bits of an address hash → its shard.
static SHARD_OF: [u8; 1 << SHARE_BITS] = {
    let mut table = [0u8; 1 << SHARE_BITS];
    let (mut shard, mut at) = (0, 0);
    while shard < SHARDS {
        let mut n = 0;
        while n < SHARES[shard % SHARES.len()] {
            table[at] = shard as u8;
            at += 1;
            n += 1;
        }
        shard += 1;
    }
    assert!(at == table.len());
    table
};

#[inline(always)]
fn shard_of(h: u64) -> usize {
    SHARD_OF[(h >> (64 - SHARE_BITS)) as usize] as usize
}

#[inline]
fn inner_hash(h: u64) -> u64 {
    // The top SHARE_BITS pick the shard; the table's bucket index (low bits) comes from bit 34
    // up and its tag (top 7 bits) from bits 27 to 33, so shard and bucket use independent bits
    // up to 2^21 buckets a shard.
    h.rotate_left(30)
}

#[inline]
fn address_hash(address: usize) -> u64 {
    inner_hash(spread(address))
}

#[inline]
fn rehash(s: &Slot) -> u64 {
    address_hash(s.key())
}

/// Whether ending the record in `slot` would need the scope registry's lock while this thread
/// holds it (a signal handler inside the scopes' bookkeeping): the record is kept aside, as
/// every record of a scope is, and belongs to one. `insert` and `remove` then refuse.
#[inline(always)]
fn waits_on_own_registry(
    side: &HashTable<Entry, MetaAlloc>,
    slot: &Slot,
    h: u64,
    key: usize,
) -> bool {
    slot.in_side()
        && crate::scope::registry_is_mine()
        && side
            .find(h, |e| e.address == key)
            .is_some_and(|e| e.scope != 0)
}

/// Records a live block. Returns `Ok(Some(stale))` when it replaced a record whose free was
/// never seen; `Err`, recording nothing, when the table could not grow or this thread holds the
/// shard's lock already, or the scope registry's while the stale record belongs to a scope (a
/// signal handler), with such a stale record when it was removed all the same (its scope must
/// still hear of its end).
///
/// The block's weight, and whether it is marked as possibly recorded for sampling's frees, are
/// decided here under the shard lock, with the sampling mean in force: a switch of the mean
/// happens with every shard lock held (see [`clear`]), so a record's weight at removal is the
/// one it was added with.
#[inline]
pub(crate) fn insert(
    address: usize,
    size: usize,
    stack: StackId,
    scope: u32,
    credit: usize,
    totals: Option<ledger::Counting>,
) -> Result<Option<Entry>, Option<Entry>> {
    let (mut shard, h) = locate_unless_mine(address).map_err(|_| None)?;
    let shard = &mut *shard;
    // Room first (a no-op unless the table is full), so that one probe both looks for a stale
    // record and finds the free bucket, and growth failure is an error rather than an abort.
    if shard.live.try_reserve(1, rehash).is_err() {
        return Err(None);
    }
    let (key, h) = if keyed_by_alias(address) {
        shard.alias(address, true).ok_or(None)?
    } else {
        (address, h)
    };
    let weight = sample::weight(size);
    let stale = match shard.live.entry(h, |s| s.is(key), rehash) {
        hashbrown::hash_table::Entry::Occupied(occupied) => {
            let stale = *occupied.get();
            // The stale record's scope hears of its end (`scope::freed`) after the insert,
            // under the scope registry's lock: a signal handler that interrupted this thread
            // inside the scopes' bookkeeping records nothing instead, as `remove` refuses.
            if waits_on_own_registry(&shard.side, &stale, h, key) {
                return Err(None);
            }
            Some(stale)
        }
        hashbrown::hash_table::Entry::Vacant(vacant) if scope == 0 && Slot::fits(size, stack) => {
            vacant.insert(Slot::new(key, size, stack));
            None
        }
        hashbrown::hash_table::Entry::Vacant(_) => {
            // A record aside (blocks of 16 MiB or more, stacks past the 16,777,214th, blocks
            // made inside a measurement scope): `pack` needs the whole shard, so the bucket is
            // looked up again.
            let Ok(slot) = shard.pack(key, size, stack, scope, h) else {
                if keyed_by_alias(address) {
                    shard.forget_alias(address);
                }
                return Err(None);
            };
            shard.live.insert_unique(h, slot, rehash);
            None
        }
    };
    shard.allocated_bytes += weight.bytes;
    shard.held += weight.bytes;
    shard.sizes[size_bucket(size)] += weight.blocks;
    if sample::mean() != 0 {
        sample::mark(address);
    }
    let Some(stale) = stale else {
        shard.add_block(stack, weight, credit);
        shard.count_allocated(stack, weight, totals);
        return Ok(None);
    };
    // A record survived a free we did not see (a race with `stop`); the address is live
    // again, so the old block is gone.
    let old = shard.unpack_and_forget(&stale, h);
    let old_weight = sample::weight(old.size);
    shard.held -= old_weight.bytes;
    if sample::mean() != 0 {
        sample::unmark(address);
    }
    shard.release(old.stack, old_weight, true);
    let Ok(slot) = shard.pack(key, size, stack, scope, h) else {
        if let Ok(e) = shard.live.find_entry(h, |s| s.is(key)) {
            e.remove();
        }
        if keyed_by_alias(address) {
            shard.forget_alias(address);
        }
        shard.allocated_bytes -= weight.bytes;
        shard.held -= weight.bytes;
        shard.sizes[size_bucket(size)] -= weight.blocks;
        if sample::mean() != 0 {
            sample::unmark(address);
        }
        return Err(Some(old));
    };
    if let Some(s) = shard.live.find_mut(h, |s| s.is(key)) {
        *s = slot;
    }
    shard.add_block(stack, weight, credit);
    shard.count_allocated(stack, weight, totals);
    Ok(Some(old))
}

/// Puts back the record of a block whose `realloc` failed (or whose free must wait), taken by
/// [`remove`]`(address, false)`: `current` never saw it go. `false` when it could not be put
/// back (no room, or this thread holds the lock): the caller takes its bytes out of `current`.
pub(crate) fn restore(entry: Entry) -> bool {
    let Ok((mut shard, h)) = locate_unless_mine(entry.address) else {
        return false;
    };
    if shard.live.try_reserve(1, rehash).is_err() {
        return false;
    }
    let (key, h) = if keyed_by_alias(entry.address) {
        let Some(keyed) = shard.alias(entry.address, true) else {
            return false;
        };
        keyed
    } else {
        (entry.address, h)
    };
    let Ok(slot) = shard.pack(key, entry.size, entry.stack, entry.scope, h) else {
        if keyed_by_alias(entry.address) {
            shard.forget_alias(entry.address);
        }
        return false;
    };
    shard.live.insert_unique(h, slot, rehash);
    let weight = sample::weight(entry.size);
    shard.held += weight.bytes;
    // Undoes the removal's release (what is released is derived from what is live).
    if peak_kept() {
        shard.with_site(
            entry.stack,
            true,
            || (),
            |site, ()| {
                site.live_bytes += weight.bytes;
                site.live_blocks += weight.blocks;
                // Its life goes on (the time between removal and now is lost from it).
                if lifetimes_wanted() {
                    site.lifetime = site.lifetime.wrapping_sub(counters::ticks() as u128);
                }
            },
        );
    }
    if sample::mean() != 0 {
        sample::mark(entry.address);
    }
    true
}

/// Removes the record of `address`; returns it with the bytes it counted for in `current`.
/// With `count` false, `current` is left to the caller: a `realloc` subtracts the old block in
/// the same operation that adds the new one (see [`counters::replaced`]). `temporary`: the
/// block is freed by the thread that allocated it, before that thread allocated again.
///
/// `Err(Busy)`, removing nothing, when this thread holds a lock the removal needs: the shard's
/// (a signal handler interrupted this thread inside the table) or, for a block made in a
/// measurement scope, the scope registry's (inside the scopes' bookkeeping), which the caller
/// takes next.
#[inline(always)]
pub(crate) fn remove(
    address: usize,
    count: bool,
    temporary: bool,
) -> Result<Option<(Entry, usize)>, Busy> {
    let (mut guard, h) = locate_unless_mine(address)?;
    let shard = &mut *guard;
    let (key, h) = if keyed_by_alias(address) {
        let Some(keyed) = shard.alias(address, false) else {
            return Ok(None);
        };
        keyed
    } else {
        (address, h)
    };
    let Ok(found) = shard.live.find_entry(h, |s| s.is(key)) else {
        return Ok(None);
    };
    if waits_on_own_registry(&shard.side, found.get(), h, key) {
        return Err(Busy);
    }
    let (slot, _) = found.remove();
    let entry = if slot.in_side() {
        let entry = shard.unpack_and_forget(&slot, h);
        shard.maybe_shrink_side();
        entry
    } else {
        Entry {
            address,
            size: slot.size(),
            stack: slot.stack(),
            scope: 0,
        }
    };
    if keyed_by_alias(address) {
        shard.forget_alias(address);
    }
    let weight = sample::weight(entry.size);
    shard.held -= weight.bytes;
    if sample::mean() != 0 {
        sample::unmark(address);
    }
    shard.release(entry.stack, weight, count);
    shard.maybe_shrink();
    if temporary {
        shard.count_temporary(entry.stack, weight);
    }
    Ok(Some((entry, weight.bytes as usize)))
}

pub(crate) fn get(address: usize) -> Option<Entry> {
    let (mut shard, h) = locate(address);
    let (key, h) = if keyed_by_alias(address) {
        shard.alias(address, false)?
    } else {
        (address, h)
    };
    let slot = shard.live.find(h, |s| s.is(key))?;
    Some(shard.unpack(slot, h))
}

/// Appends every live record to `out`, one shard at a time (no lock is held longer than one
/// shard's copy).
pub(crate) fn copy_into(out: &mut Vec<Entry>) {
    copy_from_shards(
        out,
        |shard| shard.live.len(),
        |shard, out| {
            out.extend(
                shard
                    .live
                    .iter()
                    .map(|slot| shard.unpack(slot, address_hash(slot.key()))),
            )
        },
    );
}

/// Appends every shard's site figures (one record per stack and shard; the caller adds them
/// up by stack) and returns the size histogram, all as of one moment: every shard lock is held
/// for the copy, so the peak figures of all shards belong to the same peak (a peak reached
/// between two shards' copies would mix two). `out` grows only while no lock is held.
/// Also returns the traced peak the figures belong to, when the breakdown is kept.
pub(crate) fn copy_sites_into(out: &mut Vec<SiteFigures>) -> SitesCopy {
    loop {
        // The ledgers' slots in use: an estimate first, exact once every lock is held.
        let used = ledger::used_slots();
        let n: usize = SHARDS_TABLE.iter().map(|s| lock(s).sites.len()).sum();
        out.reserve(n + n / 8 + 64 + used + used / 8);
        let room = out.capacity() - out.len();
        let shards: [SpinGuard<'static, Shard>; SHARDS] =
            std::array::from_fn(|i| lock(&SHARDS_TABLE[i]));
        if shards.iter().map(|s| s.sites.len()).sum::<usize>() + ledger::used_slots() > room {
            continue;
        }
        let epoch = counters::epoch();
        let peak = peak_kept();
        let mut sizes = [0u64; SIZE_BUCKETS];
        for shard in &shards {
            for (total, n) in sizes.iter_mut().zip(shard.sizes.iter()) {
                *total += n;
            }
            out.extend(shard.sites.iter().map(|site| {
                let (peak_bytes, peak_blocks) = if peak { site.at_peak(epoch) } else { (0, 0) };
                SiteFigures {
                    stack: site.stack,
                    allocated_bytes: site.allocated_bytes,
                    allocated_blocks: site.allocated_blocks,
                    peak_bytes,
                    peak_blocks,
                    temporary_bytes: site.temporary_bytes,
                    temporary_blocks: site.temporary_blocks,
                    live_blocks: site.live_blocks,
                    lifetime: site.lifetime,
                }
            }));
        }
        ledger::for_each_current(|ledger| {
            for slot in ledger.slots() {
                let Some(stack) = slot.stack() else { continue };
                let totals = slot.totals();
                if !totals.is_zero() {
                    out.push(SiteFigures {
                        stack,
                        allocated_bytes: totals.bytes,
                        allocated_blocks: totals.blocks,
                        peak_bytes: 0,
                        peak_blocks: 0,
                        temporary_bytes: totals.temporary_bytes,
                        temporary_blocks: totals.temporary_blocks,
                        live_blocks: 0,
                        lifetime: 0,
                    });
                }
            }
        });
        let lifetimes = peak && LIFETIMES.load(Relaxed);
        return SitesCopy {
            sizes,
            peak: peak.then_some(counters::peak_of(epoch)),
            lifetimes: lifetimes.then(counters::ticks),
        };
    }
}

/// What [`copy_sites_into`] read besides the sites.
pub(crate) struct SitesCopy {
    pub(crate) sizes: [u64; SIZE_BUCKETS],
    /// The traced peak the sites' peak figures belong to; `None` when they are not kept.
    pub(crate) peak: Option<u64>,
    /// When the sites' lifetimes cover every block since the totals were reset: the time of
    /// the copy, in [`counters::ticks`], to which live blocks count.
    pub(crate) lifetimes: Option<u64>,
}

/// Runs `f` with every shard lock held: no table operation runs meanwhile (a reset of the
/// peak must not fall between a site's change and the counter's).
pub(crate) fn with_all_locked<R>(f: impl FnOnce() -> R) -> R {
    let shards: [SpinGuard<'static, Shard>; SHARDS] =
        std::array::from_fn(|i| lock(&SHARDS_TABLE[i]));
    let r = f();
    drop(shards);
    r
}

/// Appends `copy(shard)` of every shard to `out`, one shard lock at a time. `out` grows only
/// while no lock is held: growing it frees its old buffer, and a free takes a shard lock
/// (possibly the same one). `len` is how many items `copy` appends.
fn copy_from_shards<T>(
    out: &mut Vec<T>,
    len: impl Fn(&Shard) -> usize,
    copy: impl Fn(&Shard, &mut Vec<T>),
) {
    for shard in &SHARDS_TABLE {
        loop {
            let n = len(&lock(shard));
            // Room for what the shard holds now, and some growth before we lock it again.
            out.reserve(n + n / 8 + 16);
            let shard = lock(shard);
            if len(&shard) <= out.capacity() - out.len() {
                copy(&shard, out);
                break;
            }
        }
    }
}

#[inline(always)]
fn lock(shard: &Padded<SpinLock<Shard>>) -> SpinGuard<'_, Shard> {
    shard.0.lock()
}

/// Empties the table, releasing its memory, and subtracts what it held from `current`; with
/// `reset_totals`, also forgets the allocation totals (else the cleared blocks count as
/// released). `then` runs before any shard is unlocked: every shard lock is held from the first
/// record cleared to the end of `then`, so a switch made there (the sampling mean, the
/// tracer's status) separates the records cleanly: each one in the table afterwards was
/// inserted, and will be removed, under the new setting.
///
/// A thread holds at most one shard lock anywhere else, so taking all 64 in order cannot
/// deadlock; nothing here frees through the global allocator (the tables go to `System`).
pub(crate) fn clear(reset_totals: bool, then: impl FnOnce()) {
    let mut shards: [SpinGuard<'static, Shard>; SHARDS] =
        std::array::from_fn(|i| lock(&SHARDS_TABLE[i]));
    counters::note_clear();
    if reset_totals {
        ledger::new_generation();
    }
    let mut held = 0u64;
    for shard in &mut shards {
        let shard = &mut **shard;
        let live = std::mem::replace(&mut shard.live, HashTable::new_in(MetaAlloc));
        if reset_totals {
            shard.allocated_bytes = 0;
            shard.sites = HashTable::new_in(MetaAlloc);
            shard.sizes = [0; SIZE_BUCKETS];
        } else {
            // The cleared blocks count as released (they are no longer live); the caller
            // resets the peak (in `then`).
            if peak_kept() {
                let epoch = counters::epoch();
                let now = if lifetimes_wanted() {
                    counters::ticks() as u128
                } else {
                    0
                };
                for site in shard.sites.iter_mut() {
                    site.sync(epoch);
                    // The cleared blocks' lives end now.
                    site.lifetime = site
                        .lifetime
                        .wrapping_add(now.wrapping_mul(site.live_blocks as u128));
                    site.live_bytes = 0;
                    site.live_blocks = 0;
                }
            }
        }
        held += shard.held;
        shard.held = 0;
        // Freed under the lock: these go to `System`, never to the tracer.
        drop(live);
        shard.side = HashTable::new_in(MetaAlloc);
        shard.far = HashTable::new_in(MetaAlloc);
    }
    counters::removed(held as usize);
    sample::clear_marks();
    then();
    // The sampling mean may have changed: the breakdown is kept for exact tracing only. The
    // sites hold nothing now, so either way their figures are right.
    let was = peak_kept();
    let kept = peak_breakdown_wanted() && sample::mean() == 0;
    PEAK_KEPT.store(kept, Relaxed);
    if reset_totals {
        LIFETIMES.store(kept && lifetimes_wanted(), Relaxed);
    } else if kept != was {
        LIFETIMES.store(false, Relaxed);
    }
    drop(shards);
}

/// Bytes and blocks recorded since the totals were reset (estimates while sampling), summed
/// over the shards.
pub(crate) fn totals() -> (u64, u64) {
    let (bytes, blocks) = SHARDS_TABLE.iter().fold((0, 0), |(bytes, blocks), shard| {
        let shard = lock(shard);
        (
            bytes + shard.allocated_bytes,
            blocks + shard.sizes.iter().sum::<u64>(),
        )
    });
    if sample::mean() != 0 {
        (
            bytes,
            (blocks + sample::BLOCK_UNIT / 2) / sample::BLOCK_UNIT,
        )
    } else {
        (bytes, blocks)
    }
}

/// `fork`'s prepare handler: takes every shard lock, so that no thread is inside the table
/// when the address space is copied. [`unlock_after_fork`] releases them in both processes.
pub(crate) fn lock_for_fork() {
    for shard in &SHARDS_TABLE {
        shard.0.lock_and_keep();
    }
}

/// Releases what [`lock_for_fork`] took; in the child, also sets `current` to what the table
/// holds (an operation of a thread the child does not have may have been between its two
/// steps).
pub(crate) fn unlock_after_fork(child: bool) {
    for shard in SHARDS_TABLE.iter().rev() {
        // SAFETY: this thread took every shard lock in `lock_for_fork` (the child's only
        // thread is the one that forked), and no guard of them exists.
        unsafe { shard.0.force_unlock() };
    }
    if child {
        let held: u64 = SHARDS_TABLE.iter().map(|shard| lock(shard).held).sum();
        counters::set_current(held as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The table against a `HashMap` model on a random sequence of inserts, removes and
    /// lookups (the only unit test that touches the global table and counters).
    /// Heap-like addresses (16-aligned, consecutive) spread over the shards in the shares
    /// [`SHARES`] gives them, and the shares differ, so the shards' tables double at different
    /// live-set sizes.
    #[test]
    fn addresses_spread_over_the_shards_in_unequal_shares() {
        let n = if cfg!(miri) { 1 << 12 } else { 1 << 20 };
        let mut counts = [0usize; SHARDS];
        for i in 0..n {
            counts[shard_of(spread(0x5555_0000_0000 + 16 * i))] += 1;
        }
        let total: u16 = SHARES.iter().sum();
        for (shard, &count) in counts.iter().enumerate() {
            let share = SHARES[shard % SHARES.len()];
            let expected =
                n as f64 * share as f64 / (total as f64 * (SHARDS / SHARES.len()) as f64);
            let tolerance = if cfg!(miri) { 0.5 } else { 0.05 };
            assert!(
                (count as f64 - expected).abs() <= expected * tolerance,
                "shard {shard}: {count} addresses of {n}, expected about {expected:.0}"
            );
        }
        assert!(SHARES.windows(2).all(|w| w[0] <= w[1]) && SHARES[0] < SHARES[SHARES.len() - 1]);
    }

    #[test]
    fn behaves_like_a_hash_map() {
        clear(true, || {});
        // address → (size, stack, scope); sizes of 16 MiB and more, stack ids from `SIDE` up,
        // scoped blocks and addresses above 2^48 or in the first page take the side tables.
        let mut model: HashMap<usize, (usize, StackId, u32)> = HashMap::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let ops = if cfg!(miri) { 500 } else { 200_000 };
        let base = counters::current();
        let mut inserted = std::collections::HashSet::new();
        for _ in 0..ops {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Few distinct, 16-aligned addresses, so inserts over live ones and misses happen.
            let k = (x >> 20) as usize % 4096;
            let address = match (x >> 33) % 8 {
                0 => (1 << 48) + k * 16,
                1 => usize::MAX - 15 - k * 16,
                2 => 16 * (1 + k % 255),
                _ => 0x10_0000 + k * 16,
            };
            let size = match x % 97 {
                0 => (5usize << 30) + (x >> 50) as usize,
                1 | 2 => BIG - 1 + (x >> 60) as usize,
                _ => 1 + (x >> 40) as usize % 1000,
            };
            let stack = match (x >> 5) % 61 {
                0 => SIDE - 1 + (x >> 62) as StackId,
                1 => (1 << 30) + (x % 7) as StackId,
                _ => (x % 50) as StackId,
            };
            let scope = ((x >> 8) % 3) as u32;
            match x % 4 {
                0 | 1 => {
                    let slot = ledger::prepare(stack);
                    let stale = insert(address, size, stack, scope, 0, slot).expect("room");
                    inserted.insert(stack);
                    let before = model.insert(address, (size, stack, scope));
                    assert_eq!(stale.map(|e| (e.size, e.stack, e.scope)), before);
                }
                2 => {
                    let removed = remove(address, true, false)
                        .expect("not busy")
                        .map(|(e, _)| (e.size, e.stack, e.scope));
                    assert_eq!(removed, model.remove(&address));
                }
                _ => {
                    let got = get(address).map(|e| (e.size, e.stack, e.scope));
                    assert_eq!(got, model.get(&address).copied());
                }
            }
        }
        let held: usize = model.values().map(|v| v.0).sum();
        assert_eq!(counters::current() - base, held);
        // Allocation totals per stack (sites and this thread's ledger) add up to the shards'.
        let mut sites = Vec::new();
        copy_sites_into(&mut sites);
        let allocated: u64 = sites.iter().map(|r| r.allocated_bytes).sum();
        assert_eq!(allocated, totals().0);
        let stacks: std::collections::HashSet<StackId> = sites.iter().map(|r| r.stack).collect();
        assert_eq!(stacks, inserted, "every stack's totals are somewhere");
        let mut copy = Vec::new();
        copy_into(&mut copy);
        assert_eq!(copy.len(), model.len());
        for e in &copy {
            assert_eq!(model.get(&e.address), Some(&(e.size, e.stack, e.scope)));
        }
        let held_in_shards: u64 = SHARDS_TABLE.iter().map(|s| lock(s).held).sum();
        assert_eq!(held_in_shards, held as u64, "the shards' held bytes");
        let aliases: usize = SHARDS_TABLE.iter().map(|s| lock(s).far.len()).sum();
        let aliased = model.keys().filter(|&&a| keyed_by_alias(a)).count();
        assert!(aliased > 0);
        assert_eq!(aliases, aliased, "an alias per live block that needs one");
        clear(false, || {});
        assert_eq!(counters::current(), base);
        assert!(get(0x10_0000).is_none());

        // A reset between a ledger slot's preparation and the insert (a thread that reached
        // the shard lock just after `clear` took it): the block counts in the new totals.
        let stack: StackId = 4242;
        let counting = ledger::prepare(stack);
        clear(true, || {});
        insert(0x20_0000, 100, stack, 0, 0, counting).expect("room");
        let mut sites = Vec::new();
        copy_sites_into(&mut sites);
        let allocated: u64 = sites
            .iter()
            .filter(|r| r.stack == stack)
            .map(|r| r.allocated_bytes)
            .sum();
        assert_eq!(allocated, 100, "counted once, after the reset");
        clear(true, || {});
        assert_eq!(counters::current(), base);

        // A stale record replaced by a block whose record aside cannot be stored: nothing is
        // recorded, and the stale record comes back with the refusal (its scope's books).
        insert(0x30_0000, 64, 7, 3, 0, None).expect("room");
        REFUSE_ASIDE.store(true, Relaxed);
        let refused = insert(0x30_0000, 32, 8, 5, 0, None);
        REFUSE_ASIDE.store(false, Relaxed);
        let stale = refused.expect_err("no room aside");
        assert_eq!(stale.map(|e| (e.size, e.stack, e.scope)), Some((64, 7, 3)));
        assert!(get(0x30_0000).is_none(), "neither record is left");
        assert_eq!(counters::current(), base);
        clear(true, || {});

        // A stale record of a scope, met by an allocation in a signal handler that interrupted
        // the scopes' bookkeeping (this thread holds the registry's lock): nothing changes, and
        // the stale record is there for the next insert or free to hand back.
        insert(0x31_0000, 64, 7, 3, 0, None).expect("room");
        let busy = crate::scope::holding_registry(|| insert(0x31_0000, 32, 8, 0, 0, None));
        assert!(matches!(busy, Err(None)), "{busy:?}");
        assert_eq!(get(0x31_0000).map(|e| (e.size, e.scope)), Some((64, 3)));
        assert_eq!(counters::current(), base + 64);
        let stale = insert(0x31_0000, 32, 8, 0, 0, None).expect("room");
        assert_eq!(stale.map(|e| (e.size, e.stack, e.scope)), Some((64, 7, 3)));
        assert_eq!(get(0x31_0000).map(|e| (e.size, e.scope)), Some((32, 0)));
        clear(true, || {});
    }

    /// Makes every record aside fail to be stored (as when the side table cannot grow).
    pub(super) static REFUSE_ASIDE: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
}
