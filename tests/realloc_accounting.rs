//! `realloc` bookkeeping: the old block's bytes leave `current` in the same step as the new
//! block's arrive, a failed `realloc` leaves the record and the counters as they were, and the
//! peak is exact across a growth. Alone in its binary, because it reads process-wide figures:
//! each check is retried until no other thread (libtest's) allocated during it.

use std::alloc::{GlobalAlloc, Layout, System};

/// `System`, except that a `realloc` to `REFUSED` bytes fails.
struct Refusing;

const REFUSED: usize = 777_777;

// SAFETY: forwards to `System`, or fails a realloc by returning null (which leaves the block
// untouched, as `GlobalAlloc::realloc` allows).
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size == REFUSED {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: tracealloc::Tracer<Refusing> = tracealloc::Tracer::with_allocator(Refusing);

/// Runs `step` until the allocated-blocks total moved by exactly `blocks` during it (no other
/// thread allocated meanwhile); returns (current before, current after, peak after).
fn quietly(blocks: u64, mut step: impl FnMut()) -> (usize, usize, usize) {
    for _ in 0..1000 {
        tracealloc::reset_peak();
        let before = tracealloc::traced_memory();
        step();
        let after = tracealloc::traced_memory();
        if after.allocated_blocks - before.allocated_blocks == blocks
            && before.peak == before.current
        {
            return (before.current, after.current, after.peak);
        }
    }
    panic!("no quiet moment in 1000 tries");
}

#[test]
fn realloc_moves_current_by_the_difference_and_a_failed_one_changes_nothing() {
    tracealloc::start(16).unwrap();
    let layout = Layout::from_size_align(1000, 8).unwrap();
    // SAFETY: a nonzero layout.
    let mut ptr = unsafe { GLOBAL.alloc(layout) };
    assert!(!ptr.is_null());
    let mut size = 1000;

    // A refused realloc: the block keeps its record and `current` does not move (a failed
    // realloc is not an allocation: the totals do not count it either).
    let (before, after, peak) = quietly(0, || {
        // SAFETY: `ptr` is live with this layout; a null result leaves it so.
        let refused = unsafe { GLOBAL.realloc(ptr, layout, REFUSED) };
        assert!(refused.is_null());
    });
    assert_eq!(after, before, "a failed realloc changed current");
    assert_eq!(peak, before, "a failed realloc changed the peak");
    let traceback = tracealloc::object_traceback(ptr).expect("still traced after a failed realloc");
    assert!(
        traceback.to_string().contains("realloc_accounting.rs"),
        "the record still names the test: {traceback}"
    );

    // Growth: current and peak rise by the difference, not by the new size (or more).
    let (before, after, peak) = quietly(1, || {
        // SAFETY: `ptr` is live with `size` bytes; the result replaces it.
        ptr = unsafe { GLOBAL.realloc(ptr, Layout::from_size_align(size, 8).unwrap(), 50_000) };
        assert!(!ptr.is_null());
        size = 50_000;
    });
    assert_eq!(after, before + 49_000);
    assert_eq!(peak, before + 49_000);

    // Shrinking: current falls by the difference, the peak stays.
    let (before, after, peak) = quietly(1, || {
        // SAFETY: as above.
        ptr = unsafe { GLOBAL.realloc(ptr, Layout::from_size_align(size, 8).unwrap(), 10) };
        assert!(!ptr.is_null());
        size = 10;
    });
    assert_eq!(after + 49_990, before);
    assert_eq!(peak, before);

    let snapshot = tracealloc::take_snapshot().unwrap();
    assert!(
        snapshot
            .traces()
            .iter()
            .any(|t| t.size == 10 && t.traceback.to_string().contains("realloc_accounting.rs")),
        "the shrunk block is traced at its new size"
    );
    // SAFETY: `ptr` is live with `size` bytes.
    unsafe { GLOBAL.dealloc(ptr, Layout::from_size_align(size, 8).unwrap()) };
}
