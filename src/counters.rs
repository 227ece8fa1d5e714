//! Process-wide counters: current and peak traced bytes, blocks dropped. (Totals of bytes and
//! blocks allocated are kept per shard in `table.rs`, under the shard lock, at no atomic cost.)
//!
//! A block's bytes are added to `current` while the shard lock of its record is held, and
//! subtracted once its record is gone from the table (under the lock on a free; on a `realloc`,
//! together with the new block's addition, or on their own if the new block is not recorded),
//! so a block's addition always precedes its subtraction and `current` never wraps. The peak is raised with `fetch_max` right after each addition that exceeds it, so it is
//! the exact maximum of `current` over its modification order: the largest number of traced
//! bytes ever live at once.

use crate::meta::Padded;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

// Each on cache lines of its own: `CURRENT` is written by every traced allocation and free, and
// must not drag `PEAK` (read on every allocation, rarely written) or the read-mostly statics
// around it (the tracer's status, the sampling mean) into every other core's cache misses.
static CURRENT: Padded<AtomicUsize> = Padded(AtomicUsize::new(0));
static PEAK: Padded<AtomicUsize> = Padded(AtomicUsize::new(0));
static DROPPED: AtomicU64 = AtomicU64::new(0);
static LOST_RELEASES: AtomicU64 = AtomicU64::new(0);
/// CLOCK_MONOTONIC nanoseconds when tracing last started; 0 = not yet.
static STARTED_AT: AtomicU64 = AtomicU64::new(0);

/// Monotonic clock in nanoseconds (no allocation, callable from the allocator).
pub(crate) fn now_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux and
    // the other Unixes we build for.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Notes that tracing starts now.
pub(crate) fn mark_start() {
    STARTED_AT.store(now_nanos().max(1), Relaxed);
}

/// Time since tracing started, `None` before.
pub(crate) fn since_start() -> Option<std::time::Duration> {
    let at = STARTED_AT.load(Relaxed);
    (at != 0).then(|| std::time::Duration::from_nanos(now_nanos().saturating_sub(at)))
}

/// A block of `size` bytes recorded, in place of one of `old` bytes (0 unless a `realloc`) in
/// one atomic operation: the old block was live until the new one existed, so the peak is the same as
/// with a subtraction followed by an addition.
#[inline]
pub(crate) fn replaced(old: usize, size: usize) {
    if size >= old {
        let grow = size - old;
        let now = CURRENT.0.fetch_add(grow, Relaxed).wrapping_add(grow);
        if now > PEAK.0.load(Relaxed) {
            PEAK.0.fetch_max(now, Relaxed);
        }
    } else {
        CURRENT.0.fetch_sub(old - size, Relaxed);
    }
}

#[inline]
pub(crate) fn removed(size: usize) {
    CURRENT.0.fetch_sub(size, Relaxed);
}

/// A block the tracer could not record (its own memory ran out).
#[cold]
pub(crate) fn dropped() {
    DROPPED.fetch_add(1, Relaxed);
}

/// A freed block whose per-stack allocation total could not be kept (out of memory).
#[cold]
pub(crate) fn lost_release() {
    LOST_RELEASES.fetch_add(1, Relaxed);
}

pub(crate) fn lost_releases() -> u64 {
    LOST_RELEASES.load(Relaxed)
}

pub(crate) fn current() -> usize {
    CURRENT.0.load(Relaxed)
}

pub(crate) fn peak() -> usize {
    PEAK.0.load(Relaxed)
}

pub(crate) fn dropped_blocks() -> u64 {
    DROPPED.load(Relaxed)
}

/// Sets `current` (in the child of a `fork`, to what the table holds), raising the peak if
/// need be.
pub(crate) fn set_current(bytes: usize) {
    CURRENT.0.store(bytes, Relaxed);
    PEAK.0.fetch_max(bytes, Relaxed);
}

pub(crate) fn reset_peak() {
    PEAK.0.store(CURRENT.0.load(Relaxed), Relaxed);
}

/// Zeroes the dropped count (at `start`); totals live in the table's shards.
pub(crate) fn reset_dropped() {
    DROPPED.store(0, Relaxed);
    LOST_RELEASES.store(0, Relaxed);
}
