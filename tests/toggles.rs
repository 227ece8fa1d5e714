//! Fault trial: `set_sampling`, `clear_traces` and `stop`/`start` switched while other threads
//! allocate, reallocate and free. Before the fix, 100 sampling toggles beside 3 allocating
//! threads left `current` 389,854 B below the live traced bytes and 6,500 wrapped it below
//! zero, for good. Afterwards the books must be exact: `current` equal to the bytes of the
//! live traces, and the peak at least that.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

fn churn(stop: &AtomicBool, seed: u64) {
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut x = seed | 1;
    while !stop.load(Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 4 {
            0 | 1 if live.len() < 300 => live.push(vec![1; 1 + (x >> 40) as usize % 3000]),
            2 if !live.is_empty() => {
                let k = (x >> 8) as usize % live.len();
                live[k].extend_from_slice(&[2; 100]);
            }
            _ if !live.is_empty() => {
                let k = (x >> 8) as usize % live.len();
                live.swap_remove(k);
            }
            _ => {}
        }
    }
}

fn check_books(when: &str) {
    let snapshot = tracealloc::take_snapshot().expect("tracing");
    let memory = tracealloc::traced_memory();
    assert_eq!(
        memory.current,
        snapshot.total_size(),
        "{when}: current vs the live traces"
    );
    assert!(memory.peak >= memory.current, "{when}: peak below current");
}

#[test]
fn toggles_beside_allocating_threads_keep_exact_books() {
    // Fewer under a sanitizer (CI sets it): every round there costs ~25 ms.
    let rounds = std::env::var("TRACEALLOC_TOGGLE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 600 } else { 6_500 });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(&stop, 0x1234_5678 + t))
        })
        .collect();
    for round in 0..rounds {
        match round % 8 {
            0..=3 => {
                let mean = if round % 2 == 0 { Some(4096) } else { None };
                tracealloc::set_sampling(mean).unwrap();
            }
            4 | 5 => tracealloc::clear_traces(),
            6 => tracealloc::stop(),
            _ => tracealloc::start(16).unwrap(),
        }
        // Let the workers run under each setting.
        for _ in 0..20 {
            std::thread::yield_now();
        }
        let current = tracealloc::traced_memory().current;
        assert!(
            current < 1 << 40,
            "round {round}: current wrapped below zero ({current})"
        );
    }
    tracealloc::set_sampling(None).unwrap();
    tracealloc::start(16).unwrap();
    stop.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    // Only this thread runs now: the books must match exactly, in exact mode and sampled.
    check_books("exact, after the toggles");
    let keep: Vec<Vec<u8>> = (0..100).map(|i| vec![0; 100 + i]).collect();
    check_books("exact, with new blocks");
    tracealloc::set_sampling(Some(1024)).unwrap();
    let more: Vec<Vec<u8>> = (0..1000).map(|i| vec![0; 100 + i]).collect();
    let snapshot = tracealloc::take_snapshot().unwrap();
    let memory = tracealloc::traced_memory();
    // Sampled: each record counts its estimate, rounded once per block either way.
    let traces = snapshot.traces().len();
    let diff = memory.current.abs_diff(snapshot.total_size());
    assert!(
        diff <= traces,
        "sampled: current {} vs traces {} ({traces} traces)",
        memory.current,
        snapshot.total_size()
    );
    drop((keep, more));
    tracealloc::set_sampling(None).unwrap();
    check_books("exact, at the end");
}
