//! `Snapshot::from_bytes` (what `Snapshot::load` runs) on arbitrary bytes: it must return an
//! error or a snapshot, never panic; a snapshot it returns must survive a write and a re-read
//! unchanged, and every analysis on it must run.
//!
//! Each input is tried twice: as it is, and with its header's length and CRC-32 fixed up to
//! match the body, so that the fuzzer explores the body parser instead of stopping at the
//! checksum.
//!
//!     cargo +nightly fuzz run load corpus/load ../tests/damaged

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracealloc::{Filter, GroupBy, Snapshot};

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 24 {
        let mut fixed = data.to_vec();
        let body_len = (data.len() - 24) as u64;
        fixed[12..20].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32(&data[24..]);
        fixed[20..24].copy_from_slice(&crc.to_le_bytes());
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let Ok(snapshot) = Snapshot::from_bytes(data) else {
        return;
    };
    let again = Snapshot::from_bytes(&snapshot.to_bytes()).expect("our own output loads");
    assert_eq!(again, snapshot);
    for group_by in [
        GroupBy::Line,
        GroupBy::File,
        GroupBy::Function,
        GroupBy::Traceback,
    ] {
        for stat in snapshot.statistics(group_by) {
            let _ = stat.to_string();
        }
        let _ = snapshot.cumulative_statistics(group_by);
        let empty = snapshot.filter_traces(&[Filter::include("/nothing/matches/this").unwrap()]);
        for diff in snapshot.compare_to(&empty, group_by) {
            let _ = diff.to_string();
        }
        for diff in empty.compare_to(&snapshot, group_by) {
            let _ = diff.to_string();
        }
    }
    let filtered = snapshot.filter_traces(&[Filter::exclude("*main*").unwrap().all_frames(true)]);
    let _ = filtered
        .skip_frames(&["*"])
        .unwrap()
        .report(GroupBy::Line, 5)
        .to_string();
    for trace in snapshot.traces() {
        let _ = trace.traceback.format(Some(-3), false);
        let _ = trace.traceback.format(None, true);
    }
}

/// CRC-32 (IEEE), bitwise: the fuzz target's own, independent of the crate's dependency.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
