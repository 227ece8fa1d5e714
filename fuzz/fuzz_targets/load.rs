//! `Snapshot::from_bytes` (what `Snapshot::load` runs) on arbitrary bytes: it must return an
//! error or a snapshot, never panic; a snapshot it returns must survive a write and a re-read
//! unchanged, and every analysis on it must run.
//!
//!     cargo +nightly fuzz run load fuzz/corpus/load tests/damaged

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracealloc::{Filter, GroupBy, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::from_bytes(data) else {
        return;
    };
    let again = Snapshot::from_bytes(&snapshot.to_bytes()).expect("our own output loads");
    assert_eq!(again, snapshot);
    for group_by in [GroupBy::Line, GroupBy::File, GroupBy::Function, GroupBy::Traceback] {
        for stat in snapshot.statistics(group_by) {
            let _ = stat.to_string();
        }
        let _ = snapshot.cumulative_statistics(group_by);
        for diff in snapshot.compare_to(&Snapshot::from_bytes(&[]).unwrap_or(again.clone()), group_by) {
            let _ = diff.to_string();
        }
    }
    let filtered = snapshot.filter_traces(&[Filter::exclude("*main*").unwrap()]);
    let _ = filtered.skip_frames(&["*"]).unwrap().report(GroupBy::Line, 5).to_string();
    for trace in snapshot.traces() {
        let _ = trace.traceback.format(Some(-3), false);
    }
});
