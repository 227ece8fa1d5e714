//! The hot path, in criterion: alloc+free pairs through `System` directly and through the
//! `Tracer` static directly (tracing on, and installed but stopped), and a mixed workload traced
//! and stopped. See benches/README.md for figures; `cargo bench --bench ratios` gives
//! interleaved ratios, which are what to quote on a noisy machine.

// criterion_group! and criterion_main! generate undocumented public functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[inline(never)]
fn pair<A: GlobalAlloc>(allocator: &A, layout: Layout) {
    // SAFETY: a nonzero layout, freed right away with the same layout.
    unsafe {
        let p = allocator.alloc(black_box(layout));
        black_box(p);
        allocator.dealloc(p, layout);
    }
}

/// Build and drop a `HashMap<String, Vec<u32>>` of 1000 entries: formatting, growth, reallocs.
#[inline(never)]
fn mixed_workload() -> usize {
    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    for i in 0..1000u32 {
        let values = map.entry(format!("key-{}", i % 1000)).or_default();
        for j in 0..(i % 16) {
            values.push(j);
        }
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    black_box(keys.len())
}

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
