//! Exact counters under threads: 4 threads × 200k random alloc / realloc / free of 1 B to
//! 64 KiB. Alone in its binary (one `#[test]`), because it checks process-wide figures.

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::sync::{Arc, Barrier};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const THREADS: usize = 4;
const OPS: usize = if cfg!(miri) { 2_000 } else { 200_000 };
const SLOTS: usize = 512;
const MAX_SIZE: usize = 64 * 1024;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn size(&mut self) -> usize {
        // Mostly small blocks, some large ones.
        if self.next() % 8 == 0 {
            1 + (self.next() as usize) % MAX_SIZE
        } else {
            1 + (self.next() as usize) % 256
        }
    }
}

/// A thread's live blocks, in a table allocated before the measurement starts.
struct Live {
    slots: Vec<(usize, usize)>, // (address, size); address 0 = empty
}

impl Live {
    fn held(&self) -> usize {
        self.slots.iter().map(|&(_, s)| s).sum()
    }
}

fn run(
    seed: u64,
    live: &mut Live,
    ready: &Barrier,
    go: &Barrier,
    mid: &Barrier,
    resume: &Barrier,
) -> (usize, u64, u64) {
    let mut rng = Rng(seed);
    let (mut allocated_bytes, mut allocated_blocks) = (0u64, 0u64);
    ready.wait();
    go.wait();
    let mut held_at_mid = 0;
    for op in 0..OPS {
        if op == OPS / 2 {
            // Every thread stops here holding `held()`: these bytes are live at the same time.
            held_at_mid = live.held();
            mid.wait();
            resume.wait();
        }
        let slot = (rng.next() as usize) % SLOTS;
        let (address, size) = live.slots[slot];
        // SAFETY: every block is allocated with align 1 and the recorded size, and freed or
        // reallocated once, with that size.
        unsafe {
            if address == 0 {
                let size = rng.size();
                let p = alloc(Layout::from_size_align(size, 1).unwrap());
                assert!(!p.is_null());
                p.write_bytes(0xA5, size.min(16));
                live.slots[slot] = (p as usize, size);
                allocated_bytes += size as u64;
                allocated_blocks += 1;
            } else if rng.next() % 2 == 0 {
                let new_size = rng.size();
                let p = realloc(
                    address as *mut u8,
                    Layout::from_size_align(size, 1).unwrap(),
                    new_size,
                );
                assert!(!p.is_null());
                live.slots[slot] = (p as usize, new_size);
                allocated_bytes += new_size as u64;
                allocated_blocks += 1;
            } else {
                dealloc(
                    address as *mut u8,
                    Layout::from_size_align(size, 1).unwrap(),
                );
                live.slots[slot] = (0, 0);
            }
        }
    }
    (held_at_mid, allocated_bytes, allocated_blocks)
}

#[test]
fn counters_and_snapshot_are_exact_under_threads() {
    let ready = Arc::new(Barrier::new(THREADS + 1));
    let go = Arc::new(Barrier::new(THREADS + 1));
    let mid = Arc::new(Barrier::new(THREADS + 1));
    let resume = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (ready, go, mid, resume) = (ready.clone(), go.clone(), mid.clone(), resume.clone());
            std::thread::spawn(move || {
                let mut live = Live {
                    slots: vec![(0, 0); SLOTS],
                };
                let at_mid = run(
                    0x9E37_79B9 + t as u64,
                    &mut live,
                    &ready,
                    &go,
                    &mid,
                    &resume,
                );
                (live, at_mid)
            })
        })
        .collect();
    let mut results: Vec<(Live, (usize, u64, u64))> = Vec::with_capacity(THREADS);
    ready.wait();
    // From here on, the only traced allocations are the workers' (and their thread exits).
    tracealloc::clear_traces();
    assert_eq!(tracealloc::traced_memory().current, 0);
    go.wait();
    mid.wait();
    let during = tracealloc::traced_memory();
    resume.wait();
    for handle in handles {
        results.push(handle.join().unwrap());
    }

    let held: usize = results.iter().map(|(l, _)| l.held()).sum();
    let held_at_mid: usize = results.iter().map(|(_, m)| m.0).sum();
    let run_bytes: u64 = results.iter().map(|(_, m)| m.1).sum();
    let run_blocks: u64 = results.iter().map(|(_, m)| m.2).sum();
    let blocks: usize = results
        .iter()
        .map(|(l, _)| l.slots.iter().filter(|s| s.0 != 0).count())
        .sum();
    let memory = tracealloc::traced_memory();
    let snapshot = tracealloc::take_snapshot().unwrap();

    assert_eq!(
        during.current, held_at_mid,
        "current while all threads were paused"
    );
    assert_eq!(
        memory.current, held,
        "current equals what the threads still hold"
    );
    assert_eq!(
        snapshot.total_size(),
        memory.current,
        "the snapshot's total equals current"
    );
    assert_eq!(snapshot.traces().len(), blocks, "one trace per live block");
    let mut traced: Vec<usize> = snapshot.traces().iter().map(|t| t.size).collect();
    let mut expected: Vec<usize> = results
        .iter()
        .flat_map(|(l, _)| l.slots.iter().filter(|s| s.0 != 0).map(|s| s.1))
        .collect();
    traced.sort_unstable();
    expected.sort_unstable();
    assert_eq!(traced, expected, "the same block sizes");
    // Allocation totals per site: everything `run` allocated (reallocations count as new
    // blocks), live or long freed, and nothing else.
    let by_function = snapshot
        .allocation_statistics(tracealloc::GroupBy::Function)
        .expect("a live snapshot knows its allocation totals");
    let in_run: Vec<_> = by_function
        .iter()
        .filter(|s| s.traceback.call_site().function.ends_with("run"))
        .collect();
    assert_eq!(in_run.len(), 1, "{by_function:#?}");
    assert_eq!(
        (in_run[0].size as u64, in_run[0].count as u64),
        (run_bytes, run_blocks),
        "allocation totals of `run`"
    );
    let (all_bytes, all_blocks) = snapshot.allocated_total().unwrap();
    assert!(all_bytes >= run_bytes && all_blocks >= run_blocks);
    drop(in_run);
    drop(by_function);
    drop((traced, expected, snapshot));
    for (live, _) in &results {
        for &(address, size) in live.slots.iter().filter(|s| s.0 != 0) {
            let tb =
                tracealloc::object_traceback(address as *const u8).expect("live block is traced");
            assert!(
                tb.frames().iter().any(|f| f.function.contains("run")),
                "{size} B at {tb}"
            );
        }
    }
    assert!(
        memory.peak >= held_at_mid,
        "peak {} < bytes live together {held_at_mid}",
        memory.peak
    );
    assert!(memory.peak >= memory.current);
    assert!(memory.allocated_bytes >= memory.peak as u64);
    assert_eq!(memory.dropped_blocks, 0);

    for (live, _) in results {
        for (address, size) in live.slots.into_iter().filter(|s| s.0 != 0) {
            // SAFETY: allocated above with this size and align 1, not freed yet.
            unsafe {
                dealloc(
                    address as *mut u8,
                    Layout::from_size_align(size, 1).unwrap(),
                )
            };
        }
    }
    assert_eq!(tracealloc::traced_memory().current, 0, "everything freed");
}
