//! Allocation totals taken while another thread allocates and frees temporaries stay coherent:
//! a stack never shows more temporary allocations than allocations, or more live and temporary
//! blocks together than it allocated, and every snapshot reloads from its own bytes (the loader
//! rejects a file with more temporaries than allocations). Two races the per-thread ledgers
//! opened, both found in review: a block live in the table's copy and freed as a temporary
//! before the totals are read, and an allocation caught between its ledger slot's preparation
//! and its insertion by a reset of the totals (`set_sampling` and `start` reset them). One
//! `#[test]`: the figures are process-wide.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use tracealloc::{GroupBy, Snapshot};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

static STOP: AtomicBool = AtomicBool::new(false);
static HOLD: AtomicBool = AtomicBool::new(false);
static HELD: AtomicBool = AtomicBool::new(false);

/// Allocates and frees a 64-byte block in a loop (each one a temporary) until `STOP`; parks
/// while `HOLD` is set, saying so in `HELD`.
#[inline(never)]
fn churn() {
    while !STOP.load(SeqCst) {
        if HOLD.load(SeqCst) {
            HELD.store(true, SeqCst);
            while HOLD.load(SeqCst) {
                std::hint::spin_loop();
            }
            HELD.store(false, SeqCst);
        }
        drop(black_box(vec![1u8; 64]));
    }
}

/// The incoherent stacks of `s`, described. Groups are matched by their frames: a group's
/// `traceback` is that of its largest stack, whose allocator-internal frames may differ.
fn incoherent(s: &Snapshot) -> Vec<String> {
    let allocated = s.allocation_statistics(GroupBy::Traceback).unwrap();
    let live = s.statistics(GroupBy::Traceback);
    let mut out = Vec::new();
    for t in s.temporary_statistics(GroupBy::Traceback).unwrap() {
        let total = allocated
            .iter()
            .find(|a| a.traceback.frames() == t.traceback.frames())
            .map_or(0, |a| a.count);
        let held = live
            .iter()
            .find(|l| l.traceback.frames() == t.traceback.frames())
            .map_or(0, |l| l.count);
        if t.count + held > total {
            out.push(format!(
                "{}: {} temporary + {held} live > {total} allocated",
                t.traceback.call_site(),
                t.count
            ));
        }
    }
    if let Err(e) = Snapshot::from_bytes(&s.to_bytes()) {
        out.push(format!("does not reload: {e}"));
    }
    out
}

#[test]
fn totals_stay_coherent_beside_a_thread_that_allocates() {
    let worker = std::thread::spawn(churn);
    // A large live table, so that its copy and the totals' copy are far apart in time.
    let n = if cfg!(debug_assertions) {
        50_000
    } else {
        200_000
    };
    let kept: Vec<Box<[u8; 32]>> = (0..n).map(|_| Box::new([0u8; 32])).collect();
    let mut bad = Vec::new();
    for _ in 0..40 {
        bad.extend(incoherent(&tracealloc::take_snapshot().unwrap()));
    }
    assert!(bad.is_empty(), "while it runs:\n{}", bad.join("\n"));
    drop(kept);

    // Resets of the totals while it allocates; each snapshot is taken with it parked, so the
    // figures are of a quiet process.
    for _ in 0..if cfg!(debug_assertions) { 100 } else { 300 } {
        tracealloc::set_sampling(Some(1)).unwrap();
        tracealloc::set_sampling(None).unwrap();
        std::thread::sleep(std::time::Duration::from_micros(200));
        HOLD.store(true, SeqCst);
        while !HELD.load(SeqCst) {
            std::hint::spin_loop();
        }
        bad.extend(incoherent(&tracealloc::take_snapshot().unwrap()));
        HOLD.store(false, SeqCst);
    }
    STOP.store(true, SeqCst);
    worker.join().unwrap();
    assert!(bad.is_empty(), "after resets:\n{}", bad.join("\n"));
}
