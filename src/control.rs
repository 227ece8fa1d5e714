//! Module-level control, mirroring Python's `tracemalloc` functions.

use crate::error::Error;
use crate::guard::Guard;
use crate::snapshot::{self, Snapshot, Traceback};
use crate::stack::capture;
use crate::stack::CaptureMode;
use crate::tracer::{self, MAX_FRAMES};
use crate::{counters, meta, sample, table};

/// Traced memory, in requested bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TracedMemory {
    /// Bytes of the traced blocks live now.
    pub current: usize,
    /// Most bytes live at once since tracing started (or since `reset_peak`/`clear_traces`).
    /// Exact: the maximum of `current` over every change, in the order the changes happened.
    pub peak: usize,
    /// Bytes allocated since tracing started, freed or not (reallocations count their new size).
    pub allocated_bytes: u64,
    /// Blocks allocated since tracing started (reallocations count one).
    pub allocated_blocks: u64,
    /// Blocks not traced because the tracer could not allocate its own record. Always 0 unless
    /// the system ran out of memory; those blocks are missing from `current` and snapshots.
    pub dropped_blocks: u64,
    /// `Some(mean bytes)` when the tracer samples: every figure above is then an unbiased
    /// estimate, not an exact count.
    pub sampled: Option<usize>,
}

/// Starts tracing with a traceback limit of `nframe` frames, or, when tracing already, applies
/// the new limit to later allocations (tracemalloc ignores it). Starting after `stop()` begins
/// with empty traces and zeroed totals.
pub fn start(nframe: usize) -> Result<(), Error> {
    if !(1..=MAX_FRAMES).contains(&nframe) {
        return Err(Error::InvalidFrameCount { requested: nframe });
    }
    ensure_installed()?;
    tracer::set_limit(nframe);
    if !tracer::is_on() {
        // Drop anything a racing allocation left behind when tracing stopped.
        table::clear(true, || {
            counters::reset_dropped();
            counters::reset_peak();
            counters::mark_start();
            tracer::switch_on();
        });
    }
    Ok(())
}

/// Stops tracing and forgets every trace (current and peak return to 0).
pub fn stop() {
    if tracer::switch_off() {
        table::clear(false, counters::reset_peak);
    }
}

/// Whether allocations are being traced.
pub fn is_tracing() -> bool {
    tracer::is_on()
}

/// Forgets every trace; current and peak become 0. Tracing goes on.
pub fn clear_traces() {
    table::clear(false, counters::reset_peak);
}

/// Current and peak traced memory, and totals since start.
pub fn traced_memory() -> TracedMemory {
    let (allocated_bytes, allocated_blocks) = table::totals();
    let dropped_blocks = counters::dropped_blocks();
    TracedMemory {
        current: counters::current(),
        peak: counters::peak(),
        allocated_bytes,
        allocated_blocks,
        dropped_blocks,
        sampled: sampling(),
    }
}

/// Switches between exact tracing (`None`) and Poisson sampling with a mean of `mean_bytes`
/// between samples (`Some(DEFAULT_SAMPLE_MEAN)` is 512 KiB). The traces and totals recorded so
/// far are forgotten, as their weights would no longer match (as `start` after `stop`);
/// tracing stays on or off as it was. Other threads draw their next sample point with the new
/// mean once their current one is reached. `Some(0)` or a mean above 1 TiB is an
/// [`Error::InvalidSampleMean`].
pub fn set_sampling(mean_bytes: Option<usize>) -> Result<(), Error> {
    if mean_bytes.is_some_and(|m| m == 0 || m > crate::sample::MAX_SAMPLE_MEAN) {
        return Err(Error::InvalidSampleMean);
    }
    ensure_installed()?;
    let mean = mean_bytes.unwrap_or(0);
    if mean == sample::mean() {
        return Ok(());
    }
    // Every shard lock is held from the clearing to the switch: each record in the table
    // afterwards is weighted, marked and removed under the new mean (a record in flight
    // on another thread lands after the switch, under the new mean too), so `current` stays
    // the sum of the live records' weights.
    table::clear(true, || {
        counters::reset_dropped();
        counters::reset_peak();
        sample::set_mean(mean);
        if tracer::retarget() {
            counters::mark_start();
        }
    });
    Ok(())
}

/// `Some(mean bytes between samples)` when the tracer samples, `None` when it traces every
/// allocation.
pub fn sampling() -> Option<usize> {
    Some(sample::mean()).filter(|&m| m != 0)
}

/// Seeds the sampling's random generator (each thread's is the seed mixed with the order in
/// which threads first sample), so that a program run twice samples the same allocations.
/// The calling thread restarts its count now, the others at their next sample point.
pub fn set_sampling_seed(seed: u64) {
    sample::set_seed(seed);
}

/// Sets the peak to the current traced memory, to measure the peak of what follows
/// ([`peak_snapshot`] then shows what is live now until a higher peak is reached).
pub fn reset_peak() {
    // With every shard lock held: no block is between its record's change and the counter's.
    table::with_all_locked(counters::reset_peak);
}

/// Keeps the per-stack breakdown of the peak (what each stack holds, and held at the peak)
/// or stops keeping it, at run time; [`Tracer::peak_breakdown`](crate::Tracer::peak_breakdown)
/// and `TRACEALLOC_PEAK` set it at start-up. Off, each allocation skips a probe of a small
/// table, and [`peak_snapshot`] fails with [`Error::PeakNotKept`]. Turning it on while tracing
/// counts what each stack holds from the live traces and starts a new peak from what is live
/// now, as [`reset_peak`] does: what was live at the earlier peak was not kept. While sampling
/// the setting is remembered and applies when exact tracing resumes.
pub fn set_peak_breakdown(keep: bool) -> Result<(), Error> {
    ensure_installed()?;
    table::set_detail(keep);
    Ok(())
}

/// Whether the per-stack breakdown of the peak is kept now (wanted, and tracing every
/// allocation).
pub fn peak_breakdown() -> bool {
    table::peak_breakdown()
}

/// Frames kept per traceback, counted from the call site outward.
pub fn traceback_limit() -> usize {
    tracer::limit()
}

/// Bytes the tracer's own tables (live blocks and interned stacks) hold; they are never traced.
/// Symbolization caches and snapshots are not included.
pub fn tracer_memory() -> usize {
    meta::meta_bytes()
}

/// Allocations the tracer itself made through the global allocator (and so did not trace):
/// symbolization, the unwinder fallback, snapshot assembly. Recording a block whose stack is
/// already known makes none.
pub fn tracer_allocations() -> u64 {
    tracer::reentrant_allocations()
}

/// How stacks are captured in this process: decided at the first traced allocation.
pub fn capture_mode() -> CaptureMode {
    capture::mode()
}

/// The traceback of the live traced block at `ptr`, or `None` when `ptr` is not the start of
/// such a block.
pub fn object_traceback<T: ?Sized>(ptr: *const T) -> Option<Traceback> {
    let _guard = Guard::enter();
    let entry = table::get(ptr as *const u8 as usize)?;
    Some(snapshot::traceback_of(
        entry.stack,
        tracer::limit(),
        tracer::capture_cap(),
    ))
}

/// Copies the live traces and symbolizes them.
pub fn take_snapshot() -> Result<Snapshot, Error> {
    ensure_installed()?;
    if !tracer::is_on() {
        return Err(Error::NotTracing);
    }
    // Everything allocated from here on is the tracer's, not the program's.
    let _guard = Guard::enter();
    Ok(snapshot::take(tracer::limit(), tracer::capture_cap(), true))
}

/// The report of what happened so far (see [`Snapshot::summary`]), with the process's resident
/// memory and the tracer's own tables: the text `TRACEALLOC_REPORT` prints at exit.
pub fn summary(limit: usize) -> Result<snapshot::Summary, Error> {
    let snapshot = take_snapshot()?;
    Ok(snapshot.summary_with(limit, "now", process_figures()))
}

pub(crate) fn process_figures() -> snapshot::ProcessFigures {
    snapshot::ProcessFigures {
        resident: crate::process_memory(),
        tracer_tables: Some(tracer_memory()),
        traced_peak: Some((counters::peak() as u64, counters::peak_since_start())),
    }
}

/// What was live when `traced_memory().peak` was reached (since tracing started, or the last
/// [`reset_peak`] or [`clear_traces`]), grouped per stack: the answer to "why did my program
/// need that much". A [`Snapshot`] like any other (see [`Snapshot::at_peak`] for what it knows
/// of block sizes); [`take_snapshot`]`()?.at_peak()` gives the same with the live traces too.
///
/// Exact on one thread: its total is the traced peak. When threads allocate at once, the
/// figures are those of one moment at the peak, except that each other thread's one operation
/// in flight at that moment may fall on either side (the counter and the per-stack figures are
/// updated in two steps), and a `realloc` in progress on another thread may be missing its old
/// block. Fails with [`Error::NotTracing`] when not tracing and [`Error::PeakNotKept`] while
/// sampling (the per-stack peak figures are kept for exact tracing only) or when the
/// breakdown is switched off (see [`set_peak_breakdown`]).
pub fn peak_snapshot() -> Result<Snapshot, Error> {
    ensure_tracing()?;
    if !table::peak_breakdown() {
        return Err(Error::PeakNotKept);
    }
    let _guard = Guard::enter();
    snapshot::take(tracer::limit(), tracer::capture_cap(), false)
        .at_peak()
        .ok_or(Error::PeakNotKept)
}

/// `Ok` when the tracer is installed and tracing.
pub(crate) fn ensure_tracing() -> Result<(), Error> {
    ensure_installed()?;
    if tracer::is_on() {
        Ok(())
    } else {
        Err(Error::NotTracing)
    }
}

pub(crate) fn ensure_installed() -> Result<(), Error> {
    if !tracer::is_installed() {
        // Nothing has gone through a Tracer yet: allocate once to find out.
        std::hint::black_box(Box::new(0u8));
    }
    if tracer::is_installed() {
        Ok(())
    } else {
        Err(Error::NotInstalled)
    }
}
