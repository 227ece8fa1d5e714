//! Allocation totals per stack (what `allocation_statistics` and `temporary_statistics` read)
//! stay exact now that a free no longer counts them: each thread counts what a stack allocates
//! in its ledger, and a snapshot derives what was released as allocated minus live. Checked
//! where the ledgers could lose or double-count: more stacks than a ledger has slots (its
//! slots move their totals to the trace table as other stacks take them), threads that exit
//! (their ledgers are given back, and reused), `clear_traces`, and a reset of the totals. One `#[test]`, run in
//! order: the figures are process-wide.

use std::hint::black_box;
use tracealloc::{GroupBy, Snapshot, Statistic};

#[global_allocator]
// Deep enough for the tree below: ten levels of two frames, and the leaf.
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new().frames(40);

/// Blocks of this file's `line`, in `stats`: (count, size).
fn at_line(stats: &[Statistic], line: u32) -> (usize, usize) {
    stats
        .iter()
        .filter(|s| {
            let f = s.traceback.call_site();
            f.filename.ends_with("allocation_totals.rs") && f.lineno == line
        })
        .fold((0, 0), |(c, b), s| (c + s.count, b + s.size))
}

const DEPTH: u32 = 10;
/// Distinct stacks the tree below makes: twice the slots of a ledger (512).
const STACKS: usize = 1 << DEPTH;
const PER_STACK: usize = 3;

/// Allocates `PER_STACK` blocks of 100 bytes at one line, from one of `STACKS` distinct stacks
/// (the bits of `path` pick the call site at each level); keeps the last one.
#[inline(never)]
fn tree(path: u32, level: u32, kept: &mut Vec<Vec<u8>>) -> u32 {
    if level == 0 {
        let mut line = 0;
        for i in 0..PER_STACK {
            let (block, l) = (black_box(vec![i as u8; 100]), line!());
            line = l;
            if i + 1 == PER_STACK {
                kept.push(block);
            }
        }
        return line;
    }
    if path & 1 == 0 {
        left(path >> 1, level - 1, kept)
    } else {
        right(path >> 1, level - 1, kept)
    }
}

// Different bodies, so that an optimized build does not merge them into one function.
#[inline(never)]
fn left(path: u32, level: u32, kept: &mut Vec<Vec<u8>>) -> u32 {
    let line = black_box(tree(path, level, kept));
    black_box(1u8);
    line
}

#[inline(never)]
fn right(path: u32, level: u32, kept: &mut Vec<Vec<u8>>) -> u32 {
    let line = black_box(tree(path, level, kept));
    black_box(2u16);
    line
}

/// On `threads` threads, each allocates and frees 1,000 blocks of 200 bytes, then exits.
#[inline(never)]
fn on_threads(threads: usize) -> u32 {
    let line = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..1000 {
                    let (block, l) = (black_box(vec![3u8; 200]), line!());
                    line.store(l, std::sync::atomic::Ordering::Relaxed);
                    drop(block);
                }
            });
        }
    });
    line.into_inner()
}

/// On 600 threads alive at once (more than there are ledgers: the last ones count into the
/// trace table directly), each allocates and frees 10 blocks of 300 bytes.
#[inline(never)]
fn on_many_threads() -> u32 {
    const THREADS: usize = 600;
    let line = std::sync::atomic::AtomicU32::new(0);
    let all_there = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..10 {
                    let (block, l) = (black_box(vec![4u8; 300]), line!());
                    line.store(l, std::sync::atomic::Ordering::Relaxed);
                    drop(block);
                }
                all_there.wait();
            });
        }
    });
    line.into_inner()
}

fn snapshot() -> Snapshot {
    tracealloc::take_snapshot().expect("the tracer is installed")
}

#[test]
fn totals_survive_slot_turnover_thread_exit_and_reset() {
    // More stacks than a ledger's slots, each allocating three blocks and keeping one.
    let mut kept = Vec::new();
    let mut line = 0;
    for path in 0..STACKS as u32 {
        line = tree(path, DEPTH, &mut kept);
    }
    let s = snapshot();
    let allocated = s.allocation_statistics(GroupBy::Traceback).unwrap();
    let stacks: Vec<&Statistic> = allocated
        .iter()
        .filter(|st| {
            let f = st.traceback.call_site();
            f.filename.ends_with("allocation_totals.rs") && f.lineno == line
        })
        .collect();
    assert_eq!(stacks.len(), STACKS, "one traceback per path");
    for st in &stacks {
        assert_eq!((st.count, st.size), (PER_STACK, PER_STACK * 100), "{st}");
    }
    assert_eq!(
        at_line(&s.statistics(GroupBy::Line), line),
        (STACKS, STACKS * 100)
    );
    // Two of each stack's three blocks were freed by the thread that made them before it
    // allocated again: temporaries.
    let temporary = s.temporary_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&temporary, line), (2 * STACKS, 2 * STACKS * 100));
    drop(kept);
    let s = snapshot();
    let allocated = s.allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(
        at_line(&allocated, line),
        (PER_STACK * STACKS, PER_STACK * STACKS * 100),
        "freed blocks stay allocated"
    );
    assert_eq!(at_line(&s.statistics(GroupBy::Line), line), (0, 0));

    // Threads that exit give their ledgers back; the next ones reuse them.
    let thread_line = on_threads(4);
    let s = snapshot();
    let allocated = s.allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&allocated, thread_line), (4000, 800_000));
    assert_eq!(at_line(&s.statistics(GroupBy::Line), thread_line), (0, 0));
    on_threads(4);
    let allocated = snapshot().allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&allocated, thread_line), (8000, 1_600_000));

    // More threads at once than there are ledgers.
    let many_line = on_many_threads();
    let s = snapshot();
    let allocated = s.allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&allocated, many_line), (6000, 1_800_000));
    let temporary = s.temporary_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&temporary, many_line), (6000, 1_800_000));

    // Cleared blocks count as released: the totals stay.
    let mut kept = Vec::new();
    tree(9, DEPTH, &mut kept);
    tracealloc::clear_traces();
    let s = snapshot();
    let allocated = s.allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(
        at_line(&allocated, line),
        ((STACKS + 1) * PER_STACK, (STACKS + 1) * PER_STACK * 100)
    );
    assert_eq!(at_line(&s.statistics(GroupBy::Line), line), (0, 0));
    drop(kept);

    // A restart resets the totals: every ledger's, this thread's included.
    tracealloc::stop();
    tracealloc::start(40).unwrap();
    let allocated = snapshot().allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&allocated, line), (0, 0));
    assert_eq!(at_line(&allocated, thread_line), (0, 0));
    let mut kept = Vec::new();
    tree(5, DEPTH, &mut kept);
    on_threads(2);
    let s = snapshot();
    let allocated = s.allocation_statistics(GroupBy::Line).unwrap();
    assert_eq!(at_line(&allocated, line), (PER_STACK, PER_STACK * 100));
    assert_eq!(at_line(&allocated, thread_line), (2000, 400_000));
    assert_eq!(at_line(&s.statistics(GroupBy::Line), line), (1, 100));
    drop(kept);
}
