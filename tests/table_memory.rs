//! The tracer's tables give memory back when the live set falls: after a peak of many small
//! blocks is freed, `tracer_memory()` drops to a fraction of what it was, and grows again when
//! the program builds again. One `#[test]`: the figures are process-wide.

use std::hint::black_box;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const BLOCKS: usize = 400_000;

#[inline(never)]
#[allow(
    clippy::vec_box,
    reason = "separate heap blocks, one record each, are the point"
)]
fn build() -> Vec<Box<u64>> {
    (0..BLOCKS as u64).map(|i| black_box(Box::new(i))).collect()
}

#[test]
fn tables_shrink_after_the_live_set_falls() {
    let before = tracealloc::tracer_memory();
    for round in 0..2 {
        let blocks = build();
        let at_peak = tracealloc::tracer_memory();
        // 16-byte slots and a control byte each, at most twice over for the growth slack.
        assert!(
            at_peak - before >= BLOCKS * 17,
            "round {round}: the tables hold {at_peak} B for {BLOCKS} live blocks"
        );
        drop(black_box(blocks));
        let after = tracealloc::tracer_memory();
        assert!(
            after < before + (at_peak - before) / 8,
            "round {round}: {after} B after freeing everything, {at_peak} B at the peak, \
             {before} B before"
        );
    }
    // And the books stay exact through the moves: a block made before a shrink is found
    // (and freed) after it.
    let kept: Vec<Box<[u8; 100]>> = (0..1000).map(|_| Box::new([1u8; 100])).collect();
    let churn = build();
    drop(churn);
    let snapshot = tracealloc::take_snapshot().unwrap();
    let hundreds = snapshot.traces().iter().filter(|t| t.size == 100).count();
    assert!(hundreds >= 1000, "{hundreds} blocks of 100 B still traced");
    let current = tracealloc::traced_memory().current;
    drop(kept);
    assert!(tracealloc::traced_memory().current <= current - 100_000);
}
