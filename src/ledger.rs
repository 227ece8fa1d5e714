//! Per-thread allocation totals per stack, so that a free touches no per-stack record.
//!
//! A stack's *released* figures (what it allocated and no longer holds) are not counted when a
//! block is freed: a snapshot derives them as what the stack allocated minus what it holds in
//! the copy of the live table. What a stack allocated is counted here, in the allocating
//! thread's ledger: a small direct-mapped table from stack id to totals, whose slot for the
//! stack just captured is hot in the cache. A slot taken over by another stack first moves its
//! totals to the stack's site in the trace table (`table::flush_ledger_slot`), as does a thread
//! at its exit; a snapshot adds up the sites and every ledger. The same slot counts the stack's
//! temporary allocations (heaptrack's: freed by the allocating thread before it allocated
//! again, so by the thread whose last capture was this stack).
//!
//! Before this, each free looked up the freed block's site in its address's shard (a site per
//! stack *and* shard): a cache miss on most frees of a program with thousands of stacks, and
//! 2.69× → 1.99× `System` on the deep-stack workload when skipped (benches/README.md). With the
//! peak breakdown on, a free still updates the site of its shard (what the stack holds).
//!
//! # Consistency
//! Every write to a ledger happens with some shard lock of the trace table held (the totals of
//! a recorded block are added in `table::insert`'s critical section), and a snapshot reads the
//! ledgers with every shard lock held, so it sees each ledger between two operations. A reset
//! of the totals (`table::clear`, also under every lock) changes the generation; a ledger of an
//! older generation counts for nothing and is zeroed by its owner at its next count (checked
//! again in `insert`'s critical section, so that a block recorded just after a reset counts).
//! The owner's writes on the free path (temporaries) are made with the reentrancy guard held,
//! so a signal handler cannot reassign the slot in the middle of one.
//!
//! Ledgers come from `System` (through [`MetaAlloc`]'s accounting), are never freed, and are
//! reused: a thread takes a free one at its first traced allocation and gives it back at its
//! exit. A thread without one (no memory for it, past its exit, or beyond [`MAX_LEDGERS`]
//! threads at once) counts into the site of the block's shard, in the same critical section.

use crate::meta::{MetaAlloc, Padded};
use crate::stack::StackId;
use allocator_api2::alloc::Allocator;
use std::alloc::Layout;
use std::cell::Cell;
use std::sync::atomic::{
    compiler_fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*,
};

/// Slots per ledger (a power of two): 20 KiB a thread.
pub(crate) const SLOTS: usize = 512;
/// At most this many ledgers (10 MiB): threads beyond it, in a program running more at once,
/// count into the sites (a probe of the block's shard's site table per allocation, as before
/// ledgers), and look for a free ledger again every [`RETRY_EVERY`] allocations.
const MAX_LEDGERS: usize = 512;
const RETRY_EVERY: u32 = 4096;

/// One stack's totals in one thread's ledger. `stack` is the stack id plus one (0: empty).
#[derive(Debug)]
pub(crate) struct Slot {
    stack: AtomicU32,
    bytes: AtomicU64,
    blocks: AtomicU64,
    temporary_bytes: AtomicU64,
    temporary_blocks: AtomicU64,
}

/// What a slot holds, as copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) bytes: u64,
    pub(crate) blocks: u64,
    pub(crate) temporary_bytes: u64,
    pub(crate) temporary_blocks: u64,
}

impl Totals {
    pub(crate) fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// Adds to a counter that only this slot's owner writes, with a shard lock held: a load and a
/// store, no locked instruction.
#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

impl Slot {
    /// The stack this slot counts for.
    pub(crate) fn stack(&self) -> Option<StackId> {
        self.stack.load(Relaxed).checked_sub(1)
    }

    /// Counts one recorded block (its weight). With a shard lock held, by the owner.
    #[inline(always)]
    fn add(&self, bytes: u64, blocks: u64) {
        bump(&self.bytes, bytes);
        bump(&self.blocks, blocks);
    }

    /// Counts a temporary allocation. With a shard lock and the reentrancy guard held, by the
    /// owner.
    #[inline(always)]
    pub(crate) fn add_temporary(&self, bytes: u64, blocks: u64) {
        bump(&self.temporary_bytes, bytes);
        bump(&self.temporary_blocks, blocks);
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals {
            bytes: self.bytes.load(Relaxed),
            blocks: self.blocks.load(Relaxed),
            temporary_bytes: self.temporary_bytes.load(Relaxed),
            temporary_blocks: self.temporary_blocks.load(Relaxed),
        }
    }

    /// Empties the slot and gives it to `stack` (`None`: to nobody). With a shard lock held.
    pub(crate) fn reassign(&self, stack: Option<StackId>) {
        for counter in [
            &self.bytes,
            &self.blocks,
            &self.temporary_bytes,
            &self.temporary_blocks,
        ] {
            counter.store(0, Relaxed);
        }
        self.stack.store(stack.map_or(0, |s| s + 1), Relaxed);
    }
}

/// One thread's totals. All zeroes is a valid, empty ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The generation its totals belong to: read by its owner at every allocation, so on a
    /// cache line of its own, away from `in_use`, which threads looking for a ledger read.
    generation: Padded<AtomicU64>,
    in_use: AtomicBool,
    next: AtomicPtr<Ledger>,
    slots: [Slot; SLOTS],
}

impl Ledger {
    /// Whether its totals count (they belong to the current generation). With a shard lock
    /// held.
    pub(crate) fn is_current(&self) -> bool {
        self.generation.0.load(Relaxed) == GENERATION.load(Relaxed)
    }

    pub(crate) fn slots(&self) -> &[Slot; SLOTS] {
        &self.slots
    }
}

/// Changed (with every shard lock held) when the totals are reset. Starts at 1, so that a
/// zeroed ledger (generation 0) counts for nothing until its owner takes it over.
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// Every ledger ever made (a list only ever pushed to), and their number, counted before one
/// is made (at most `MAX_LEDGERS`).
static LEDGERS: AtomicPtr<Ledger> = AtomicPtr::new(std::ptr::null_mut());
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Forgets every ledger's totals. With every shard lock held.
pub(crate) fn new_generation() {
    GENERATION.fetch_add(1, Relaxed);
}

/// How many slots of current ledgers hold a stack: exact with every shard lock held, an
/// estimate otherwise (owners may be changing them).
pub(crate) fn used_slots() -> usize {
    let mut n = 0;
    for_each_current(|ledger| n += ledger.slots.iter().filter(|s| s.stack().is_some()).count());
    n
}

/// Calls `f` on every ledger whose totals count. With every shard lock held (or for an
/// estimate).
pub(crate) fn for_each_current(mut f: impl FnMut(&Ledger)) {
    let mut p = LEDGERS.load(Acquire);
    // SAFETY: ledgers are never freed, and each was fully initialized (zeroed) before it was
    // published with a release store.
    while let Some(ledger) = unsafe { p.as_ref() } {
        if ledger.is_current() {
            f(ledger);
        }
        p = ledger.next.load(Acquire);
    }
}

const NONE: u8 = 0;
const HAS: u8 = 1;
const GONE: u8 = 2;
/// None was free: look again after `RETRY_EVERY` allocations.
const WAITING: u8 = 3;

thread_local! {
    /// This thread's ledger (null: none yet, or given back). Const-initialized, no destructor.
    static MINE: Cell<*const Ledger> = const { Cell::new(std::ptr::null()) };
    static STATE: Cell<u8> = const { Cell::new(NONE) };
    /// Allocations until a thread in `WAITING` looks for a ledger again.
    static WAIT: Cell<u32> = const { Cell::new(0) };
    /// Gives the ledger back at thread exit (registered at the first use).
    static RETURN: GiveBack = const { GiveBack };
}

struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        let _ = STATE.try_with(|s| s.set(GONE));
        let Ok(p) = MINE.try_with(|m| m.replace(std::ptr::null())) else {
            return;
        };
        // A signal handler that allocates from here on finds no ledger (the same thread: a
        // compiler fence is enough).
        compiler_fence(SeqCst);
        // SAFETY: ledgers are never freed.
        let Some(ledger) = (unsafe { p.as_ref() }) else {
            return;
        };
        for slot in &ledger.slots {
            if slot.stack().is_some() {
                // Busy (a signal handler at thread exit, inside the tracer): the slot keeps its
                // totals, which snapshots still read, and the ledger's next owner moves them.
                let _ = crate::table::flush_ledger_slot(ledger, slot, None);
            }
        }
        ledger.in_use.store(false, Release);
    }
}

/// Where this thread counts an allocation of one stack: see [`prepare`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counting {
    ledger: &'static Ledger,
    slot: &'static Slot,
    stack: StackId,
}

impl Counting {
    /// Counts one recorded block. With a shard lock held (in `table::insert`): if a reset came
    /// since [`prepare`], the ledger is renewed first, so that the block counts in the new
    /// totals.
    #[inline(always)]
    pub(crate) fn add(&self, bytes: u64, blocks: u64) {
        if !self.ledger.is_current() {
            self.renew();
        }
        self.slot.add(bytes, blocks);
    }

    #[cold]
    #[inline(never)]
    fn renew(&self) {
        renew(self.ledger);
        self.slot.reassign(Some(self.stack));
    }
}

/// The slot of `stack` in this thread's ledger, made ready to count for it (the slot's
/// previous stack's totals moved to its site, a ledger of an old generation zeroed). `None`
/// when this thread has no ledger, or holds the lock the move needs (a signal handler): the
/// block is then counted in its shard's site. Call with no lock held.
#[inline(always)]
pub(crate) fn prepare(stack: StackId) -> Option<Counting> {
    let ledger = mine()?;
    let slot = &ledger.slots[index(stack)];
    if slot.stack.load(Relaxed) != stack + 1 || !ledger.is_current() {
        crate::table::flush_ledger_slot(ledger, slot, Some(stack)).ok()?;
    }
    Some(Counting {
        ledger,
        slot,
        stack,
    })
}

/// This thread's slot for `stack` if it counts for it now: where a temporary allocation of
/// the thread's last capture is counted. With a shard lock held.
#[inline(always)]
pub(crate) fn slot_of(stack: StackId) -> Option<&'static Slot> {
    let ledger = MINE.try_with(Cell::get).ok()?;
    // SAFETY: ledgers are never freed.
    let ledger = unsafe { ledger.as_ref() }?;
    let slot = &ledger.slots[index(stack)];
    (slot.stack.load(Relaxed) == stack + 1 && ledger.is_current()).then_some(slot)
}

/// Brings `ledger` to the current generation, zeroing it if it is older. With a shard lock
/// held, by its owner.
pub(crate) fn renew(ledger: &Ledger) {
    if !ledger.is_current() {
        for slot in &ledger.slots {
            slot.reassign(None);
        }
        ledger.generation.0.store(GENERATION.load(Relaxed), Relaxed);
    }
}

#[inline(always)]
fn index(stack: StackId) -> usize {
    ((stack.wrapping_mul(0x9E37_79B9) >> 16) as usize) & (SLOTS - 1)
}

#[inline(always)]
fn mine() -> Option<&'static Ledger> {
    let p = MINE.try_with(Cell::get).ok()?;
    // SAFETY: ledgers are never freed.
    if let Some(ledger) = unsafe { p.as_ref() } {
        return Some(ledger);
    }
    take_one()
}

/// This thread's first traced allocation (or, while none is free, one in `RETRY_EVERY`):
/// takes a free ledger or makes one, and registers its return at thread exit.
#[cold]
#[inline(never)]
fn take_one() -> Option<&'static Ledger> {
    match STATE.try_with(Cell::get).ok()? {
        NONE => {}
        WAITING => {
            let wait = WAIT
                .try_with(|w| w.replace(w.get().saturating_sub(1)))
                .ok()?;
            if wait > 0 {
                return None;
            }
        }
        _ => return None,
    }
    // Registers the destructor (std may allocate for it: this runs inside the tracer's guard,
    // so that allocation is not traced). Refused during teardown.
    RETURN.try_with(|_| ()).ok()?;
    let Some(ledger) = reuse().or_else(make) else {
        let _ = STATE.try_with(|s| s.set(WAITING));
        let _ = WAIT.try_with(|w| w.set(RETRY_EVERY));
        return None;
    };
    MINE.try_with(|m| m.set(ledger)).ok()?;
    let _ = STATE.try_with(|s| s.set(HAS));
    Some(ledger)
}

fn reuse() -> Option<&'static Ledger> {
    let mut p = LEDGERS.load(Acquire);
    // SAFETY: as in `for_each_current`.
    while let Some(ledger) = unsafe { p.as_ref() } {
        // Read first: a failing compare-exchange would take the line from its owner.
        if !ledger.in_use.load(Relaxed)
            && ledger
                .in_use
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_ok()
        {
            return Some(ledger);
        }
        p = ledger.next.load(Acquire);
    }
    None
}

fn make() -> Option<&'static Ledger> {
    if COUNT.fetch_add(1, Relaxed) >= MAX_LEDGERS {
        COUNT.fetch_sub(1, Relaxed);
        return None;
    }
    let layout = Layout::new::<Ledger>();
    let Ok(memory) = MetaAlloc.allocate_zeroed(layout) else {
        COUNT.fetch_sub(1, Relaxed);
        return None;
    };
    let p = memory.as_ptr() as *mut Ledger;
    // SAFETY: all zeroes is a valid `Ledger` (atomics and a null pointer), and the memory is
    // ours, never freed.
    let ledger: &'static Ledger = unsafe { &*p };
    ledger.in_use.store(true, Relaxed);
    let mut head = LEDGERS.load(Relaxed);
    loop {
        ledger.next.store(head, Relaxed);
        match LEDGERS.compare_exchange_weak(head, p, Release, Relaxed) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    Some(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_spread_and_zeroed_ledgers_are_empty() {
        let mut seen = std::collections::HashSet::new();
        for stack in 0..SLOTS as u32 {
            seen.insert(index(stack));
        }
        // Consecutive ids (as the interner hands them out) fill most slots.
        assert!(seen.len() > SLOTS / 2, "{} distinct slots", seen.len());
        let slot = Slot {
            stack: AtomicU32::new(0),
            bytes: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            temporary_bytes: AtomicU64::new(0),
            temporary_blocks: AtomicU64::new(0),
        };
        assert_eq!(slot.stack(), None);
        slot.reassign(Some(7));
        slot.add(100, 1);
        slot.add_temporary(100, 1);
        assert_eq!(slot.stack(), Some(7));
        assert_eq!(
            slot.totals(),
            Totals {
                bytes: 100,
                blocks: 1,
                temporary_bytes: 100,
                temporary_blocks: 1
            }
        );
        slot.reassign(None);
        assert!(slot.totals().is_zero());
        assert_eq!(slot.stack(), None);
    }
}
