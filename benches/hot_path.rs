//! The hot path, in criterion: alloc+free pairs through `System` directly and through the
//! `Tracer` static directly (tracing every allocation, sampling with the default 512 KiB mean,
//! and installed but stopped, and `System` plus a bare frame-pointer walk: the floor), the same
//! on two threads at once, a mixed workload traced, sampled and stopped, the traced pair 10, 20
//! and 40 frames deep (`walk/…`), the table at 1,000,000 live blocks (`table/…`: filled and
//! emptied, which shrinks it; bytes per block printed) and a snapshot of 1,000,000 live blocks. See benches/README.md for figures; `cargo bench --bench ratios` gives
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

/// Calls `f` `depth` frames below here (each frame a real call, never inlined or a tail call).
#[inline(never)]
fn deep(depth: usize, f: &dyn Fn()) -> usize {
    if depth == 0 {
        f();
        return 0;
    }
    std::hint::black_box(deep(std::hint::black_box(depth - 1), f)) + 1
}

/// The traced 64 B pair with 10, 20 and 40 frames between it and the benchmark: the
/// frame-pointer walk is a dependent load per frame, so its cost grows with depth.
fn walk(c: &mut Criterion) {
    let mut group = c.benchmark_group("walk");
    let layout = Layout::from_size_align(64, 8).unwrap();
    tracealloc::start(16).unwrap();
    for depth in [10usize, 20, 40] {
        let name = format!("{depth}-frames");
        group.bench_function(BenchmarkId::new(&name, "system"), |b| {
            b.iter(|| deep(depth, &|| pair(&System, layout)))
        });
        group.bench_function(BenchmarkId::new(&name, "traced"), |b| {
            b.iter(|| deep(depth, &|| pair(&GLOBAL, layout)))
        });
    }
    group.finish();
}

/// The table at 1,000,000 live blocks: each iteration fills it and frees everything (which
/// shrinks the shards' tables again). Prints the tracer's bytes per live block at the peak and
/// what is left after the free.
fn table(c: &mut Criterion) {
    let mut group = c.benchmark_group("table");
    group.sample_size(10);
    tracealloc::start(16).unwrap();
    tracealloc::clear_traces();
    let before = tracealloc::tracer_memory();
    let held = hold(1_000_000);
    let at_peak = tracealloc::tracer_memory();
    drop(held);
    let after = tracealloc::tracer_memory();
    eprintln!(
        "table at 1,000,000 live blocks: {:.1} B per block (tracer tables {:.1} MiB); after \
         freeing them: {:.2} MiB (from {:.2} MiB before)",
        (at_peak - before) as f64 / 1e6,
        at_peak as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        before as f64 / (1 << 20) as f64,
    );
    // The same figure across live-set sizes: the tables' slack depends on where each shard's
    // table is between two doublings.
    let mut sweep = String::new();
    for n in [
        250_000, 400_000, 600_000, 800_000, 1_200_000, 1_600_000, 2_400_000, 3_200_000,
    ] {
        let before = tracealloc::tracer_memory();
        let held = hold(n);
        let at_peak = tracealloc::tracer_memory();
        drop(held);
        sweep += &format!(
            " {}k: {:.1};",
            n / 1000,
            (at_peak - before) as f64 / n as f64
        );
    }
    eprintln!("B per live block at other sizes:{sweep}");
    group.bench_function("1M-blocks/fill-and-free", |b| {
        b.iter(|| drop(std::hint::black_box(hold(1_000_000))))
    });
    group.finish();
}

criterion_group!(benches, pairs, threads, mixed, walk, table, snapshot);
criterion_main!(benches);
