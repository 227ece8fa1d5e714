//! Poisson sampling: estimates per site within ±10% on a known workload (fixed seed), marked as
//! estimates, and heap assertions refused. One test, alone in its binary: the sampling's
//! random streams are per thread, numbered in the order threads first sample.

use std::hint::black_box;
use tracealloc::{Error, GroupBy, Snapshot, Statistic};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new().sampled(16 * 1024);

// Each site function allocates only its blocks (the vectors holding them are the caller's).

#[inline(never)]
fn medium(v: &mut Vec<Vec<u8>>, n: usize) {
    for i in 0..n {
        v.push(black_box(vec![i as u8; 1000])); // n × 1000 B
    }
}

#[inline(never)]
fn large(v: &mut Vec<Vec<u8>>, n: usize) {
    for i in 0..n {
        v.push(black_box(vec![i as u8; 100_000])); // n × 100,000 B
    }
}

#[inline(never)]
#[allow(clippy::vec_box, reason = "many separate small blocks are the point")]
fn small(v: &mut Vec<Box<[u8; 16]>>, n: usize) {
    for i in 0..n {
        v.push(black_box(Box::new([i as u8; 16]))); // n × 16 B
    }
}

fn site<'a>(stats: &'a [Statistic], function: &str, size: usize) -> &'a Statistic {
    stats
        .iter()
        .find(|s| s.traceback.call_site().function.ends_with(function))
        .unwrap_or_else(|| panic!("no statistic for {function} ({size} B blocks)"))
}

fn within(what: &str, estimate: usize, truth: usize) {
    let ratio = estimate as f64 / truth as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: estimate {estimate} vs {truth} (ratio {ratio:.3})"
    );
}

#[test]
fn sampling_estimates_each_site_within_ten_percent() {
    tracealloc::set_sampling_seed(0x7ACE_A110C);
    assert_eq!(tracealloc::sampling(), Some(16 * 1024));

    let mut a = Vec::with_capacity(25_000);
    let mut b = Vec::with_capacity(250);
    let mut c = Vec::with_capacity(1_600_000);
    medium(&mut a, 25_000);
    large(&mut b, 250);
    small(&mut c, 1_600_000);
    let snapshot = tracealloc::take_snapshot().unwrap();
    assert_eq!(snapshot.sampled(), Some(16 * 1024));
    assert!(
        snapshot.traces().len() < 10_000,
        "{} records for 1.6 M blocks: not a sample",
        snapshot.traces().len()
    );

    let stats = snapshot.statistics(GroupBy::Function);
    for (function, size, n) in [
        ("medium", 1000, 25_000),
        ("large", 100_000, 250),
        ("small", 16, 1_600_000),
    ] {
        let s = site(&stats, function, size);
        println!(
            "{function}: estimated {} B in {} blocks, true {} B in {n} blocks",
            s.size,
            s.count,
            size * n
        );
        within(&format!("{function}: bytes"), s.size, size * n);
        within(&format!("{function}: blocks"), s.count, n);
        assert!(s.estimated);
        assert!(
            s.to_string().contains(": size=~") && s.to_string().contains("count=~"),
            "estimates are marked: {s}"
        );
    }
    assert!(snapshot.notes().iter().any(|n| n.starts_with("sampled:")));
    assert!(snapshot
        .report(GroupBy::Line, 3)
        .to_string()
        .contains("sampled:"));

    // Counters are estimates too, and say so.
    let memory = tracealloc::traced_memory();
    assert_eq!(memory.sampled, Some(16 * 1024));
    let truth = 25_000 * 1000 + 250 * 100_000 + 1_600_000 * 16;
    assert!(
        memory.current as f64 > truth as f64 * 0.9,
        "current {} < 90% of {truth}",
        memory.current
    );

    // Freeing sampled blocks takes their estimates away.
    let before = tracealloc::traced_memory().current;
    drop(b);
    let after = tracealloc::traced_memory().current;
    within("freed estimate", before - after, 250 * 100_000);

    // A sampled snapshot survives a dump and a load, estimates and marks included.
    let reloaded = Snapshot::from_bytes(&snapshot.to_bytes()).unwrap();
    assert_eq!(reloaded.sampled(), Some(16 * 1024));
    assert_eq!(reloaded.statistics(GroupBy::Function), stats);

    // Heap assertions need exact data.
    let err = tracealloc::try_measure(|| black_box(vec![0u8; 10])).unwrap_err();
    assert!(matches!(err, Error::Sampled { mean: 16384 }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "heap assertions need exact tracing, and this tracer samples (one allocation per \
         16.0 KiB on average): use Tracer::new() without .sampled(), or call \
         tracealloc::set_sampling(None) first"
    );
    let panicked = std::panic::catch_unwind(|| {
        tracealloc::assert_peak_below!(1 << 20, black_box(vec![0u8; 10]));
    })
    .unwrap_err();
    let message = panicked
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("heap assertions need exact tracing"),
        "{message}"
    );

    // The runtime switch: exact again (the sampled traces are forgotten), then assertions work.
    assert!(matches!(
        tracealloc::set_sampling(Some(0)),
        Err(Error::InvalidSampleMean)
    ));
    tracealloc::set_sampling(None).unwrap();
    assert_eq!(tracealloc::sampling(), None);
    assert_eq!(tracealloc::traced_memory().current, 0);
    let (_, m) = tracealloc::measure(|| black_box(vec![0u8; 1000]));
    assert_eq!(m.peak(), 1000);
    let exact = tracealloc::take_snapshot().unwrap();
    assert_eq!(exact.sampled(), None);
    black_box((a, c));
}
