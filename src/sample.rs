//! Poisson sampling by bytes, for always-on use (as Go's, jemalloc's and tcmalloc's heap
//! profilers).
//!
//! Each thread counts down the bytes it allocates; when the count runs out, the allocation
//! that crossed it is recorded and a new count is drawn from an exponential distribution of
//! mean `M` bytes. The allocated bytes thus carry a Poisson process of rate 1/M, and a block of
//! `s` bytes is recorded with probability `p = 1 - exp(-s/M)`. Dividing by `p` makes every
//! estimate unbiased: a recorded block stands for `1/p` blocks and `s/p` bytes.
//!
//! An allocation that is not sampled costs a thread-local subtraction and a branch. A free must
//! find out whether its block was recorded without taking a shard lock: a 64 Ki-entry table of
//! counters, indexed by a hash of the address, counts the recorded blocks live at each index;
//! a free whose counter is 0 was certainly not recorded (a nonzero counter may be another
//! block's: the shard is then searched, and misses).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};

/// Default mean distance between samples, in bytes: 512 KiB, as Go, jemalloc and tcmalloc.
pub const DEFAULT_SAMPLE_MEAN: usize = 512 * 1024;

/// The largest mean distance between samples accepted: 1 TiB.
pub(crate) const MAX_SAMPLE_MEAN: usize = 1 << 40;

/// Mean bytes between samples; 0 = exact tracing.
static MEAN: AtomicUsize = AtomicUsize::new(0);
/// Bumped when the mean or the seed changes, so threads draw their next countdown afresh.
static EPOCH: AtomicU32 = AtomicU32::new(1);
static SEED: AtomicU64 = AtomicU64::new(0x05EE_D0F7_ACEA_110C);
/// Threads seeded so far: each thread's generator is the seed mixed with its number, so a
/// given program with a given seed samples the same blocks.
static THREADS: AtomicU64 = AtomicU64::new(0);

/// The generator and the epoch it was seeded in: touched only when a countdown runs out.
#[derive(Clone, Copy)]
struct Slow {
    rng: u64,
    epoch: u32,
}

thread_local! {
    /// Bytes left before this thread's next sample; the only state the fast path touches.
    static COUNTDOWN: Cell<isize> = const { Cell::new(0) };
    static SLOW: Cell<Slow> = const { Cell::new(Slow { rng: 0, epoch: 0 }) };
}

#[inline(always)]
pub(crate) fn mean() -> usize {
    MEAN.load(Relaxed)
}

/// Makes the calling thread draw a fresh countdown (and reseed) at its next allocation.
fn restart_this_thread() {
    let _ = COUNTDOWN.try_with(|c| c.set(0));
    let _ = SLOW.try_with(|s| s.set(Slow { rng: 0, epoch: 0 }));
}

pub(crate) fn set_mean(mean: usize) {
    MEAN.store(mean, Relaxed);
    EPOCH.fetch_add(1, Relaxed);
    // The calling thread starts afresh now (the others when their countdown runs out).
    restart_this_thread();
}

pub(crate) fn set_seed(seed: u64) {
    SEED.store(seed, Relaxed);
    THREADS.store(0, Relaxed);
    EPOCH.fetch_add(1, Relaxed);
    restart_this_thread();
}

/// Counts `size` bytes down; true when this allocation is to be recorded.
#[inline(always)]
pub(crate) fn due(size: usize) -> bool {
    COUNTDOWN
        .try_with(|c| {
            let left = c.get() - size as isize;
            if left > 0 {
                c.set(left);
                return false;
            }
            slow(c, left)
        })
        .unwrap_or(false)
}

#[cold]
#[inline(never)]
fn slow(countdown: &Cell<isize>, left: isize) -> bool {
    let Ok(mut state) = SLOW.try_with(|s| s.get()) else {
        return false;
    };
    let epoch = EPOCH.load(Relaxed);
    let fresh = state.epoch != epoch;
    if fresh {
        let n = THREADS.fetch_add(1, Relaxed);
        state.rng = splitmix(SEED.load(Relaxed) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        state.epoch = epoch;
    }
    let mean = MEAN.load(Relaxed).max(1);
    // A thread (or a new mean) starts a fresh count: this allocation is recorded only if the
    // first count is already smaller than it. Otherwise the count ran out on this allocation.
    let sampled = !fresh || left + draw(&mut state.rng, mean) <= 0;
    countdown.set(draw(&mut state.rng, mean));
    let _ = SLOW.try_with(|s| s.set(state));
    sampled
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) | 1
}

/// An exponential draw of the given mean, in bytes (at least 1).
fn draw(rng: &mut u64, mean: usize) -> isize {
    // xorshift64*
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    let bits = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
    // Uniform in (0, 1].
    let u = (bits as f64 + 1.0) / (1u64 << 53) as f64;
    let x = -u.ln() * mean as f64;
    (x as isize).max(1)
}

/// Probability that a block of `size` bytes is recorded.
#[inline]
pub(crate) fn probability(size: usize, mean: u64) -> f64 {
    if mean == 0 {
        return 1.0;
    }
    let p = -(-(size as f64) / mean as f64).exp_m1();
    p.max(f64::MIN_POSITIVE)
}

/// The estimated bytes a recorded block of `size` stands for.
pub(crate) fn estimated_bytes(size: usize, mean: u64) -> f64 {
    size as f64 / probability(size, mean)
}

/// The estimated blocks a recorded block of `size` stands for.
pub(crate) fn estimated_blocks(size: usize, mean: u64) -> f64 {
    1.0 / probability(size, mean)
}

/// Blocks are counted in 1/1024ths while sampling, so that fractional estimates add up
/// without rounding bias; this is one block.
pub(crate) const BLOCK_UNIT: u64 = 1024;

/// What a recorded block counts for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Weight {
    /// Bytes, for the current and peak counters and the allocation totals: the block's size
    /// when tracing exactly, its estimated bytes when sampling.
    pub(crate) bytes: u64,
    /// Blocks, for the allocation totals: 1 when exact, the estimate in 1/[`BLOCK_UNIT`]ths
    /// when sampling.
    pub(crate) blocks: u64,
}

/// The weight of a recorded block of `size`: one load and a branch when tracing exactly.
#[inline(always)]
pub(crate) fn weight(size: usize) -> Weight {
    let mean = MEAN.load(Relaxed);
    if mean == 0 {
        Weight {
            bytes: size as u64,
            blocks: 1,
        }
    } else {
        sampled_weight(size, mean as u64)
    }
}

#[cold]
#[inline(never)]
fn sampled_weight(size: usize, mean: u64) -> Weight {
    Weight {
        bytes: estimated_bytes(size, mean).round() as u64,
        blocks: (estimated_blocks(size, mean) * BLOCK_UNIT as f64).round() as u64,
    }
}

// ---- which addresses may have a record ------------------------------------------------------

const FILTER_BITS: u32 = 16;
static FILTER: [AtomicU8; 1 << FILTER_BITS] = [const { AtomicU8::new(0) }; 1 << FILTER_BITS];

#[inline(always)]
fn slot(address: usize) -> &'static AtomicU8 {
    let h = (address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS);
    &FILTER[h as usize]
}

/// Whether a block at `address` may have been recorded (false: certainly not).
#[inline(always)]
pub(crate) fn maybe_recorded(address: usize) -> bool {
    slot(address).load(Relaxed) != 0
}

/// Notes a recorded block. A counter that reaches 255 stays there (a false positive for good).
pub(crate) fn mark(address: usize) {
    let s = slot(address);
    let _ = s.fetch_update(Relaxed, Relaxed, |c| (c < u8::MAX).then_some(c + 1));
}

/// Notes a recorded block gone.
pub(crate) fn unmark(address: usize) {
    let s = slot(address);
    let _ = s.fetch_update(Relaxed, Relaxed, |c| (c > 0 && c < u8::MAX).then(|| c - 1));
}

/// Forgets every mark (with the table's records, when the traces are cleared).
pub(crate) fn clear_marks() {
    for s in &FILTER {
        s.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_unbiased_for_one_size() {
        // 1,000,000 blocks of 100 B with a mean of 10 KiB: each recorded with p ≈ 0.0097.
        // Under Miri: 20,000 blocks with a mean of 1 KiB (about 1,900 samples).
        let (mean, n) = if cfg!(miri) {
            (1024u64, 20_000)
        } else {
            (10 * 1024u64, 1_000_000)
        };
        let mut rng = splitmix(42);
        let mut countdown = draw(&mut rng, mean as usize);
        let (mut bytes, mut blocks) = (0.0, 0.0);
        for _ in 0..n {
            countdown -= 100;
            if countdown <= 0 {
                bytes += estimated_bytes(100, mean);
                blocks += estimated_blocks(100, mean);
                countdown = draw(&mut rng, mean as usize);
            }
        }
        let (b, n) = (bytes / (n as f64 * 100.0), blocks / n as f64);
        assert!((0.95..1.05).contains(&b), "bytes estimate off by {b}");
        assert!((0.95..1.05).contains(&n), "blocks estimate off by {n}");
    }

    #[test]
    fn probabilities() {
        assert_eq!(probability(100, 0), 1.0);
        let p = probability(512 * 1024, 512 * 1024);
        assert!((p - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!(probability(1, 1 << 40) > 0.0);
    }
}
