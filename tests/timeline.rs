//! `Timeline`: traced and resident memory sampled on a background thread.

use std::hint::black_box;
use std::time::Duration;
use tracealloc::{Error, Timeline};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const BIG: usize = 24 << 20;

#[test]
fn the_timeline_sees_a_block_come_and_go() {
    let timeline = Timeline::start(Duration::from_millis(2)).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let before = tracealloc::traced_memory().current;
    let big = black_box(vec![1u8; BIG]);
    std::thread::sleep(Duration::from_millis(60));
    drop(big);
    std::thread::sleep(Duration::from_millis(60));
    let series = timeline.stop();

    let samples = &series.samples;
    assert!(samples.len() >= 10, "{} samples", samples.len());
    assert!(
        samples.windows(2).all(|w| w[0].at <= w[1].at),
        "in time order"
    );
    let highest = series.highest().unwrap();
    // Other tests in this binary may hold memory too; the block is at least what was added.
    assert!(
        highest.current >= before + BIG,
        "highest {} < {before} + {BIG}",
        highest.current
    );
    let last = samples.last().unwrap();
    assert!(
        last.current < highest.current - BIG / 2,
        "the block was freed"
    );
    assert!(samples.iter().all(|s| s.peak >= s.current));
    if cfg!(target_os = "linux") {
        // The block was written, so it was resident while held (not necessarily at the
        // first sample that saw it allocated: the pages fill as they are written).
        let most_resident = samples.iter().filter_map(|s| s.resident).max().unwrap();
        assert!(most_resident >= BIG, "{most_resident}");
    }

    let csv = series.to_csv();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("seconds,current_bytes,peak_bytes,resident_bytes")
    );
    assert_eq!(lines.count(), samples.len());
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row.len(), 4);
    assert_eq!(row[1].parse::<usize>().unwrap(), samples[0].current);

    #[cfg(feature = "timeline")]
    {
        let svg = series.svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        assert!(svg.contains("tracealloc timeline"));
        let label = format!(
            "peak {} at",
            tracealloc::format_size(highest.current as f64, false)
        );
        assert!(svg.contains(&label), "the peak is labelled: {label}");
        assert!(svg.contains("<polyline"), "lines drawn");
    }
}

#[test]
fn intervals_under_a_millisecond_are_refused() {
    let err = Timeline::start(Duration::from_micros(10)).unwrap_err();
    assert!(matches!(err, Error::InvalidInterval { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "a timeline interval must be at least 1 ms, got 10µs"
    );
}
