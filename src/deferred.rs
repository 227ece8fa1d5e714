//! Frees that could not happen when they were asked for.
//!
//! A signal handler that frees a block while the code it interrupted holds the lock the free
//! needs (a shard of the trace table, the scope registry) cannot wait: the holder is its own
//! thread, frozen until the handler returns. Removing the block's record later, after handing
//! the block back, would be wrong (the address may be another thread's new block by then), so
//! the whole free waits here: the record stays, the block stays allocated, and the next traced
//! free on any thread that can take the locks completes it. `current` and every snapshot stay
//! exact in the meantime: the block is still live, for the allocator too.
//!
//! A fixed array of slots, lock-free (a handler may push while another thread pops): a slot
//! goes EMPTY → WRITING → FULL → TAKING → EMPTY by compare-exchange. When every slot is full,
//! the free is not done at all (the block leaks, and is counted): a hang is worse.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

const SLOTS: usize = 64;
const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;
const TAKING: u8 = 3;

struct Slot {
    state: AtomicU8,
    ptr: AtomicUsize,
    size: AtomicUsize,
    align: AtomicUsize,
}

static QUEUE: [Slot; SLOTS] = [const {
    Slot {
        state: AtomicU8::new(EMPTY),
        ptr: AtomicUsize::new(0),
        size: AtomicUsize::new(0),
        align: AtomicUsize::new(0),
    }
}; SLOTS];

/// Frees waiting in the queue: the one load the traced free pays for it.
static WAITING: AtomicUsize = AtomicUsize::new(0);
/// Frees that found the queue full: their blocks were never freed.
static LEAKED: AtomicU64 = AtomicU64::new(0);
/// Frees that had to wait, since the process started.
static DEFERRED: AtomicU64 = AtomicU64::new(0);

/// A block to free, as `GlobalAlloc::dealloc` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) ptr: usize,
    pub(crate) size: usize,
    pub(crate) align: usize,
}

/// Queues a free; `false` when the queue is full (the caller leaks the block).
pub(crate) fn push(p: Pending) -> bool {
    for slot in &QUEUE {
        if slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            slot.ptr.store(p.ptr, Ordering::Relaxed);
            slot.size.store(p.size, Ordering::Relaxed);
            slot.align.store(p.align, Ordering::Relaxed);
            slot.state.store(FULL, Ordering::Release);
            WAITING.fetch_add(1, Ordering::Release);
            DEFERRED.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }
    LEAKED.fetch_add(1, Ordering::Relaxed);
    false
}

/// Whether frees are waiting.
#[inline(always)]
pub(crate) fn any() -> bool {
    WAITING.load(Ordering::Relaxed) != 0
}

/// Takes one waiting free, if any.
pub(crate) fn pop() -> Option<Pending> {
    for slot in &QUEUE {
        if slot
            .state
            .compare_exchange(FULL, TAKING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            let p = Pending {
                ptr: slot.ptr.load(Ordering::Relaxed),
                size: slot.size.load(Ordering::Relaxed),
                align: slot.align.load(Ordering::Relaxed),
            };
            slot.state.store(EMPTY, Ordering::Release);
            WAITING.fetch_sub(1, Ordering::Relaxed);
            return Some(p);
        }
    }
    None
}

/// Frees that had to wait (for a signal handler's interrupted thread), and frees never done
/// because the queue was full.
#[cfg(test)]
pub(crate) fn counts() -> (u64, u64) {
    (
        DEFERRED.load(Ordering::Relaxed),
        LEAKED.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keeps_every_free_until_full() {
        // The only unit test that touches the queue.
        let (deferred_before, leaked_before) = counts();
        for i in 0..SLOTS {
            assert!(push(Pending {
                ptr: 0x1000 + i * 16,
                size: i,
                align: 8
            }));
        }
        assert!(!push(Pending {
            ptr: 1,
            size: 1,
            align: 1
        }));
        assert!(any());
        let mut seen: Vec<usize> = std::iter::from_fn(pop).map(|p| p.ptr).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..SLOTS).map(|i| 0x1000 + i * 16).collect::<Vec<_>>()
        );
        assert!(!any());
        assert_eq!(
            counts(),
            (deferred_before + SLOTS as u64, leaked_before + 1)
        );
    }
}
