//! `Tracer::new().start_stopped().frames(4)`: nothing is recorded until `start`.

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new().frames(4).start_stopped();

#[test]
fn records_nothing_until_started() {
    let before = std::hint::black_box(vec![0u8; 5000]);
    assert!(!tracealloc::is_tracing());
    assert_eq!(
        tracealloc::traceback_limit(),
        4,
        "the Tracer's limit applies"
    );
    assert!(matches!(
        tracealloc::take_snapshot(),
        Err(tracealloc::Error::NotTracing)
    ));
    assert_eq!(tracealloc::traced_memory().current, 0);

    tracealloc::start(tracealloc::traceback_limit()).unwrap();
    let (after, line) = (std::hint::black_box(vec![0u8; 7000]), line!());
    let snapshot = tracealloc::take_snapshot().unwrap();
    assert!(snapshot
        .traces()
        .iter()
        .all(|t| t.traceback.frames().len() <= 4));
    let stat = snapshot
        .statistics(tracealloc::GroupBy::Line)
        .into_iter()
        .find(|s| s.traceback.call_site().lineno == line)
        .expect("the block allocated after start");
    assert_eq!((stat.size, stat.count), (7000, 1));
    assert!(
        tracealloc::object_traceback(before.as_ptr()).is_none(),
        "blocks from before start are not traced"
    );
    drop((before, after));
}
