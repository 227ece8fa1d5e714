//! Allocations at known lines land in `statistics(GroupBy::Line)` at exactly those lines, not in
//! `raw_vec.rs`, `alloc.rs` or on the `#[global_allocator]` line.
//!
//! CI runs this file four ways: debug and release (line tables), with frame pointers and without
//! (`RUSTFLAGS=""`, which exercises the unwinder fallback). `TRACEALLOC_EXPECT_CAPTURE`, when
//! set, is the capture mode the build must have picked.

#![allow(
    clippy::unnecessary_operation,
    reason = "`(call(), line = line!())` keeps a call and its line number on one line through rustfmt"
)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const FILE: &str = "tests/attribution.rs";

/// Bytes and blocks that the snapshot attributes to `line` of this file.
fn at_line(line: u32) -> (usize, usize) {
    let snapshot = tracealloc::take_snapshot().expect("tracing");
    let stats = snapshot.statistics(tracealloc::GroupBy::Line);
    stats
        .iter()
        .find(|s| {
            let f = s.traceback.call_site();
            &*f.filename == FILE && f.lineno == line
        })
        .map_or((0, 0), |s| (s.size, s.count))
}

fn assert_at_line(line: u32, at_least: usize) {
    let (size, _) = at_line(line);
    assert!(
        size >= at_least,
        "expected >= {at_least} B at {FILE}:{line}, found {size} B; statistics:\n{}",
        tracealloc::take_snapshot()
            .unwrap()
            .statistics(tracealloc::GroupBy::Line)
            .iter()
            .take(15)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn capture_mode_is_the_expected_one() {
    let _warm = black_box(Box::new(1u8));
    let mode = tracealloc::capture_mode().to_string();
    if let Ok(expected) = std::env::var("TRACEALLOC_EXPECT_CAPTURE") {
        assert_eq!(mode, expected);
    }
    assert_ne!(
        tracealloc::capture_mode(),
        tracealloc::CaptureMode::Undecided
    );
}

#[test]
fn vec_macro() {
    let (v, line) = (black_box(vec![7u8; 300_001]), line!());
    assert_at_line(line, 300_001);
    drop(v);
}

#[test]
fn vec_macro_zeroed() {
    let (v, line) = (black_box(vec![0u64; 30_011]), line!());
    assert_at_line(line, 30_011 * 8);
    drop(v);
}

#[test]
fn vec_with_capacity() {
    let (v, line) = (black_box(Vec::<u32>::with_capacity(50_021)), line!());
    assert_at_line(line, 50_021 * 4);
    drop(v);
}

#[test]
fn push_growth() {
    let mut v = Vec::new();
    let mut line = 0;
    for i in 0..100_003u64 {
        (v.push(black_box(i)), line = line!());
    }
    assert_at_line(line, 100_003 * 8);
    drop(v);
}

#[test]
fn format_macro() {
    let n = black_box(12_345usize);
    let (s, line) = (format!("{:>width$}", n, width = n), line!());
    assert_at_line(line, n);
    drop(s);
}

#[test]
fn box_new() {
    let (b, line) = (black_box(Box::new([3u8; 70_001])), line!());
    assert_at_line(line, 70_001);
    drop(b);
}

#[test]
fn collect() {
    let (v, line) = ((0..60_013u32).map(black_box).collect::<Vec<u32>>(), line!());
    assert_at_line(line, 60_013 * 4);
    drop(v);
}

#[test]
fn hashmap_insert_growth() {
    let mut map = HashMap::new();
    let mut line = 0;
    for i in 0..20_011u64 {
        (map.insert(black_box(i), i), line = line!());
    }
    // The table holds at least 16 bytes per entry.
    assert_at_line(line, 20_011 * 16);
    drop(map);
}

#[test]
fn btreemap_insert_node_splits() {
    let mut map = BTreeMap::new();
    let mut line = 0;
    for i in 0..40_009u64 {
        (map.insert(black_box(i), i), line = line!());
    }
    assert_at_line(line, 40_009 * 16);
    drop(map);
}

#[test]
fn clone() {
    let original = black_box(vec![5u16; 45_007]);
    let (copy, line) = (original.clone(), line!());
    assert_at_line(line, 45_007 * 2);
    drop((original, copy));
}

#[inline(never)]
fn repeat_in_generic<T: Clone>(value: T, n: usize) -> (Vec<T>, u32) {
    (vec![value; n], line!())
}

#[test]
fn inside_a_generic_fn() {
    let (v, line) = repeat_in_generic(black_box(9u32), 80_021);
    assert_at_line(line, 80_021 * 4);
    let (w, line) = repeat_in_generic(black_box(9u64), 80_021);
    assert_at_line(line, 80_021 * 8);
    drop((v, w));
}

#[test]
fn inside_a_closure() {
    let make = |n: usize| (black_box(vec![1u8; n]), line!());
    let (v, line) = make(black_box(90_001));
    assert_at_line(line, 90_001);
    drop(v);
}

#[test]
fn string_growth_in_a_loop() {
    let mut s = String::new();
    let mut line = 0;
    for _ in 0..10_007 {
        (s.push_str(black_box("abcdefgh")), line = line!());
    }
    assert_at_line(line, 10_007 * 8);
    drop(s);
}

#[inline(never)]
fn recurse(depth: u32) -> (Vec<u8>, u32) {
    if depth == 0 {
        (black_box(vec![2u8; 65_537]), line!())
    } else {
        let r = recurse(depth - 1);
        black_box(&r);
        r
    }
}

#[test]
fn deep_stack_keeps_its_call_site() {
    let (v, line) = recurse(black_box(60));
    assert_at_line(line, 65_537);
    drop(v);
}

#[test]
fn realloc_moves_the_block_to_the_realloc_site() {
    let mut v: Vec<u8> = Vec::with_capacity(black_box(1000));
    let (_, line) = (v.reserve_exact(black_box(200_003)), line!());
    assert!(v.capacity() >= 200_003);
    assert_at_line(line, 200_003);
    drop(v);
}

#[test]
fn nothing_lands_on_the_global_allocator_line_or_in_std() {
    let v = black_box(vec![0u8; 1 << 20]);
    let snapshot = tracealloc::take_snapshot().unwrap();
    for stat in snapshot.statistics(tracealloc::GroupBy::Line) {
        let site = stat.traceback.call_site();
        assert!(
            !(&*site.filename == FILE && site.lineno == 11),
            "attributed to the #[global_allocator] line: {stat}"
        );
        // The call site may be in std only when no frame outside std called it (the runtime's
        // own start-up allocations, test-harness threads); never for this file's blocks.
        if site.filename.contains("/library/") {
            assert!(
                stat.traceback.frames().iter().all(|f| &*f.filename != FILE),
                "{stat} has a frame in this file but its call site is in std"
            );
        }
    }
    drop(v);
}

#[test]
fn object_traceback_points_at_the_line() {
    let (b, line) = (black_box(Box::new([1u64; 1000])), line!());
    let traceback = tracealloc::object_traceback(&*b as *const [u64; 1000]).expect("traced");
    assert_eq!(&*traceback.call_site().filename, FILE);
    assert_eq!(traceback.call_site().lineno, line);
    assert!(traceback
        .frames()
        .iter()
        .any(|f| f.function.contains("object_traceback_points_at_the_line")));
    assert!(
        !traceback.machinery().is_empty(),
        "the allocator frames are kept"
    );
    assert!(tracealloc::object_traceback(0x10 as *const u8).is_none());
}
