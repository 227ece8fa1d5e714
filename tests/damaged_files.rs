//! Every damaged snapshot file under tests/damaged/ (written by tests/damaged/make.py, an
//! independent writer of the format) is refused with its own error and byte offset; the valid
//! one loads with the expected contents. No global allocator needed: loading is pure.

use std::path::Path;
use tracealloc::{Error, GroupBy, Snapshot};

fn load(name: &str) -> Result<Snapshot, Error> {
    Snapshot::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/damaged")
            .join(name),
    )
}

#[test]
fn the_largest_sampling_mean_gives_huge_estimates_and_every_analysis_runs() {
    // The fuzzer found a file whose sampling mean made estimates overflow `compare_to`'s
    // arithmetic; means above 1 TiB are now refused at load and the sums saturate.
    let snapshot = load("sampled_extreme.tracealloc").unwrap();
    assert_eq!(snapshot.sampled(), Some(1 << 40));
    let empty = Snapshot::from_bytes(
        &snapshot
            .filter_traces(&[tracealloc::Filter::include("nothing").unwrap()])
            .to_bytes(),
    )
    .unwrap();
    for group_by in [GroupBy::Line, GroupBy::Traceback] {
        let stats = snapshot.statistics(group_by);
        assert!(stats[0].size >= 1 << 40 && stats[0].estimated);
        assert_eq!(
            snapshot.compare_to(&empty, group_by)[0].size_diff,
            stats[0].size.min(i64::MAX as usize) as i64
        );
        assert!(empty.compare_to(&snapshot, group_by)[0].size_diff < 0);
        snapshot.allocation_statistics(group_by).unwrap();
    }
    snapshot.allocated_total().unwrap();
}

#[test]
fn a_version_1_file_loads_without_allocation_totals() {
    let snapshot = load("valid_v1.tracealloc").unwrap();
    assert_eq!(snapshot.total_size(), 2112);
    assert!(!snapshot.has_allocation_totals());
    assert_eq!(snapshot.allocated_total(), None);
    assert_eq!(snapshot.duration(), None);
    assert!(snapshot.allocation_statistics(GroupBy::Line).is_none());
}

#[test]
fn a_version_3_file_and_a_switched_off_peak_load() {
    let v3 = load("valid_v3.tracealloc").unwrap();
    let v4 = load("valid_v4.tracealloc").unwrap();
    assert_eq!(v3, v4, "version 4 reads version 3's layout");
    // Before version 5, a file does not say which program took it, or when.
    assert_eq!(
        (v4.program(), v4.taken_at(), v4.command_line()),
        (None, None, None)
    );
    let v5 = load("valid_v5.tracealloc").unwrap();
    assert_eq!(v5.statistics(GroupBy::Line), v4.statistics(GroupBy::Line));
    let v6 = load("valid.tracealloc").unwrap();
    assert_eq!(v6.statistics(GroupBy::Line), v5.statistics(GroupBy::Line));
    assert_eq!(v6.command_line(), v5.command_line());
    // The breakdown was switched off: the report says so, not merely nothing.
    let off = load("peak_switched_off.tracealloc").unwrap();
    assert!(off.at_peak().is_none());
    let report = off.summary(3).to_string();
    assert!(
        report.contains("no breakdown of the peak: it was switched off"),
        "{report}"
    );
    assert!(!v3.summary(3).to_string().contains("switched off"));
    // And it is written back as it was read.
    let original = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/damaged/peak_switched_off.tracealloc"),
    )
    .unwrap();
    assert_eq!(off.to_bytes(), original);
}

/// Version 6's block lifetimes reach DHAT's viewer; version 5 has none, and says so.
#[cfg(feature = "dhat")]
#[test]
fn version_6_lifetimes_reach_dhat() {
    let dhat = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &load(name)
                .unwrap()
                .dhat_json(tracealloc::Metric::Allocated)
                .unwrap(),
        )
        .unwrap()
    };
    let v6 = dhat("valid.tracealloc");
    assert_eq!(v6["bklt"], true);
    // The peak 1.25 s after the start, the snapshot at 2.5 s.
    assert_eq!(
        (&v6["tg"], &v6["te"]),
        (&1_250_000.into(), &2_500_000.into())
    );
    let pp = &v6["pps"][0];
    // 7.5 s of lifetimes in µs; 8192 B in 4 blocks at the peak, 2112 B in 2 at the end.
    assert_eq!(pp["tl"], 7_500_000);
    assert_eq!((&pp["gb"], &pp["gbk"]), (&8192.into(), &4.into()));
    assert_eq!((&pp["eb"], &pp["ebk"]), (&2112.into(), &2.into()));
    assert_eq!((&pp["mb"], &pp["mbk"]), (&8192.into(), &4.into()));
    assert_eq!(dhat("valid_v5.tracealloc")["bklt"], false);
}

#[test]
fn a_version_2_file_loads_without_the_peak() {
    let snapshot = load("valid_v2.tracealloc").unwrap();
    assert_eq!(snapshot.allocated_total(), Some((2112 + 4096, 5)));
    assert_eq!(snapshot.peak_size(), None);
    assert!(snapshot.at_peak().is_none());
    assert!(snapshot.size_histogram().is_none());
    // Unknown, not "none": version 2 did not count them.
    assert!(snapshot.temporary_statistics(GroupBy::Line).is_none());
}

#[test]
fn the_independently_written_valid_file_loads() {
    let snapshot = load("valid.tracealloc").unwrap();
    // Version 5: the program that took it, and when.
    assert_eq!(snapshot.program(), Some("/srv/app/bin/app"));
    assert_eq!(snapshot.command_line(), Some(("app --port 8080", 4242)));
    assert_eq!(
        snapshot.taken_at(),
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_796_000_000_123_456_789))
    );
    // The peak: 8192 B in 4 blocks of the one stack, 1.25 s after tracing started.
    assert_eq!(snapshot.peak_size(), Some(8192));
    assert_eq!(
        snapshot.peak_time(),
        Some(std::time::Duration::from_millis(1250))
    );
    let peak = snapshot.at_peak().unwrap();
    assert_eq!(
        peak.statistics(GroupBy::Line)[0].to_string(),
        "src/main.rs:41: size=8192 B, count=4, average=2048 B"
    );
    let temporary = snapshot.temporary_statistics(GroupBy::Line).unwrap();
    assert_eq!((temporary[0].size, temporary[0].count), (1024, 1));
    let sizes = snapshot.size_histogram().unwrap();
    assert_eq!(sizes.len(), 13);
    assert_eq!((sizes[7].min, sizes[7].max, sizes[7].blocks), (64, 127, 1));
    assert_eq!(
        (sizes[12].min, sizes[12].max, sizes[12].blocks),
        (2048, 4095, 4)
    );
    // 2 live blocks (2112 B) and 3 released ones (4096 B) from the same stack.
    assert_eq!(snapshot.allocated_total(), Some((2112 + 4096, 5)));
    assert_eq!(
        snapshot.duration(),
        Some(std::time::Duration::from_millis(2500))
    );
    let allocated = snapshot.allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(
        allocated[0].to_string(),
        "src/main.rs:41: size=6208 B, count=5, average=1242 B"
    );
    assert_eq!(snapshot.traces().len(), 2);
    assert_eq!(snapshot.total_size(), 2112);
    assert_eq!(snapshot.traceback_limit(), 16);
    let stats = snapshot.statistics(GroupBy::Line);
    assert_eq!(stats.len(), 1);
    assert_eq!(
        stats[0].to_string(),
        "src/main.rs:41: size=2112 B, count=2, average=1056 B"
    );
    let frames = stats[0].traceback.frames();
    assert_eq!(&*frames[0].path, "/home/u/app/src/main.rs");
    let by_traceback = snapshot.statistics(GroupBy::Traceback);
    let callers: Vec<String> = by_traceback[0]
        .traceback
        .frames()
        .iter()
        .map(|f| format!("{f} in {}", f.function))
        .collect();
    assert_eq!(
        callers,
        [
            "src/main.rs:41 in app::parse",
            "src/main.rs:12 in app::main"
        ]
    );
    // And what we write back is byte for byte what the independent writer wrote.
    let original =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/damaged/valid.tracealloc"))
            .unwrap();
    assert_eq!(snapshot.to_bytes(), original);
}

#[test]
fn every_damaged_file_gets_its_own_error() {
    let cases: &[(&str, u64, &str)] = &[
        ("empty.bin", 0, "truncated while reading the magic number"),
        ("wrong_magic.bin", 0, "wrong magic number"),
        ("unknown_version.bin", 8, "unknown format version 99"),
        (
            "truncated.bin",
            189,
            "truncated: the header announces 175 bytes of body, the file has 165",
        ),
        (
            "trailing_bytes.bin",
            199,
            "3 unexpected bytes after the end",
        ),
        ("bad_checksum.bin", 20, "checksum mismatch"),
        (
            "absurd_string_count.bin",
            33,
            "absurd count of strings: 4294967295",
        ),
        ("bad_utf8.bin", 45, "not valid UTF-8"),
        (
            "string_index_out_of_range.bin",
            0,
            "a frame's file name: index 9 out of range (only 4)",
        ),
        (
            "call_site_outside.bin",
            0,
            "call site 5 outside a traceback of 2 frames",
        ),
        (
            "bad_snapshot_limit.bin",
            24,
            "traceback limit 0 outside 1..=256",
        ),
        ("unknown_capture_mode.bin", 28, "unknown capture mode 7"),
        (
            "absurd_trace_count.bin",
            0,
            "absurd count of traces: 1152921504606846976",
        ),
        (
            "bad_truncation_flag.bin",
            0,
            "truncation flag 2 is neither 0 nor 1",
        ),
        (
            "sizes_overflow.bin",
            0,
            "the trace sizes add up to more than any process can hold",
        ),
        (
            "traceback_index_out_of_range.bin",
            0,
            "a trace's traceback: index 3 out of range (only 1)",
        ),
        (
            "bad_totals_flag.bin",
            0,
            "allocation-totals flag 5 is neither 0 nor 1",
        ),
        ("zero_block_total.bin", 0, "an allocation total of 0 blocks"),
        (
            "total_traceback_out_of_range.bin",
            0,
            "a total's traceback: index 7 out of range (only 1)",
        ),
        (
            "totals_overflow.bin",
            0,
            "the allocation totals overflow 64 bits",
        ),
        (
            "bad_duration_flag.bin",
            0,
            "duration flag 9 is neither 0 nor 1",
        ),
        (
            "absurd_sampling_mean.bin",
            0,
            "sampling mean 1099511627777 is beyond any real one",
        ),
        (
            "bad_frame_flags.bin",
            0,
            "frame flags 0x6 have unknown bits",
        ),
        (
            "v1_with_totals.bin",
            0,
            "bytes left over after the last trace",
        ),
        ("bad_peak_flag.bin", 0, "peak flag 3 is not 0, 1 or 2"),
        ("bad_origin_flag.bin", 0, "origin flag 7 is neither 0 nor 1"),
        (
            "origin_not_utf8.bin",
            0,
            "the program's path is not valid UTF-8",
        ),
        ("v3_peak_flag_2.bin", 0, "peak flag 2 is neither 0 nor 1"),
        ("zero_block_peak_group.bin", 0, "a peak group of 0 blocks"),
        (
            "peak_traceback_out_of_range.bin",
            0,
            "a peak group's traceback: index 9 out of range (only 1)",
        ),
        (
            "too_many_size_buckets.bin",
            0,
            "66 size buckets (there are 65)",
        ),
        (
            "temporaries_exceed_totals.bin",
            0,
            "more temporary allocations than allocations",
        ),
        (
            "bad_lifetimes_flag.bin",
            0,
            "lifetimes flag 4 is neither 0 nor 1",
        ),
        (
            "lifetime_traceback_out_of_range.bin",
            0,
            "a lifetime's traceback: index 2 out of range (only 1)",
        ),
        (
            "absurd_lifetime_count.bin",
            0,
            "absurd count of lifetimes: 1099511627776",
        ),
    ];
    let mut problems = std::collections::HashSet::new();
    for &(name, offset, expected) in cases {
        match load(name) {
            Err(Error::Corrupt {
                offset: at,
                problem,
            }) => {
                assert!(
                    problem.contains(expected),
                    "{name}: {problem:?} does not say {expected:?}"
                );
                if offset != 0 {
                    assert_eq!(at, offset, "{name}: {problem}");
                }
                assert!(
                    at <= std::fs::metadata(
                        Path::new(env!("CARGO_MANIFEST_DIR"))
                            .join("tests/damaged")
                            .join(name)
                    )
                    .unwrap()
                    .len()
                );
                assert!(
                    problems.insert(problem),
                    "{name}: the same message as another case"
                );
            }
            other => panic!("{name}: expected Error::Corrupt, got {other:?}"),
        }
    }
    let listed: std::collections::HashSet<&str> = cases.iter().map(|c| c.0).collect();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/damaged")).unwrap()
    {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".bin") {
            assert!(
                listed.contains(name.as_str()),
                "{name} has no expected error"
            );
        }
    }
}

#[test]
fn every_truncation_and_every_flipped_byte_is_an_error_not_a_panic() {
    for name in [
        "valid.tracealloc",
        "valid_v1.tracealloc",
        "sampled_extreme.tracealloc",
    ] {
        damage_every_way(name);
    }
}

fn damage_every_way(name: &str) {
    let valid = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/damaged")
            .join(name),
    )
    .unwrap();
    for len in 0..valid.len() {
        assert!(
            Snapshot::from_bytes(&valid[..len]).is_err(),
            "a prefix of {len} bytes loaded"
        );
    }
    for i in 0..valid.len() {
        for bit in 0..8 {
            let mut damaged = valid.clone();
            damaged[i] ^= 1 << bit;
            assert!(
                Snapshot::from_bytes(&damaged).is_err(),
                "flipping bit {bit} of byte {i} went unnoticed"
            );
        }
    }
}
