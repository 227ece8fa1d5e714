//! The workloads both bench harnesses run.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Best ns per call of `f` over 5 batches of `iters` calls (about 2 ms each).
pub(crate) fn ns_per_op(mut f: impl FnMut(), iters: u64) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    best
}

/// How many calls of `f` take about 2 ms.
pub(crate) fn iterations(mut f: impl FnMut()) -> u64 {
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() > Duration::from_millis(2) {
            return iters;
        }
        iters *= 2;
    }
}

/// `ROUNDS` from the environment, or `default`; `None` when cargo only lists the benches.
pub(crate) fn rounds(default: usize) -> Option<usize> {
    if std::env::args().any(|a| a == "--list") {
        return None;
    }
    Some(
        std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default),
    )
}

/// The median (sorts `v`).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One `GlobalAlloc::alloc` + `dealloc` of `layout`, through `allocator` directly.
#[inline(never)]
pub(crate) fn pair<A: GlobalAlloc>(allocator: &A, layout: Layout) {
    // SAFETY: a nonzero layout, freed right away with the same layout.
    unsafe {
        let p = allocator.alloc(black_box(layout));
        black_box(p);
        allocator.dealloc(p, layout);
    }
}

/// Build and drop a `HashMap<String, Vec<u32>>` of 1000 entries: formatting, growth, reallocs.
#[inline(never)]
pub(crate) fn mixed_workload() -> usize {
    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    for i in 0..1000u32 {
        let values = map.entry(format!("key-{}", i % 1000)).or_default();
        for j in 0..(i % 16) {
            values.push(j);
        }
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    black_box(keys.len())
}

/// `System` plus a frame-pointer walk of the allocating stack and nothing else: no hashing, no
/// table, no counter. What any exact tracer that walks the stack must pay at least, at the
/// same depth as the traced pair, so the traced rows can be read against the machine's floor.
pub(crate) struct WalkOnly;

// SAFETY: forwards to `System` unchanged; the walk only reads this thread's stack.
unsafe impl GlobalAlloc for WalkOnly {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut frames = [0usize; 48];
        tracealloc::__private::capture_frame_pointers(&mut frames);
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.alloc(layout) }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

/// `n` live heap blocks of 24 bytes, each its own allocation.
#[inline(never)]
#[allow(
    clippy::vec_box,
    reason = "one million separate heap blocks is the point"
)]
pub(crate) fn hold(n: usize) -> Vec<Box<[u8; 24]>> {
    (0..n).map(|i| Box::new([i as u8; 24])).collect()
}
