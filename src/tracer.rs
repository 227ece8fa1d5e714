//! `Tracer<A>`: the global allocator wrapper and the hot path.
//!
//! alloc:   inner alloc → tracing? → guard → capture → intern → insert (+ counters)
//! dealloc: remove the record (if tracing) → inner dealloc
//! realloc: remove the old record → inner realloc → record the new block at the realloc site
//!          (on failure the old record is put back: the old block is still live)
//!
//! Records are inserted after the inner allocator returns and removed before the inner free,
//! so no other thread can be handed an address that still has a record.
//!
//! Signal handlers: a handler's allocation while the interrupted code is inside `record` is not
//! traced (the reentrancy guard); a free or `realloc` that needs a lock its own thread holds
//! (it interrupted the table or the scopes' bookkeeping) does not wait for it: the free is
//! queued and completed by a later free (`deferred.rs`), the `realloc` moves the block.

use crate::counters;
use crate::deferred::{self, Pending};
use crate::guard::Guard;
use crate::ledger;
use crate::scope;
use crate::stack::{capture, intern};
use crate::table;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};

/// Default traceback limit (frames kept from the call site outward).
pub const DEFAULT_FRAMES: usize = 16;
/// Largest traceback limit.
pub const MAX_FRAMES: usize = 256;
/// Raw frames captured beyond the limit, to cover what lies between the allocation and its
/// call site in the program's own code, trimmed at snapshot time: the allocator machinery
/// (5 frames for `Vec` growth, 8–12 for a `HashMap` rehash or a `BTreeMap` split, plus the
/// tracer's own) and the dependencies' code (serde's recursive descent: 20–40 frames in
/// release, over 100 for a document 12 levels deep in a debug build). The walk only goes as
/// deep as the stack is, so the margin costs nothing on shallow stacks.
pub(crate) const MACHINERY_FRAMES: usize = 128;
const MAX_CAPTURE: usize = MAX_FRAMES + MACHINERY_FRAMES;

const UNINIT: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
/// Tracing a Poisson sample of the allocations (see `sample.rs`).
const SAMPLED: u8 = 3;

/// UNINIT until the first allocation goes through a `Tracer` (which proves it is installed).
static STATUS: AtomicU8 = AtomicU8::new(UNINIT);
static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_FRAMES);
static CAPTURE_CAP: AtomicUsize = AtomicUsize::new(DEFAULT_FRAMES + MACHINERY_FRAMES);
static REENTRANT: AtomicU64 = AtomicU64::new(0);

/// A global allocator that records every allocation with its call stack.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
/// ```
///
/// It wraps `System` by default, or any `GlobalAlloc` with [`Tracer::with_allocator`]. There is
/// one set of traces per process, whichever `Tracer` value records into it.
#[derive(Debug)]
pub struct Tracer<A = System> {
    inner: A,
    frames: usize,
    start_stopped: bool,
    sample_mean: usize,
    /// `None`: the default (see [`Tracer::peak_breakdown`]).
    peak_breakdown: Option<bool>,
    /// `None`: the default (see [`Tracer::block_lifetimes`]).
    block_lifetimes: Option<bool>,
}

impl Tracer<System> {
    /// Traces allocations served by `System`, from the first allocation, 16 frames deep.
    pub const fn new() -> Self {
        Tracer::with_allocator(System)
    }
}

impl Default for Tracer<System> {
    fn default() -> Self {
        Tracer::new()
    }
}

impl<A> Tracer<A> {
    /// Traces allocations served by `inner`.
    pub const fn with_allocator(inner: A) -> Self {
        Tracer {
            inner,
            frames: DEFAULT_FRAMES,
            start_stopped: false,
            sample_mean: 0,
            peak_breakdown: None,
            block_lifetimes: None,
        }
    }

    /// Sets the traceback limit: frames kept from the call site outward, clamped to 1..=256.
    pub const fn frames(mut self, n: usize) -> Self {
        self.frames = if n == 0 {
            1
        } else if n > MAX_FRAMES {
            MAX_FRAMES
        } else {
            n
        };
        self
    }

    /// Records a Poisson sample of the allocations instead of every one, for always-on use:
    /// on average one allocation per `mean_bytes` bytes allocated
    /// ([`DEFAULT_SAMPLE_MEAN`](crate::DEFAULT_SAMPLE_MEAN), 512 KiB, is what Go, jemalloc and
    /// tcmalloc use). Every figure is then an unbiased estimate, and marked as one; heap
    /// assertions refuse to run. `mean_bytes` of 0 means exact tracing; more than 1 TiB is
    /// taken as 1 TiB.
    /// [`set_sampling`](crate::set_sampling) changes it at run time.
    pub const fn sampled(mut self, mean_bytes: usize) -> Self {
        self.sample_mean = mean_bytes;
        self
    }

    /// Whether to keep, per stack, what is live and what was live at the peak: the breakdown
    /// behind [`peak_snapshot`](crate::peak_snapshot),
    /// [`Snapshot::at_peak`](crate::Snapshot::at_peak), `Metric::Peak` outputs and the exit
    /// report's peak section. It costs a probe of a small table on each allocation (7% on the
    /// mixed benchmark; benches/README.md has the figures), so it is off unless asked for: by
    /// this, by `TRACEALLOC_PEAK=1`, or at run time with
    /// [`set_peak_breakdown`](crate::set_peak_breakdown). Asking for the exit report or dump
    /// (`TRACEALLOC_REPORT`, `TRACEALLOC_DUMP`) turns it on unless this or `TRACEALLOC_PEAK=0`
    /// says otherwise; `TRACEALLOC_PEAK` overrides this. It is kept while tracing every
    /// allocation, not while sampling.
    pub const fn peak_breakdown(mut self, keep: bool) -> Self {
        self.peak_breakdown = Some(keep);
        self
    }

    /// Whether to measure block lifetimes, for DHAT's viewer: each stack's blocks' lifetimes
    /// summed, so [`Snapshot::dhat_json`](crate::Snapshot::dhat_json) fills DHAT's `bklt`
    /// figures and dh_view's "At t-gmax" and "short-lived" sorts work. They are kept with the
    /// peak breakdown, which this turns on unless [`peak_breakdown`](Self::peak_breakdown)
    /// or `TRACEALLOC_PEAK=0` says otherwise. A read of the CPU's time-stamp counter on each
    /// allocation and free (x86-64, AArch64; nothing elsewhere): +14% on a traced 64 B pair
    /// over the breakdown alone, so off unless asked for, by this or by
    /// `TRACEALLOC_LIFETIMES=1` (which overrides this). Set at start-up only.
    pub const fn block_lifetimes(mut self, keep: bool) -> Self {
        self.block_lifetimes = Some(keep);
        self
    }

    /// Records nothing until [`start`](crate::start) is called.
    pub const fn start_stopped(mut self) -> Self {
        self.start_stopped = true;
        self
    }

    /// The allocator underneath.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    /// The out-of-line part of `alloc` before the process's first allocation (which applies
    /// this tracer's settings); later ones go to [`record_new`].
    #[cold]
    #[inline(never)]
    fn traced(&self, ptr: *mut u8, size: usize) -> *mut u8 {
        self.record_if_tracing(ptr, size, 0);
        ptr
    }

    /// Records the block if tracing (and sampled, when sampling). `credit`: bytes of a block
    /// this one replaces, already removed from the table but not from `current`. Returns
    /// whether the credit was taken.
    #[inline(always)]
    fn record_if_tracing(&self, ptr: *mut u8, size: usize, credit: usize) -> bool {
        let mut status = STATUS.load(Relaxed);
        if status == UNINIT {
            status = self.first_use();
            if status == SAMPLED && !crate::sample::due(size) {
                return false;
            }
        }
        (status == ON || status == SAMPLED) && record(ptr as usize, size, credit)
    }

    /// The traced part of `dealloc`: forgets the record, then frees.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`.
    #[inline(always)]
    unsafe fn dealloc_traced(&self, ptr: *mut u8, layout: Layout)
    where
        A: GlobalAlloc,
    {
        let Some(frees_waiting) = forget_freed(ptr as usize) else {
            // A signal handler freeing while its thread holds the lock: later.
            defer(ptr, layout);
            return;
        };
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) };
        if frees_waiting {
            self.complete_deferred();
        }
    }

    /// Completes frees that a signal handler could not do (at most the queue's length).
    #[cold]
    #[inline(never)]
    fn complete_deferred(&self)
    where
        A: GlobalAlloc,
    {
        while let Some(p) = deferred::pop() {
            if forget_freed(p.ptr).is_none() {
                // Still inside the interrupted code (a handler freeing again): next time.
                let _ = deferred::push(p);
                return;
            }
            // SAFETY: `defer` queued the pointer and layout of a `dealloc` call, whose
            // contract (allocated here with this layout) the caller upheld; it is freed once.
            unsafe {
                self.inner.dealloc(
                    p.ptr as *mut u8,
                    Layout::from_size_align_unchecked(p.size, p.align),
                )
            };
        }
    }

    /// Runs once per process: applies this tracer's settings. Returns the status.
    #[cold]
    #[inline(never)]
    fn first_use(&self) -> u8 {
        // Before anything is traced, so that a fork from the first traced allocation on is
        // safe; `pthread_atfork` allocates through glibc's malloc, not through us.
        crate::fork::register_once();
        if self.sample_mean != 0 && crate::sample::mean() == 0 {
            crate::sample::set_mean(self.sample_mean.min(crate::sample::MAX_SAMPLE_MEAN));
        }
        // Before anything is recorded: the tables need no recount.
        let lifetimes = crate::environment::lifetimes_switch()
            .or(self.block_lifetimes)
            .unwrap_or(false);
        crate::table::init_detail(
            crate::environment::peak_switch()
                .or(self.peak_breakdown)
                .unwrap_or_else(|| lifetimes || crate::environment::exit_work_wanted()),
            lifetimes,
        );
        let wanted = if self.start_stopped { OFF } else { on_value() };
        match STATUS.compare_exchange(UNINIT, wanted, Relaxed, Relaxed) {
            Ok(_) => {
                crate::counters::mark_start();
                let from_environment = crate::environment::read_at_startup();
                set_limit(from_environment.unwrap_or(self.frames));
                wanted
            }
            Err(now) => now,
        }
    }
}

// SAFETY: every method forwards to the inner allocator with the caller's arguments and returns
// its result unchanged; the bookkeeping around it never touches the blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Tracer<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        let ptr = unsafe { self.inner.alloc(layout) };
        let status = STATUS.load(Relaxed);
        if status != OFF && !ptr.is_null() {
            if status == SAMPLED && !crate::sample::due(layout.size()) {
                return ptr;
            }
            if status == UNINIT {
                return self.traced(ptr, layout.size());
            }
            // In tail position: no frame of its own in the captured stack.
            return record_new(ptr, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc_zeroed`'s contract for `layout`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        let status = STATUS.load(Relaxed);
        if status != OFF && !ptr.is_null() {
            if status == SAMPLED && !crate::sample::due(layout.size()) {
                return ptr;
            }
            if status == UNINIT {
                return self.traced(ptr, layout.size());
            }
            return record_new(ptr, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let status = STATUS.load(Relaxed);
        if status == ON || (status == SAMPLED && crate::sample::maybe_recorded(ptr as usize)) {
            // SAFETY: forwarded contract.
            return unsafe { self.dealloc_traced(ptr, layout) };
        }
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let status = STATUS.load(Relaxed);
        if status == OFF {
            // SAFETY: the caller upholds `realloc`'s contract for `ptr`, `layout` and `new_size`.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        let old_recorded =
            status == ON || (status == SAMPLED && crate::sample::maybe_recorded(ptr as usize));
        let record_new = status != SAMPLED || crate::sample::due(new_size);
        if !old_recorded && !record_new {
            // SAFETY: as above.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // SAFETY: forwarded contract.
        unsafe { self.realloc_traced(ptr, layout, new_size, old_recorded, record_new) }
    }
}

impl<A: GlobalAlloc> Tracer<A> {
    /// The out-of-line part of `realloc` when the old block may have a record or the new one
    /// is to get one.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`.
    #[inline(never)]
    unsafe fn realloc_traced(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        old_recorded: bool,
        record_new: bool,
    ) -> *mut u8 {
        // The old record goes before the inner realloc (once it returns, the old address may
        // be another thread's); its bytes leave `current` together with the new block's arrival.
        let old = if old_recorded {
            match forget_reallocated(ptr as usize) {
                Ok(old) => old,
                Err(table::Busy) => {
                    // SAFETY: forwarded contract.
                    return unsafe { self.realloc_by_moving(ptr, layout, new_size) };
                }
            }
        } else {
            None
        };
        // SAFETY: the caller upholds `realloc`'s contract for `ptr`, `layout` and `new_size`.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if new.is_null() {
            if let Some((old, weight)) = old {
                if !table::restore(old) {
                    // Still live, but no longer traced.
                    counters::removed(weight);
                } else if old.scope != 0 {
                    scope::restored(old.scope, old.stack, old.size);
                }
            }
            return new;
        }
        let credit = old.map_or(0, |(_, weight)| weight);
        let taken = record_new && self.record_if_tracing(new, new_size, credit);
        if !taken && credit != 0 {
            counters::removed(credit);
        }
        new
    }

    /// `realloc` from a signal handler whose thread holds the lock of the old block's record:
    /// a new block, the contents copied, the old block's free queued (its record goes with it).
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_by_moving(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `realloc`'s contract makes `new_size` with `layout`'s alignment a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_size` is nonzero (`realloc`'s contract).
        let new = unsafe { self.inner.alloc(new_layout) };
        if new.is_null() {
            return new;
        }
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        // Not traced if the table is what the handler interrupted (the insert is refused).
        self.record_if_tracing(new, new_size, 0);
        defer(ptr, layout);
        new
    }
}

/// Queues the free of `ptr` (see `deferred.rs`); when the queue is full the block is never
/// freed, and stays traced: a leak rather than a hang.
#[cold]
#[inline(never)]
fn defer(ptr: *mut u8, layout: Layout) {
    let _ = deferred::push(Pending {
        ptr: ptr as usize,
        size: layout.size(),
        align: layout.align(),
    });
}

thread_local! {
    /// The address of the last block this thread recorded (0 once freed): a free of it, with
    /// no allocation between, is a temporary allocation as heaptrack defines them.
    static LAST_RECORDED: Cell<usize> = const { Cell::new(0) };
    /// The raw return addresses of the capture in progress: per thread rather than on the
    /// stack, so a traced allocation needs 3 KiB less stack (see `record`). Const-initialized,
    /// without a destructor: usable inside the allocator at any time, thread teardown included.
    static FRAMES: UnsafeCell<[MaybeUninit<usize>; MAX_CAPTURE]> =
        const { UnsafeCell::new([MaybeUninit::uninit(); MAX_CAPTURE]) };
}

/// Records a new live block. Not generic: compiled once, with tracealloc's own optimization
/// level, and kept out of the callers' code.
/// `credit`: see [`Tracer::record_if_tracing`]; returns whether it was taken (the block was
/// recorded).
#[inline(never)]
fn record(address: usize, size: usize, credit: usize) -> bool {
    let Some(_guard) = Guard::enter() else {
        // The tracer itself is allocating (table growth is not: it bypasses the global
        // allocator; this is symbolization, the unwinder fallback, snapshot assembly).
        REENTRANT.fetch_add(1, Relaxed);
        return false;
    };
    let Ok(buf) = FRAMES.try_with(UnsafeCell::get) else {
        counters::dropped();
        return false;
    };
    // SAFETY: `record` is this thread's only user of its buffer, and it is not reentrant: the
    // guard is held until it returns (an allocation in a signal handler that interrupts it
    // finds the guard taken and records nothing).
    let buf = unsafe { &mut *buf };
    let cap = CAPTURE_CAP.load(Relaxed).min(MAX_CAPTURE);
    let (n, hash) = capture::capture_hashed(&mut buf[..cap]);
    // SAFETY: `capture` initialized the first `n` slots.
    let addresses = unsafe { &*(&buf[..n] as *const [MaybeUninit<usize>] as *const [usize]) };
    // The thread's own scope, else an all-threads measurement's (see `scope::all_threads_id`).
    let own = scope::own_id();
    let scope = if own != 0 {
        own
    } else {
        scope::all_threads_id()
    };
    if scope != 0 && scope::registry_is_mine() {
        // A signal handler interrupted the scopes' bookkeeping: it cannot be updated.
        counters::dropped();
        return false;
    }
    let Some(stack) = intern::intern_hashed(addresses, hash) else {
        counters::dropped();
        return false;
    };
    // This thread's totals for the stack (see `ledger.rs`), made ready before the table's lock.
    let totals = ledger::prepare(stack);
    match table::insert(address, size, stack, scope, credit, totals) {
        Ok(stale) => {
            let _ = LAST_RECORDED.try_with(|last| last.set(address));
            if let Some(stale) = stale {
                scope::freed(&stale);
            }
            if scope != 0 {
                scope::allocated(scope, stack, size, own != 0);
            }
            if own == 0 && scope::watching() {
                // A measurement is open: it keeps the stacks of work done outside every scope
                // (a pool it did not carry its scope to; see `Measurement::escaped_work`), also
                // while an all-threads measurement on another thread counts that work in its
                // own figures (not the scopes the block counts in: that one and those around
                // it).
                scope::observed(stack, size, scope);
            }
            true
        }
        Err(stale) => {
            // A stale record went all the same: its scope hears of its end.
            if let Some(stale) = stale {
                scope::freed(&stale);
            }
            counters::dropped();
            false
        }
    }
}

/// Forgets a block about to be freed; `None`, forgetting nothing, when this thread holds a lock
/// it needs (a signal handler).
///
/// Not generic and not inlined, like [`record`] (and `forget` for `realloc`): the callers are
/// methods of the generic `Tracer<A>`, compiled in the crate that declares the
/// `#[global_allocator]` with that crate's optimization level, which is 0 in a debug build
/// whatever the profile says for tracealloc: inlined there, it made a debug build's traced
/// pair 4× as slow (benches/README.md, "Debug builds").
///
/// `Some(waiting)` once forgotten, `waiting` telling whether frees a signal handler queued are
/// waiting (read here rather than in the caller, for the same reason: one call fewer a free
/// in an unoptimized caller).
#[inline(never)]
fn forget_freed(address: usize) -> Option<bool> {
    match forget(address, true) {
        Ok(_) => Some(deferred::any()),
        Err(table::Busy) => None,
    }
}

/// The out-of-line part of `alloc` while tracing: records the block and returns it (called in
/// tail position, so the untraced path saves no registers). Not generic, for the reason
/// [`forget_freed`] is not: the generic caller would reload the status in unoptimized code.
#[inline(never)]
fn record_new(ptr: *mut u8, size: usize) -> *mut u8 {
    record(ptr as usize, size, 0);
    ptr
}

/// [`forget`] for `realloc`, out of line for the reason [`forget_freed`] is.
#[inline(never)]
fn forget_reallocated(address: usize) -> Result<Option<(table::Entry, usize)>, table::Busy> {
    forget(address, false)
}

/// Forgets a block about to be freed (or reallocated); returns its record. With `count` false
/// its bytes stay in `current` (see [`table::remove`]). `Err(Busy)`, forgetting nothing, when
/// this thread holds a lock it needs (a signal handler).
///
/// Inlined only into [`forget_freed`]; `realloc` calls it out of line (see there why).
#[inline(always)]
fn forget(address: usize, count: bool) -> Result<Option<(table::Entry, usize)>, table::Busy> {
    // A free (not a `realloc`) of this thread's last recorded block is a temporary.
    let temporary = count
        && LAST_RECORDED
            .try_with(|last| {
                let hit = last.get() == address;
                if hit {
                    last.set(0);
                }
                hit
            })
            .unwrap_or(false);
    let Some((entry, weight)) = table::remove(address, count, temporary)? else {
        return Ok(None);
    };
    if entry.scope != 0 {
        scope::freed(&entry);
    }
    Ok(Some((entry, weight)))
}

pub(crate) fn is_installed() -> bool {
    STATUS.load(Relaxed) != UNINIT
}

pub(crate) fn is_on() -> bool {
    matches!(STATUS.load(Relaxed), ON | SAMPLED)
}

/// The status for "tracing": every allocation, or a sample.
fn on_value() -> u8 {
    if crate::sample::mean() != 0 {
        SAMPLED
    } else {
        ON
    }
}

/// OFF → tracing; false when already on (or not installed).
pub(crate) fn switch_on() -> bool {
    STATUS
        .compare_exchange(OFF, on_value(), Relaxed, Relaxed)
        .is_ok()
}

/// Tracing exactly ↔ sampling, after the sampling mean changed; false when not tracing.
pub(crate) fn retarget() -> bool {
    let wanted = on_value();
    STATUS
        .compare_exchange(ON, wanted, Relaxed, Relaxed)
        .or_else(|_| STATUS.compare_exchange(SAMPLED, wanted, Relaxed, Relaxed))
        .is_ok()
}

/// Tracing → OFF; false when not on.
pub(crate) fn switch_off() -> bool {
    STATUS.compare_exchange(ON, OFF, Relaxed, Relaxed).is_ok()
        || STATUS
            .compare_exchange(SAMPLED, OFF, Relaxed, Relaxed)
            .is_ok()
}

pub(crate) fn set_limit(frames: usize) {
    let frames = frames.clamp(1, MAX_FRAMES);
    LIMIT.store(frames, Relaxed);
    CAPTURE_CAP.store(frames + MACHINERY_FRAMES, Relaxed);
}

pub(crate) fn limit() -> usize {
    LIMIT.load(Relaxed)
}

pub(crate) fn capture_cap() -> usize {
    CAPTURE_CAP.load(Relaxed)
}

pub(crate) fn reentrant_allocations() -> u64 {
    REENTRANT.load(Relaxed)
}
