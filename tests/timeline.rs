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
        Some("seconds,current_bytes,peak_bytes,resident_bytes,tracer_bytes")
    );
    assert_eq!(lines.count(), samples.len());
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row.len(), 5);
    assert_eq!(row[1].parse::<usize>().unwrap(), samples[0].current);
    assert_eq!(row[4].parse::<usize>().unwrap(), samples[0].tracer);
    // The tracer's tables grew with the block's record and stack: never nothing while
    // something is traced.
    assert!(samples.iter().all(|s| s.tracer > 0));

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
        assert!(svg.contains("tracer&apos;s tables") || svg.contains("tracer's tables"));
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

/// Run by `from_the_environment` in a child process (does nothing in a normal run): holds a
/// 24 MiB block for a while, frees it, and exits; the timeline is written at exit.
#[test]
fn timeline_child() {
    if std::env::var_os("TIMELINE_CHILD").is_none() {
        return;
    }
    std::thread::sleep(Duration::from_millis(50));
    let big = black_box(vec![1u8; BIG]);
    std::thread::sleep(Duration::from_millis(80));
    drop(big);
    std::thread::sleep(Duration::from_millis(50));
}

/// `TRACEALLOC_TIMELINE=path` with no code: a CSV (and, with the feature, an SVG) written at
/// exit that saw the child's block; bad values are refused with a line on stderr.
#[cfg(target_os = "linux")]
#[test]
fn from_the_environment() {
    let dir = std::env::temp_dir().join(format!("tracealloc-timeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = |path: &std::path::Path, interval: &str| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "timeline_child", "--test-threads=1"])
            .env("TIMELINE_CHILD", "1")
            .env("TRACEALLOC_TIMELINE", path)
            .env("TRACEALLOC_TIMELINE_INTERVAL", interval)
            .output()
            .unwrap()
    };
    let csv = dir.join("memory.csv");
    let out = child(&csv, "5");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert!(
        rows.len() >= 20,
        "{} samples at 5 ms over ~180 ms",
        rows.len()
    );
    let highest = rows
        .iter()
        .map(|r| r[1].parse::<usize>().unwrap())
        .max()
        .unwrap();
    assert!(highest >= BIG, "the block was seen: {highest}");
    let last: usize = rows.last().unwrap()[1].parse().unwrap();
    assert!(last < BIG, "and its free: {last}");

    #[cfg(feature = "timeline")]
    {
        let svg = dir.join("memory.svg");
        let out = child(&svg, "5");
        assert!(out.status.success());
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("tracealloc timeline"));
    }

    let bad = dir.join("bad.csv");
    let out = child(&bad, "0");
    assert!(out.status.success(), "a bad value never stops the program");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "ignoring TRACEALLOC_TIMELINE: TRACEALLOC_TIMELINE_INTERVAL: expected milliseconds"
        ),
        "{stderr}"
    );
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
