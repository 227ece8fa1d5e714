//! What was live at the peak (`peak_snapshot`, `Snapshot::at_peak`), temporary allocations and
//! the size histogram, exact for known workloads. One `#[test]`, run in order: the figures are
//! process-wide.

use std::hint::black_box;
use std::sync::Barrier;
use tracealloc::{GroupBy, Snapshot, Statistic};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new().peak_breakdown(true);

const MIB: usize = 1 << 20;

/// The line statistic of this file at `line`, if any.
fn at_line(stats: &[Statistic], line: u32) -> Option<&Statistic> {
    stats.iter().find(|s| {
        let f = s.traceback.call_site();
        f.filename.ends_with("peak.rs") && f.lineno == line
    })
}

/// Runs `f` until it answers `Ok` (at most 50 times): libtest's main thread allocates now and
/// then, which shows in process-wide figures. A real miscount answers `Err` every time, and
/// the test fails with the last one.
fn quietly<T>(mut f: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..50 {
        match f() {
            Ok(out) => return out,
            Err(e) => last = e,
        }
    }
    panic!("{last}");
}

#[inline(never)]
fn big_buffer() -> (Vec<u8>, u32) {
    (black_box(vec![7u8; 48 * MIB]), line!())
}

#[inline(never)]
fn half_buffer_a() -> (Vec<u8>, u32) {
    (black_box(vec![1u8; 24 * MIB]), line!())
}

#[inline(never)]
fn half_buffer_b() -> (Vec<u8>, u32) {
    (black_box(vec![2u8; 24 * MIB]), line!())
}

#[inline(never)]
fn small_thing() -> Box<[u8; 64]> {
    black_box(Box::new([0u8; 64]))
}

#[inline(never)]
fn temporaries(n: usize) -> u32 {
    let line = line!() + 2;
    for i in 0..n {
        let v = black_box(vec![i as u8; 100]);
        drop(v);
    }
    line
}

/// Two blocks alive at once, freed in order: the first is not temporary (the second was
/// allocated before it was freed); the second is, as heaptrack counts.
#[inline(never)]
fn overlapping(n: usize) -> (u32, u32) {
    let first = line!() + 3;
    let second = line!() + 3;
    for _ in 0..n {
        let a = black_box(vec![1u8; 30]);
        let b = black_box(vec![2u8; 30]);
        drop(a);
        drop(b);
    }
    (first, second)
}

#[test]
fn the_peak_temporaries_and_sizes_are_exact() {
    // Let the harness's main thread settle.
    std::thread::sleep(std::time::Duration::from_millis(100));

    // One thread: a 48 MiB peak at a known line, freed; then small things kept.
    let (peak, line) = quietly(|| {
        tracealloc::reset_peak();
        let (buffer, line) = big_buffer();
        drop(buffer);
        let kept: Vec<Box<[u8; 64]>> = (0..100).map(|_| small_thing()).collect();
        let peak = tracealloc::peak_snapshot().unwrap();
        let traced = tracealloc::traced_memory().peak;
        drop(kept);
        if peak.total_size() != traced {
            return Err(format!(
                "the peak snapshot holds {} B, the traced peak is {traced} B",
                peak.total_size()
            ));
        }
        Ok((peak, line))
    });
    let by_line = peak.statistics(GroupBy::Line);
    let stat = at_line(&by_line, line).expect("the 48 MiB line is in the peak snapshot");
    assert_eq!((stat.size, stat.count), (48 * MIB, 1));
    assert_eq!(by_line[0].size, 48 * MIB, "the biggest line at the peak");
    // It knows it is the peak.
    assert_eq!(peak.peak_size(), Some(peak.total_size()));
    assert!(peak.peak_time().is_some());
    let now = tracealloc::take_snapshot().unwrap();
    assert!(at_line(&now.statistics(GroupBy::Line), line).is_none());
    // The same breakdown rides along in every snapshot, and in its dump.
    let carried = now.at_peak().expect("a live snapshot carries the peak");
    assert_eq!(
        at_line(&carried.statistics(GroupBy::Line), line).map(|s| s.size),
        Some(48 * MIB)
    );
    assert!(now.peak_time().is_some());
    let loaded = Snapshot::from_bytes(&now.to_bytes()).unwrap();
    assert_eq!(loaded.peak_size(), now.peak_size());
    assert_eq!(
        loaded.at_peak().unwrap().statistics(GroupBy::Line),
        carried.statistics(GroupBy::Line)
    );
    // The peak snapshot itself works like any snapshot.
    let grew = now.compare_to(&peak, GroupBy::Line);
    let diff = grew
        .iter()
        .find(|d| d.traceback.call_site().lineno == line)
        .unwrap();
    assert_eq!(diff.size_diff, -(48 * MIB as i64));

    // Two threads holding 24 MiB each at once: both lines are at the peak.
    let (a_line, b_line, peak) = {
        tracealloc::reset_peak();
        let barrier = Barrier::new(2);
        let lines = std::thread::scope(|s| {
            let a = s.spawn(|| {
                let (v, line) = half_buffer_a();
                barrier.wait();
                drop(v);
                line
            });
            let b = s.spawn(|| {
                let (v, line) = half_buffer_b();
                barrier.wait();
                drop(v);
                line
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        (lines.0, lines.1, tracealloc::peak_snapshot().unwrap())
    };
    let by_line = peak.statistics(GroupBy::Line);
    for line in [a_line, b_line] {
        let stat = at_line(&by_line, line).expect("both threads' lines at the peak");
        assert_eq!((stat.size, stat.count), (24 * MIB, 1));
    }
    // Under concurrency, what another thread does at the very instant of the peak may fall on
    // either side; here the other threads only spawn and join (a few small blocks).
    let traced = tracealloc::traced_memory().peak;
    assert!(
        peak.total_size().abs_diff(traced) <= 64 * 1024,
        "peak snapshot {} vs traced peak {traced}",
        peak.total_size()
    );

    // `reset_peak` starts a new one: what is live now, then a new high.
    let after_reset = quietly(|| {
        tracealloc::reset_peak();
        let p = tracealloc::peak_snapshot().unwrap();
        let current = tracealloc::traced_memory().current;
        if p.total_size() != current {
            return Err(format!(
                "after reset_peak the peak snapshot holds {} B, {current} B are live",
                p.total_size()
            ));
        }
        Ok(p)
    });
    assert!(at_line(&after_reset.statistics(GroupBy::Line), a_line).is_none());
    let (buffer, line) = big_buffer();
    drop(buffer);
    let p = tracealloc::peak_snapshot().unwrap();
    assert!(at_line(&p.statistics(GroupBy::Line), line).is_some());
    assert!(at_line(&p.statistics(GroupBy::Line), a_line).is_none());

    // Temporaries: a block freed before its thread allocates again.
    let temporary_line = temporaries(1000);
    let (first, second) = overlapping(500);
    let snapshot = tracealloc::take_snapshot().unwrap();
    let temporary = snapshot.temporary_statistics(GroupBy::Line).unwrap();
    let stat = at_line(&temporary, temporary_line).expect("the temporaries' line");
    assert_eq!((stat.count, stat.size), (1000, 100_000));
    assert!(at_line(&temporary, first).is_none(), "overlapping blocks");
    assert_eq!(at_line(&temporary, second).map(|s| s.count), Some(500));

    // Sizes: exact buckets for known requests.
    let mut held: Vec<Box<[u8]>> = Vec::with_capacity(200);
    let bucket = |snapshot: &Snapshot, min: u64| {
        snapshot
            .size_histogram()
            .unwrap()
            .iter()
            .find(|b| b.min == min)
            .map_or(0, |b| b.blocks)
    };
    let (before, after) = quietly(|| {
        held.clear();
        let blocks = tracealloc::traced_memory().allocated_blocks;
        let before = tracealloc::take_snapshot().unwrap();
        for _ in 0..100 {
            held.push(black_box(vec![0u8; 3000].into_boxed_slice()));
        }
        for _ in 0..10 {
            held.push(black_box(vec![0u8; 1].into_boxed_slice()));
        }
        let after = tracealloc::take_snapshot().unwrap();
        let made = tracealloc::traced_memory().allocated_blocks - blocks;
        if made != 110 {
            return Err(format!("{made} blocks allocated instead of 110"));
        }
        Ok((before, after))
    });
    assert_eq!(bucket(&after, 2048) - bucket(&before, 2048), 100);
    assert_eq!(bucket(&after, 1) - bucket(&before, 1), 10);
    let total = |s: &Snapshot| {
        s.size_histogram()
            .unwrap()
            .iter()
            .map(|b| b.blocks)
            .sum::<u64>()
    };
    assert_eq!(total(&after) - total(&before), 110, "no other bucket moved");
    let buckets = after.size_histogram().unwrap();
    let b = buckets.iter().find(|b| b.min == 2048).unwrap();
    assert_eq!(b.max, 4095);
    drop(held);

    // The switch: off, no breakdown, and the totals and temporaries stay exact.
    tracealloc::set_peak_breakdown(false).unwrap();
    assert!(!tracealloc::peak_breakdown());
    assert!(matches!(
        tracealloc::peak_snapshot(),
        Err(tracealloc::Error::PeakNotKept)
    ));
    let before = tracealloc::take_snapshot().unwrap();
    assert!(before.at_peak().is_none());
    let temporary_line = temporaries(700);
    let (buffer, big_line) = big_buffer();
    drop(buffer);
    let after = tracealloc::take_snapshot().unwrap();
    let count = |s: &Snapshot, line: u32| {
        at_line(&s.temporary_statistics(GroupBy::Line).unwrap(), line).map_or(0, |s| s.count)
    };
    assert_eq!(
        count(&after, temporary_line) - count(&before, temporary_line),
        700
    );
    let allocated = |s: &Snapshot, line: u32| {
        at_line(&s.allocation_statistics(GroupBy::Line).unwrap(), line)
            .map_or((0, 0), |s| (s.size, s.count))
    };
    let (b0, n0) = allocated(&before, big_line);
    let (b1, n1) = allocated(&after, big_line);
    assert_eq!(
        (b1 - b0, n1 - n0),
        (48 * MIB, 1),
        "allocation totals while off"
    );
    // On again: a new peak from what is live now, counted from the live traces.
    let kept: Vec<Box<[u8; 64]>> = (0..50).map(|_| small_thing()).collect();
    let small_line = tracealloc::take_snapshot()
        .unwrap()
        .statistics(GroupBy::Line)
        .iter()
        .find(|st| (st.count, st.size) == (50, 50 * 64))
        .expect("the small things are live")
        .traceback
        .call_site()
        .lineno;
    let restarted = quietly(|| {
        tracealloc::set_peak_breakdown(true).unwrap();
        let p = tracealloc::peak_snapshot().unwrap();
        let current = tracealloc::traced_memory().current;
        if p.total_size() != current {
            return Err(format!(
                "after switching on, the peak snapshot holds {} B, {current} B are live",
                p.total_size()
            ));
        }
        Ok(p)
    });
    assert!(tracealloc::peak_breakdown());
    assert_eq!(
        at_line(&restarted.statistics(GroupBy::Line), small_line).map(|s| s.count),
        Some(50),
        "what was live when the breakdown came back"
    );
    let (buffer, line) = big_buffer();
    drop(buffer);
    drop(kept);
    let p = tracealloc::peak_snapshot().unwrap();
    assert_eq!(
        at_line(&p.statistics(GroupBy::Line), line).map(|s| s.size),
        Some(48 * MIB)
    );
}
