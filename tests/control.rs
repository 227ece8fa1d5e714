//! tracemalloc's module functions: exact current and peak, reset_peak, clear_traces, stop and
//! start, the traceback limit, statistics by each grouping. One `#[test]`, run in order,
//! because these figures are process-wide.

use std::hint::black_box;
use tracealloc::{Error, GroupBy};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

fn current() -> usize {
    tracealloc::traced_memory().current
}

fn peak() -> usize {
    tracealloc::traced_memory().peak
}

/// A snapshot taken while no other thread allocated (`current` the same before and after):
/// libtest's main thread allocates now and then (its first blocking channel receive), which
/// would make an exact comparison with `current` flaky.
fn quiet_snapshot() -> tracealloc::Snapshot {
    for _ in 0..20 {
        let before = current();
        let snapshot = tracealloc::take_snapshot().unwrap();
        if current() == before {
            return snapshot;
        }
    }
    panic!("other threads kept allocating during 20 snapshots");
}

/// Function names carry their module path with full debug info, and only the bare name with
/// `debug = "line-tables-only"`.
fn is_fn(name: &str, wanted: &str) -> bool {
    name == wanted || name.ends_with(&format!("::{wanted}"))
}

#[inline(never)]
fn allocate(n: usize) -> Vec<u8> {
    black_box(vec![1u8; n])
}

#[inline(never)]
fn nest(depth: usize) -> Vec<u8> {
    if depth == 0 {
        allocate(4096)
    } else {
        black_box(nest(depth - 1))
    }
}

#[test]
fn module_functions_behave_as_tracemalloc() {
    assert!(
        tracealloc::is_tracing(),
        "tracing from the first allocation"
    );
    assert_eq!(tracealloc::traceback_limit(), tracealloc::DEFAULT_FRAMES);
    // The peak breakdown costs a probe per allocation: off unless asked for.
    if std::env::var_os("TRACEALLOC_PEAK").is_none()
        && std::env::var_os("TRACEALLOC_REPORT").is_none()
        && std::env::var_os("TRACEALLOC_DUMP").is_none()
    {
        assert!(!tracealloc::peak_breakdown());
        assert!(matches!(
            tracealloc::peak_snapshot(),
            Err(Error::PeakNotKept)
        ));
        assert!(tracealloc::take_snapshot().unwrap().at_peak().is_none());
    }

    // Exact current and peak. The harness's main thread allocates just after spawning this
    // test's thread (seen once in CI: 900 B counted here under load); let it reach its
    // blocking receive first, as these figures are process-wide.
    std::thread::sleep(std::time::Duration::from_millis(100));
    tracealloc::clear_traces();
    assert_eq!((current(), peak()), (0, 0));
    let a = allocate(1 << 20);
    let b = allocate(1 << 19);
    assert_eq!(current(), (1 << 20) + (1 << 19));
    drop(a);
    assert_eq!(current(), 1 << 19);
    assert_eq!(
        peak(),
        (1 << 20) + (1 << 19),
        "the peak remembers both blocks"
    );
    tracealloc::reset_peak();
    assert_eq!(peak(), 1 << 19);
    let c = allocate(1000);
    drop(c);
    assert_eq!(peak(), (1 << 19) + 1000);

    // realloc re-attributes the block and its size.
    let mut grown = allocate(100);
    assert_eq!(current(), (1 << 19) + 100);
    grown.reserve_exact(100_000 - grown.len());
    assert_eq!(current(), (1 << 19) + grown.capacity());

    // Statistics by each grouping, against what is known to be live.
    let snapshot = quiet_snapshot();
    assert_eq!(snapshot.total_size(), current());
    let by_function = snapshot.statistics(GroupBy::Function);
    let alloc_fn = by_function
        .iter()
        .find(|s| is_fn(&s.traceback.call_site().function, "allocate"))
        .expect("a statistic for fn allocate");
    assert_eq!(alloc_fn.size, 1 << 19, "{alloc_fn}");
    assert_eq!(alloc_fn.count, 1);
    assert!(
        alloc_fn
            .to_string()
            .ends_with("allocate (tests/control.rs): size=512 KiB, count=1, average=512 KiB"),
        "{alloc_fn}"
    );
    let by_file = snapshot.statistics(GroupBy::File);
    let file = by_file
        .iter()
        .find(|s| &*s.traceback.call_site().filename == "tests/control.rs")
        .unwrap();
    assert_eq!(file.size, (1 << 19) + grown.capacity());
    assert_eq!(file.count, 2);
    assert!(
        file.to_string().starts_with("tests/control.rs:0: size="),
        "{file}"
    );
    let by_line = snapshot.statistics(GroupBy::Line);
    assert!(
        by_line
            .windows(2)
            .all(|w| (w[0].size, w[0].count) >= (w[1].size, w[1].count)),
        "sorted"
    );
    drop(b);

    // Traceback grouping and the limit: 8 frames of `nest` above the call site.
    let deep = nest(8);
    let snapshot = tracealloc::take_snapshot().unwrap();
    let by_traceback = snapshot.statistics(GroupBy::Traceback);
    let stat = by_traceback
        .iter()
        .find(|s| is_fn(&s.traceback.call_site().function, "allocate") && s.size == 4096)
        .unwrap();
    let functions: Vec<&str> = stat
        .traceback
        .frames()
        .iter()
        .map(|f| &*f.function)
        .collect();
    assert!(is_fn(functions[0], "allocate"), "{functions:?}");
    // nest(8) makes 9 calls; an optimizer may fold one level of the recursion.
    let nests = functions[1..]
        .iter()
        .take_while(|f| is_fn(f, "nest"))
        .count();
    assert!((8..=9).contains(&nests), "{functions:?}");
    // The test's frames and std's start-up frames below them take no room in the limit:
    // allocate, 8 or 9 nests, the test function and its closure.
    let shown = stat.traceback.frames().len();
    assert!((11..=14).contains(&shown), "{functions:?}");
    assert_eq!(stat.traceback.total_nframe(), shown);
    assert!(!stat.traceback.is_truncated());
    // 30 levels: the limit cuts, and the traceback says so.
    let deeper = nest(30);
    let snapshot = tracealloc::take_snapshot().unwrap();
    let stat = snapshot
        .traces()
        .iter()
        .find(|t| t.size == 4096 && t.traceback.total_nframe() > 30)
        .expect("a traceback 30 levels deep");
    assert_eq!(stat.traceback.frames().len(), 16);
    assert!(stat.traceback.is_truncated());
    drop(deeper);

    // start(n) while tracing applies n to later allocations.
    tracealloc::start(4).unwrap();
    assert_eq!(tracealloc::traceback_limit(), 4);
    let deep4 = nest(8);
    let snapshot = tracealloc::take_snapshot().unwrap();
    let tb = snapshot
        .traces()
        .iter()
        .find(|t| t.size == 4096 && t.traceback.frames().len() == 4)
        .expect("a 4-frame traceback");
    assert!(is_fn(&tb.traceback.frames()[3].function, "nest"));
    assert_eq!(snapshot.traceback_limit(), 4);
    drop((deep, deep4));
    assert!(matches!(
        tracealloc::start(0),
        Err(Error::InvalidFrameCount { requested: 0 })
    ));
    assert!(matches!(
        tracealloc::start(257),
        Err(Error::InvalidFrameCount { requested: 257 })
    ));
    assert_eq!(
        tracealloc::traceback_limit(),
        4,
        "a rejected start changes nothing"
    );
    tracealloc::start(16).unwrap();

    // stop clears; a snapshot is refused while stopped; start begins afresh.
    let kept = allocate(10_000);
    tracealloc::stop();
    assert!(!tracealloc::is_tracing());
    assert_eq!((current(), peak()), (0, 0));
    let err = tracealloc::take_snapshot().unwrap_err();
    assert!(matches!(err, Error::NotTracing), "{err}");
    assert!(err.to_string().contains("start"));
    let untraced = allocate(20_000);
    drop(kept);
    assert_eq!(current(), 0, "nothing is traced while stopped");
    tracealloc::start(16).unwrap();
    assert!(tracealloc::is_tracing());
    assert_eq!(
        tracealloc::traced_memory().allocated_blocks,
        0,
        "totals restart"
    );
    drop(untraced);
    assert_eq!(
        current(),
        0,
        "freeing a block from before start changes nothing"
    );
    let traced = allocate(30_000);
    assert_eq!(current(), 30_000);
    let site = tracealloc::object_traceback(traced.as_ptr()).unwrap();
    assert!(is_fn(&site.call_site().function, "allocate"), "{site}");
    drop(traced);

    // The tracer's own tables are counted and never traced.
    assert!(tracealloc::tracer_memory() > 0);
    assert_eq!(tracealloc::traced_memory().dropped_blocks, 0);
}
