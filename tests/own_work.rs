//! The tracer's own output work is not the program's: after `dump`, `write_pprof`,
//! `write_dhat`, `write_flamegraph`, `summary`, the statistics and the comparisons, a
//! snapshot's allocation totals hold none of their allocations (flate2 and miniz_oxide's buffers, the encoders, the temporary files).
#![cfg(all(feature = "pprof", feature = "dhat", feature = "flamegraph"))]

use tracealloc::{GroupBy, Metric};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[test]
fn outputs_leave_no_allocations_in_the_profile() {
    let kept: Vec<String> = (0..200).map(|i| format!("{i:>40}")).collect();
    let dir = std::env::temp_dir().join(format!("tracealloc-own-work-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = tracealloc::take_snapshot().unwrap();
    let (bytes_before, blocks_before) = first.allocated_total().unwrap();

    first.dump(dir.join("heap.tracealloc")).unwrap();
    first.write_pprof(dir.join("heap.pb.gz")).unwrap();
    first
        .write_dhat(dir.join("dhat.json"), Metric::Live)
        .unwrap();
    first
        .write_flamegraph(dir.join("flame.svg"), Metric::Live)
        .unwrap();
    let text = first.summary(10).to_string();
    assert!(text.contains("tests/own_work.rs"), "{text}");
    let pprof = first.pprof_bytes().unwrap();
    assert!(pprof.len() > 100);
    drop(pprof);
    // The statistics and comparisons too: a program that reads them and dumps its heap at
    // exit should not find them at the top of its profile.
    for group_by in [GroupBy::Line, GroupBy::Traceback, GroupBy::Crate] {
        assert!(!first.statistics(group_by).is_empty());
        assert!(first.allocation_statistics(group_by).is_some());
        let _ = first.temporary_statistics(group_by);
        let _ = first.cumulative_statistics(group_by);
        let _ = first.compare_to(&first, group_by);
        let _ = first.report(group_by, 5);
    }

    let second = tracealloc::take_snapshot().unwrap();
    let (bytes_after, blocks_after) = second.allocated_total().unwrap();
    let allocated = second.allocation_statistics(GroupBy::Traceback).unwrap();
    let theirs: Vec<String> = allocated
        .iter()
        .filter(|s| {
            s.traceback.frames().iter().any(|f| {
                [
                    "tracealloc::",
                    "flate2",
                    "miniz_oxide",
                    "inferno",
                    "serde_json",
                ]
                .iter()
                .any(|n| f.function.contains(n))
            })
        })
        .map(|s| format!("{s}\n{}", s.traceback))
        .collect();
    assert!(
        theirs.is_empty(),
        "the outputs' allocations were traced:\n{}",
        theirs.join("\n")
    );
    // Between the two snapshots this test allocated only the summary's and the files'
    // names: a few blocks, not the thousands the encoders make.
    assert!(
        blocks_after - blocks_before < 40,
        "{} blocks, {} bytes allocated by the outputs' callers",
        blocks_after - blocks_before,
        bytes_after - bytes_before
    );

    // Reading a snapshot's frames makes each traceback's frame list on first use: the
    // snapshot's memory, not the program's, so a measurement of the reading counts none of it.
    let third = tracealloc::take_snapshot().unwrap();
    let (frames, reading) = tracealloc::measure(|| {
        let mut frames = 0;
        for trace in third.traces() {
            frames += trace.traceback.frames().len() + trace.traceback.machinery().len();
        }
        for stat in third.statistics(GroupBy::Traceback) {
            frames += stat.traceback.frames().len();
        }
        std::hint::black_box(frames)
    });
    assert!(frames > 0);
    assert_eq!(
        reading.allocations(),
        0,
        "reading the frames allocated {} blocks ({} B) in the program's name",
        reading.allocations(),
        reading.allocated()
    );
    drop(kept);
    std::fs::remove_dir_all(&dir).unwrap();
}
