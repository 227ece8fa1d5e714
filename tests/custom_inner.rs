//! `Tracer::with_allocator`: any `GlobalAlloc` underneath, every call forwarded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting {
    allocs: AtomicUsize,
    zeroed: AtomicUsize,
    reallocs: AtomicUsize,
    frees: AtomicUsize,
}

// SAFETY: forwards every call to System unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocs.fetch_add(1, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.zeroed.fetch_add(1, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.reallocs.fetch_add(1, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.frees.fetch_add(1, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: tracealloc::Tracer<Counting> = tracealloc::Tracer::with_allocator(Counting {
    allocs: AtomicUsize::new(0),
    zeroed: AtomicUsize::new(0),
    reallocs: AtomicUsize::new(0),
    frees: AtomicUsize::new(0),
});

#[test]
fn every_call_reaches_the_inner_allocator_and_is_traced() {
    let inner = GLOBAL.inner();
    let (a0, z0, r0, f0) = (
        inner.allocs.load(Relaxed),
        inner.zeroed.load(Relaxed),
        inner.reallocs.load(Relaxed),
        inner.frees.load(Relaxed),
    );
    let mut v: Vec<u8> = std::hint::black_box(Vec::with_capacity(10));
    let zeroed = std::hint::black_box(vec![0u32; 1000]);
    let (_, line) = (v.reserve_exact(100_000), line!());
    let ptr = v.as_ptr();
    assert_eq!(
        tracealloc::object_traceback(ptr).map(|t| t.call_site().lineno),
        Some(line),
        "the realloc site"
    );
    assert!(
        tracealloc::object_traceback(zeroed.as_ptr()).is_some(),
        "alloc_zeroed is traced"
    );
    drop((v, zeroed));
    assert!(inner.allocs.load(Relaxed) > a0);
    assert!(inner.zeroed.load(Relaxed) > z0);
    assert!(inner.reallocs.load(Relaxed) > r0);
    assert!(inner.frees.load(Relaxed) >= f0 + 2);
}
