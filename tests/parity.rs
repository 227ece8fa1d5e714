//! tracemalloc parity on real snapshots: cumulative statistics (recursion counted once),
//! compare_to, filters, skip_frames, Traceback::format, dump and load.

use std::hint::black_box;
use tracealloc::{Error, Filter, GroupBy, Snapshot};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const FILE: &str = "tests/parity.rs";

fn is_fn(name: &str, wanted: &str) -> bool {
    name == wanted || name.ends_with(&format!("::{wanted}"))
}

/// Allocates 1000 B at the bottom of a recursion `depth` deep.
#[inline(never)]
fn recurse(depth: u32) -> Vec<u8> {
    if depth == 0 {
        black_box(vec![0u8; 1000])
    } else {
        black_box(recurse(depth - 1))
    }
}

#[test]
fn cumulative_statistics_count_a_recursive_function_once_per_trace() {
    let mut blocks = Vec::with_capacity(5);
    for _ in 0..5 {
        blocks.push(recurse(black_box(6)));
    }
    let snapshot = tracealloc::take_snapshot().unwrap();
    let ours = |s: &tracealloc::Statistic| is_fn(&s.traceback.call_site().function, "recurse");
    let plain = snapshot.statistics(GroupBy::Function);
    let plain = plain.iter().find(|s| ours(s)).unwrap();
    assert_eq!((plain.size, plain.count), (5000, 5));
    let cumulative = snapshot.cumulative_statistics(GroupBy::Function);
    let recursive = cumulative.iter().find(|s| ours(s)).unwrap();
    // 7 `recurse` frames per trace; tracemalloc would report 35000 B and 35 blocks.
    assert_eq!((recursive.size, recursive.count), (5000, 5), "{recursive}");
    let caller = cumulative
        .iter()
        .find(|s| {
            is_fn(
                &s.traceback.call_site().function,
                "cumulative_statistics_count_a_recursive_function_once_per_trace",
            )
        })
        .unwrap();
    assert!(
        caller.size >= 5000,
        "the caller includes its callees: {caller}"
    );
    // By line: the recursive call line holds each trace once too.
    let by_line = snapshot.cumulative_statistics(GroupBy::Line);
    let call_line = by_line
        .iter()
        .find(|s| {
            &*s.traceback.call_site().filename == FILE && s.traceback.call_site().lineno == 22
        })
        .expect("the line of the recursive call");
    assert_eq!((call_line.size, call_line.count), (5000, 5), "{call_line}");
    drop(blocks);
}

#[inline(never)]
fn grow(n: usize) -> Vec<u64> {
    black_box(vec![7u64; n])
}

#[inline(never)]
fn shrink_me(n: usize) -> Vec<u32> {
    black_box(vec![1u32; n])
}

#[test]
fn compare_to_sees_new_grown_shrunk_and_vanished_groups() {
    let gone = vec![shrink_me(100); 1];
    let mut keep = vec![grow(1000)];
    let shrinking = (0..4).map(|_| shrink_me(250)).collect::<Vec<_>>();
    let old = tracealloc::take_snapshot().unwrap();
    drop(gone);
    keep.push(grow(3000));
    let shrinking = shrinking.into_iter().take(1).collect::<Vec<_>>();
    let (fresh, fresh_line) = (black_box(vec![9u8; 12345]), line!());
    let new = tracealloc::take_snapshot().unwrap();

    let diffs = new.compare_to(&old, GroupBy::Function);
    let find = |name: &str| {
        diffs
            .iter()
            .find(|d| is_fn(&d.traceback.call_site().function, name))
            .unwrap_or_else(|| panic!("no diff for {name}"))
    };
    let grown = find("grow");
    assert_eq!(
        (grown.size, grown.size_diff, grown.count, grown.count_diff),
        (32000, 24000, 2, 1)
    );
    // shrink_me: old 100*4 + 4*250*4 = 4400 B in 5 blocks; new 1 block of 1000 B.
    let shrunk = find("shrink_me");
    assert_eq!(
        (
            shrunk.size,
            shrunk.size_diff,
            shrunk.count,
            shrunk.count_diff
        ),
        (1000, -3400, 1, -4)
    );
    assert!(
        shrunk
            .to_string()
            .ends_with("size=1000 B (-3400 B), count=1 (-4), average=1000 B"),
        "{shrunk}"
    );
    let by_line = new.compare_to(&old, GroupBy::Line);
    let appeared = by_line
        .iter()
        .find(|d| {
            d.traceback.call_site().lineno == fresh_line
                && &*d.traceback.call_site().filename == FILE
        })
        .expect("the new vec");
    assert_eq!(appeared.size, 12345);
    assert_eq!((appeared.size_diff, appeared.count_diff), (12345, 1));
    assert!(diffs
        .windows(2)
        .all(|w| w[0].size_diff.unsigned_abs() >= w[1].size_diff.unsigned_abs()));

    drop((keep, shrinking));
    let after = tracealloc::take_snapshot().unwrap();
    let diffs = after.compare_to(&new, GroupBy::Function);
    let vanished = diffs
        .iter()
        .find(|d| is_fn(&d.traceback.call_site().function, "grow"))
        .unwrap();
    assert_eq!(
        (
            vanished.size,
            vanished.size_diff,
            vanished.count,
            vanished.count_diff
        ),
        (0, -32000, 0, -2)
    );
    assert!(
        vanished
            .to_string()
            .ends_with("size=0 B (-31.2 KiB), count=0 (-2)"),
        "{vanished}"
    );
    drop(fresh);
}

#[inline(never)]
fn my_arena_alloc(n: usize) -> Vec<u8> {
    black_box(vec![3u8; n])
}

#[inline(never)]
fn first_user(n: usize) -> Vec<u8> {
    // black_box: a call in tail position becomes a jump in release builds, losing this frame.
    black_box(my_arena_alloc(n))
}

#[inline(never)]
fn second_user(n: usize) -> Vec<u8> {
    black_box(my_arena_alloc(n))
}

#[test]
fn skip_frames_moves_a_statistic_from_a_helper_to_its_callers() {
    let a = first_user(40_001);
    let b = second_user(50_003);
    let snapshot = tracealloc::take_snapshot().unwrap();
    let ours = |snap: &Snapshot, name: &str| {
        snap.statistics(GroupBy::Function)
            .into_iter()
            .find(|s| is_fn(&s.traceback.call_site().function, name))
            .map(|s| (s.size, s.count))
    };
    assert_eq!(ours(&snapshot, "my_arena_alloc"), Some((90_004, 2)));
    assert_eq!(ours(&snapshot, "first_user"), None);
    let moved = snapshot.skip_frames(&["*my_arena_alloc"]).unwrap();
    assert_eq!(ours(&moved, "my_arena_alloc"), None);
    assert_eq!(ours(&moved, "first_user"), Some((40_001, 1)));
    assert_eq!(ours(&moved, "second_user"), Some((50_003, 1)));
    assert_eq!(moved.total_size(), snapshot.total_size(), "no byte is lost");
    assert_eq!(moved.traces().len(), snapshot.traces().len());
    assert!(matches!(
        snapshot.skip_frames(&["[oops"]),
        Err(Error::InvalidPattern { .. })
    ));
    drop((a, b));
}

#[test]
fn include_and_exclude_filters_combine_as_tracemalloc() {
    let (kept, line) = (black_box(vec![1u8; 77_777]), line!());
    let snapshot = tracealloc::take_snapshot().unwrap();
    let only_ours = snapshot.filter_traces(&[Filter::include("tests/parity.rs").unwrap()]);
    assert!(only_ours
        .traces()
        .iter()
        .all(|t| &*t.traceback.call_site().filename == FILE));
    assert!(only_ours.traces().iter().any(|t| t.size == 77_777));
    // The full path matches too.
    let by_path = snapshot.filter_traces(&[Filter::include("*/tests/parity.rs").unwrap()]);
    assert_eq!(by_path.traces().len(), only_ours.traces().len());
    // include OR include, minus exclude with a line.
    let std_or_ours = snapshot.filter_traces(&[
        Filter::include("tests/*").unwrap(),
        Filter::include("/rustc/*").unwrap(),
        Filter::exclude("tests/parity.rs").unwrap().lineno(line),
    ]);
    assert!(std_or_ours.traces().iter().all(|t| {
        let f = t.traceback.call_site();
        (f.filename.starts_with("tests/") || f.filename.starts_with("/rustc/"))
            && !(&*f.filename == FILE && f.lineno == line)
    }));
    assert!(!std_or_ours.traces().iter().any(|t| t.size == 77_777));
    // all_frames: the test function is somewhere up the stack of its allocation.
    let up_the_stack = snapshot.filter_traces(&[Filter::include("tests/parity.rs")
        .unwrap()
        .lineno(line)
        .all_frames(true)]);
    assert!(up_the_stack.traces().iter().any(|t| t.size == 77_777));
    assert_eq!(
        snapshot.filter_traces(&[]).traces().len(),
        snapshot.traces().len()
    );
    for bad in ["", "[unclosed", "a***b"] {
        let err = Filter::exclude(bad).unwrap_err();
        assert!(
            matches!(err, Error::InvalidPattern { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    drop(kept);
}

#[test]
fn traceback_format_renders_python_style_lines() {
    let (block, line) = (recurse(black_box(2)), 20u32);
    let tb = tracealloc::object_traceback(block.as_ptr()).unwrap();
    assert_eq!(tb.call_site().lineno, line);
    let lines = tb.format(Some(2), true);
    assert!(
        lines[0].starts_with(&format!("  File \"{FILE}\", line {line}, in ")),
        "{lines:?}"
    );
    assert_eq!(lines[1], "    black_box(vec![0u8; 1000])");
    assert!(
        lines[2].starts_with(&format!("  File \"{FILE}\", line 22, in ")),
        "{lines:?}"
    );
    let oldest_first = tb.format(Some(2), false);
    assert_eq!(
        oldest_first[2], lines[0],
        "most_recent_first=false puts the call site last"
    );
    assert!(tb.total_nframe() >= 3);
    drop(block);
}

#[test]
fn dump_and_load_round_trip() {
    let kept: Vec<Vec<u8>> = (0..10).map(|i| recurse(black_box(i))).collect();
    let snapshot = tracealloc::take_snapshot().unwrap();
    let dir = std::env::temp_dir().join(format!("tracealloc-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snapshot.tracealloc");
    snapshot.dump(&path).unwrap();
    let loaded = Snapshot::load(&path).unwrap();
    assert_eq!(loaded, snapshot);
    assert_eq!(
        loaded.statistics(GroupBy::Traceback),
        snapshot.statistics(GroupBy::Traceback)
    );
    assert_eq!(
        loaded
            .compare_to(&snapshot, GroupBy::Line)
            .iter()
            .filter(|d| d.size_diff != 0)
            .count(),
        0
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().count() == 1,
        "no temporary file left behind"
    );
    let missing = Snapshot::load(dir.join("missing")).unwrap_err();
    assert!(
        matches!(missing, Error::Io { .. }) && missing.to_string().contains("missing"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    drop(kept);
}
