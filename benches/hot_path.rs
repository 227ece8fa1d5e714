//! The hot path, in criterion: alloc+free pairs through `System` directly and through the
//! `Tracer` static directly (tracing on, and installed but stopped), and a mixed workload traced
//! and stopped. See benches/README.md for figures; `cargo bench --bench ratios` gives
//! interleaved ratios, which are what to quote on a noisy machine.

// criterion_group! and criterion_main! generate undocumented public functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{Layout, System};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

mod common;
use common::{mixed_workload, pair};

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("pair");
    for size in [16usize, 64, 4096] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let name = format!("{size}B");
        group.bench_function(BenchmarkId::new(&name, "system"), |b| {
            b.iter(|| pair(&System, layout))
        });
        tracealloc::start(16).unwrap();
        group.bench_function(BenchmarkId::new(&name, "traced"), |b| {
            b.iter(|| pair(&GLOBAL, layout))
        });
        tracealloc::stop();
        group.bench_function(BenchmarkId::new(&name, "stopped"), |b| {
            b.iter(|| pair(&GLOBAL, layout))
        });
        tracealloc::start(16).unwrap();
    }
    group.finish();
}

fn mixed(c: &mut Criterion) {
    let mut group = c.benchmark_group("mixed");
    tracealloc::start(16).unwrap();
    group.bench_function("traced", |b| b.iter(mixed_workload));
    tracealloc::stop();
    group.bench_function("stopped", |b| b.iter(mixed_workload));
    tracealloc::start(16).unwrap();
    group.finish();
}

criterion_group!(benches, pairs, mixed);
criterion_main!(benches);
