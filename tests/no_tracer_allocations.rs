//! Recording a block whose stack is already interned allocates nothing through the tracked path
//! (the tables grow from `System` directly; the stack is found in the per-thread cache).

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[inline(never)]
fn churn(n: usize) -> usize {
    let mut total = 0;
    for i in 0..n {
        let b = std::hint::black_box(Box::new([i as u8; 48]));
        total += b[0] as usize;
    }
    total
}

#[test]
fn an_interned_stack_costs_no_allocation() {
    churn(10); // intern the stack
    let before = tracealloc::tracer_allocations();
    let blocks_before = tracealloc::traced_memory().allocated_blocks;
    std::hint::black_box(churn(100_000));
    assert!(
        tracealloc::traced_memory().allocated_blocks >= blocks_before + 100_000,
        "all traced"
    );
    assert_eq!(
        tracealloc::tracer_allocations(),
        before,
        "the tracer allocated while recording"
    );

    // Snapshots do allocate (symbolization), and that shows up here, not in the traces.
    let snapshot = tracealloc::take_snapshot().unwrap();
    assert!(tracealloc::tracer_allocations() > before);
    assert!(!snapshot.traces().is_empty());
}
