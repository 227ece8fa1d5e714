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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

// Each on cache lines of its own: `CURRENT` is written by every traced allocation and free, and
// must not drag the peak word (read by every table operation, written when a new peak is
// reached) or the read-mostly statics around it (the tracer's status, the sampling mean) into
// every other core's cache misses.
static CURRENT: Padded<AtomicUsize> = Padded(AtomicUsize::new(0));
static PEAK: Padded<PeakWord> = Padded(PeakWord {
    word: AtomicU64::new(0),
    untimed: AtomicBool::new(true),
    at: AtomicU64::new(0),
});

/// The peak and its generation in one word: `generation << PEAK_BITS | peak bytes`. The word
/// changes exactly when a new peak is reached (the bytes rise) or the peak is reset (the
/// generation rises), so it doubles as the *epoch* of the lazy per-site peak figures in
/// `table.rs`: a site whose recorded epoch is not the current word has not changed since the
/// current peak was reached, so what it holds now is what it held then. It is only changed with
/// a shard lock held (a reset: all of them), so the generation is stable under any one.
struct PeakWord {
    word: AtomicU64,
    /// A new peak was reached and nothing has decreased `current` since: the peak is "now".
    untimed: AtomicBool,
    /// CLOCK_MONOTONIC_COARSE nanoseconds of the first decrease after the last peak.
    at: AtomicU64,
}

/// Bytes in the peak word: 16 TiB; a larger `current` saturates there.
const PEAK_BITS: u32 = 44;
const PEAK_MASK: u64 = (1 << PEAK_BITS) - 1;

static DROPPED: AtomicU64 = AtomicU64::new(0);
/// How many times the table was cleared (`start`, `stop`, `clear_traces`, `set_sampling`): a
/// measurement that sees it change knows its blocks' records went away under it.
static CLEARS: AtomicU64 = AtomicU64::new(0);
static LOST_RELEASES: AtomicU64 = AtomicU64::new(0);
/// CLOCK_MONOTONIC nanoseconds when tracing last started; 0 = not yet.
static STARTED_AT: AtomicU64 = AtomicU64::new(0);
/// [`ticks`] when tracing last started: with [`STARTED_AT`], the base of [`tick_rate`].
static STARTED_TICKS: AtomicU64 = AtomicU64::new(0);

/// Whether [`ticks`] reads a clock here: the CPU's invariant time-stamp counter (x86-64) or
/// the generic timer's virtual count (AArch64), each one instruction, no syscall. Elsewhere
/// (and under Miri) block lifetimes are not measured.
pub(crate) const HAS_TICKS: bool = cfg!(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri)
));

/// A fine clock for block lifetimes, read on the hot path while the peak breakdown is kept:
/// one instruction, no syscall, in ticks of a rate [`tick_rate`] measures. 0 where
/// [`HAS_TICKS`] is false.
#[inline(always)]
pub(crate) fn ticks() -> u64 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `rdtsc` exists on every x86-64 CPU and only reads the counter.
    #[allow(unused_unsafe)]
    return unsafe { core::arch::x86_64::_rdtsc() };
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    {
        let t: u64;
        // SAFETY: CNTVCT_EL0 is readable at EL0 on Linux and macOS; the read has no effects.
        unsafe {
            core::arch::asm!("mrs {}, cntvct_el0", out(reg) t, options(nomem, nostack, preserves_flags))
        };
        return t;
    }
    #[allow(unreachable_code)]
    0
}

/// Ticks of [`ticks`] per nanosecond, measured from the start of tracing to now (at least
/// 2 ms: a snapshot taken sooner waits for the rest); `None` before tracing started or where
/// there is no tick clock.
pub(crate) fn tick_rate() -> Option<f64> {
    let (t0, n0) = (STARTED_TICKS.load(Relaxed), STARTED_AT.load(Relaxed));
    if !HAS_TICKS || n0 == 0 {
        return None;
    }
    loop {
        let n1 = now_nanos();
        let t1 = ticks();
        let elapsed = n1.saturating_sub(n0);
        if elapsed >= 2_000_000 {
            let rate = t1.wrapping_sub(t0) as f64 / elapsed as f64;
            return (rate.is_finite() && rate > 0.0).then_some(rate);
        }
        std::thread::sleep(std::time::Duration::from_nanos(2_000_000 - elapsed));
    }
}

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
    STARTED_TICKS.store(ticks(), Relaxed);
    STARTED_AT.store(now_nanos().max(1), Relaxed);
}

/// Time since tracing started, `None` before.
pub(crate) fn since_start() -> Option<std::time::Duration> {
    let at = STARTED_AT.load(Relaxed);
    (at != 0).then(|| std::time::Duration::from_nanos(now_nanos().saturating_sub(at)))
}

/// A block of `size` bytes recorded, in place of one of `old` bytes (0 unless a `realloc`) in
/// one atomic operation: the old block was live until the new one existed, so the peak is the
/// same as with a subtraction followed by an addition. Returns whether this raised the peak.
/// A decrease (a `realloc` that shrinks) leaves [`decreased`] to the caller.
#[inline]
pub(crate) fn replaced(old: usize, size: usize) -> bool {
    if size >= old {
        let grow = size - old;
        let now = CURRENT.0.fetch_add(grow, Relaxed).wrapping_add(grow);
        raise(now)
    } else {
        subtract(old - size);
        false
    }
}

/// Raises the peak to `now` bytes if it is higher; returns whether it did.
#[inline(always)]
fn raise(now: usize) -> bool {
    let word = PEAK.0.word.load(Relaxed);
    let now = (now as u64).min(PEAK_MASK);
    if now <= word & PEAK_MASK {
        return false;
    }
    // The generation is stable: the caller holds a shard lock, a reset holds them all.
    PEAK.0.word.fetch_max(word & !PEAK_MASK | now, Relaxed);
    if !PEAK.0.untimed.load(Relaxed) {
        PEAK.0.untimed.store(true, Relaxed);
    }
    true
}

/// `current` went down: if it was at a new peak, that peak's time is now. The table calls it
/// once the site is updated, so that the clock read stays out of the window between the
/// change of `current` and the site's read of the peak word.
#[inline(always)]
pub(crate) fn decreased() {
    if PEAK.0.untimed.load(Relaxed) {
        time_peak();
    }
}

#[cold]
#[inline(never)]
fn time_peak() {
    if PEAK.0.untimed.swap(false, Relaxed) {
        PEAK.0.at.store(coarse_nanos(), Relaxed);
    }
}

/// CLOCK_MONOTONIC_COARSE (a vDSO read of the last tick, no syscall), in the same time base
/// as [`now_nanos`] to within a tick.
fn coarse_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on Linux.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts)
    };
    #[cfg(not(target_os = "linux"))]
    return now_nanos();
    #[allow(unreachable_code)]
    ((ts.tv_sec as u64).wrapping_mul(1_000_000_000) + ts.tv_nsec as u64)
}

/// The epoch of the lazy per-site peak figures (see [`PeakWord`]).
#[inline(always)]
pub(crate) fn epoch() -> u64 {
    PEAK.0.word.load(Relaxed)
}

#[inline]
pub(crate) fn removed(size: usize) {
    subtract(size);
    decreased();
}

/// [`removed`] without the peak's timing: the caller calls [`decreased`] after.
///
/// The state just before a decrease may be a peak whose raise is still on its way (another
/// thread added to `current` and has not yet raised the word): the decrease raises it first,
/// so that the word already shows that peak when this thread's site reads it. With two threads
/// this closes the window; with more, a peak still on its way from a third thread while a
/// second one decreased `current` in between can land after the site's read.
#[inline(always)]
pub(crate) fn subtract(size: usize) {
    let _ = raise(CURRENT.0.fetch_sub(size, Relaxed));
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
    (PEAK.0.word.load(Relaxed) & PEAK_MASK) as usize
}

/// The peak bytes of an epoch (see [`epoch`]).
pub(crate) fn peak_of(epoch: u64) -> u64 {
    epoch & PEAK_MASK
}

/// When the peak was reached, as time since tracing started: the moment `current` first went
/// down after it (to within a clock tick, 4 ms on most Linux systems), or now if it has not.
pub(crate) fn peak_since_start() -> Option<std::time::Duration> {
    let start = STARTED_AT.load(Relaxed);
    if start == 0 {
        return None;
    }
    let at = if PEAK.0.untimed.load(Relaxed) {
        now_nanos()
    } else {
        PEAK.0.at.load(Relaxed)
    };
    Some(std::time::Duration::from_nanos(at.saturating_sub(start)))
}

pub(crate) fn dropped_blocks() -> u64 {
    DROPPED.load(Relaxed)
}

/// Sets `current` (in the child of a `fork`, to what the table holds), raising the peak if
/// need be.
pub(crate) fn set_current(bytes: usize) {
    CURRENT.0.store(bytes, Relaxed);
    let _ = raise(bytes);
}

/// Sets the peak to `current`: a new peak generation. Call with every shard lock held (see
/// `table::with_all_locked`), so that no site changes between the two.
pub(crate) fn reset_peak() {
    let word = PEAK.0.word.load(Relaxed);
    let generation = (word >> PEAK_BITS).wrapping_add(1) & ((1 << (64 - PEAK_BITS)) - 1);
    let now = (CURRENT.0.load(Relaxed) as u64).min(PEAK_MASK);
    PEAK.0.word.store(generation << PEAK_BITS | now, Relaxed);
    PEAK.0.untimed.store(true, Relaxed);
}

/// Notes that the table is being cleared (with every shard lock held).
pub(crate) fn note_clear() {
    CLEARS.fetch_add(1, Relaxed);
}

pub(crate) fn clears() -> u64 {
    CLEARS.load(Relaxed)
}

/// Zeroes the dropped count (at `start`); totals live in the table's shards.
pub(crate) fn reset_dropped() {
    DROPPED.store(0, Relaxed);
    LOST_RELEASES.store(0, Relaxed);
}
