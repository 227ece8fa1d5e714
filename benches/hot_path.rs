//! The hot path, in criterion: alloc+free pairs through `System` directly and through the
//! `Tracer` static directly (tracing every allocation, sampling with the default 512 KiB mean,
//! and installed but stopped, and `System` plus a bare frame-pointer walk: the floor), the same
//! on two threads at once, a mixed workload traced, sampled and stopped, and a snapshot of
//! 1,000,000 live blocks. See benches/README.md for figures; `cargo bench --bench ratios` gives
//! interleaved ratios, which are what to quote on a noisy machine.

// criterion_group! and criterion_main! generate undocumented public functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{Layout, System};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[allow(dead_code)]
mod common;
use common::{hold, mixed_workload, pair, WalkOnly};

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair");
    for size in [16usize, 64, 4096] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let name = format!("{size}B");
        group.bench_function(BenchmarkId::new(&name, "system"), |b| {
            b.iter(|| pair(&System, layout))
        });
        // System plus a frame-pointer walk of the same stack: the floor of exact capture.
        group.bench_function(BenchmarkId::new(&name, "walk-only"), |b| {
            b.iter(|| pair(&WalkOnly, layout))
        });
        tracealloc::start(16).unwrap();
        group.bench_function(BenchmarkId::new(&name, "traced"), |b| {
            b.iter(|| pair(&GLOBAL, layout))
        });
        tracealloc::set_sampling(Some(tracealloc::DEFAULT_SAMPLE_MEAN)).unwrap();
        group.bench_function(BenchmarkId::new(&name, "sampled"), |b| {
            b.iter(|| pair(&GLOBAL, layout))
        });
        tracealloc::set_sampling(None).unwrap();
        tracealloc::stop();
        group.bench_function(BenchmarkId::new(&name, "stopped"), |b| {
            b.iter(|| pair(&GLOBAL, layout))
        });
        tracealloc::start(16).unwrap();
    }
    group.finish();
}

/// Each iteration: 100,000 pairs of 64 B on each of two threads at once (time per pair is the
/// iteration time / 100,000; the thread spawn is amortized), to compare with one thread doing
/// the same.
fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pairs_x100k");
    group.sample_size(20);
    let layout = Layout::from_size_align(64, 8).unwrap();
    let thousand = || {
        for _ in 0..100_000 {
            pair(&GLOBAL, layout);
        }
    };
    tracealloc::start(16).unwrap();
    group.bench_function("traced/1-thread", |b| b.iter(thousand));
    group.bench_function("traced/2-threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(thousand);
                thousand();
            })
        })
    });
    group.finish();
}

fn mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixed");
    tracealloc::start(16).unwrap();
    group.bench_function("traced", |b| b.iter(mixed_workload));
    tracealloc::set_sampling(Some(tracealloc::DEFAULT_SAMPLE_MEAN)).unwrap();
    group.bench_function("sampled", |b| b.iter(mixed_workload));
    tracealloc::set_sampling(None).unwrap();
    tracealloc::stop();
    group.bench_function("stopped", |b| b.iter(mixed_workload));
    tracealloc::start(16).unwrap();
    group.finish();
}

/// `take_snapshot` with 1,000,000 live blocks (symbolization warm after the first iteration).
fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    tracealloc::start(16).unwrap();
    tracealloc::clear_traces();
    let held = hold(1_000_000);
    group.bench_function("1M-blocks", |b| {
        b.iter(|| tracealloc::take_snapshot().unwrap().traces().len())
    });
    drop(held);
    group.finish();
}

criterion_group!(benches, pairs, threads, mixed, snapshot);
criterion_main!(benches);
