//! Interleaved ratios, the figures quoted in benches/README.md.
//!
//! On a shared, noisy machine, two benchmarks run minutes apart are not comparable. This
//! harness runs every configuration once per round, in the same process, round after round,
//! takes each configuration's ratio to its baseline *within* the round, and prints the median
//! over rounds (with the min and max of the per-round ratios).
//!
//!     cargo bench --bench ratios            # ROUNDS=15 by default

use std::alloc::{Layout, System};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

mod common;
use common::{hold, iterations, median, mixed_workload, ns_per_op, pair, WalkOnly};

struct Row {
    name: String,
    baseline_ns: Vec<f64>,
    ns: Vec<f64>,
    ratios: Vec<f64>,
}

impl Row {
    fn new(name: &str) -> Self {
        Row {
            name: name.into(),
            baseline_ns: vec![],
            ns: vec![],
            ratios: vec![],
        }
    }
    fn push(&mut self, baseline: f64, value: f64) {
        self.baseline_ns.push(baseline);
        self.ns.push(value);
        self.ratios.push(value / baseline);
    }
    fn print(&mut self, unit: &str, scale: f64) {
        let (lo, hi) = (
            self.ratios.iter().cloned().fold(f64::INFINITY, f64::min),
            self.ratios.iter().cloned().fold(0.0, f64::max),
        );
        println!(
            "| {} | {:.1} | {:.1} | **{:.2}x** | {:.2}–{:.2} |",
            self.name,
            median(&mut self.baseline_ns) / scale,
            median(&mut self.ns) / scale,
            median(&mut self.ratios),
            lo,
            hi
        );
        let _ = unit;
    }
}

fn main() {
    let Some(rounds) = common::rounds(15) else {
        return;
    };
    let sizes = [16usize, 64, 4096];
    let rows = |what: &str| -> Vec<Row> {
        sizes
            .iter()
            .map(|s| Row::new(&format!("pair/{s}B {what} / system")))
            .collect()
    };
    let mut traced_rows = rows("traced");
    let mut stopped_rows = rows("stopped");
    let mut sampled_rows = rows("sampled (512 KiB)");
    let mut floor_rows = rows("walk only (floor)");
    let mut mixed_row = Row::new("mixed traced / stopped");
    let mut mixed_sampled_row = Row::new("mixed sampled (512 KiB) / stopped");
    let layouts: Vec<Layout> = sizes
        .iter()
        .map(|&s| Layout::from_size_align(s, 8).unwrap())
        .collect();
    let iters: Vec<u64> = layouts
        .iter()
        .map(|&l| iterations(|| pair(&System, l)))
        .collect();
    let mixed_iters = iterations(|| {
        mixed_workload();
    })
    .max(2);

    for _ in 0..rounds {
        for (i, &layout) in layouts.iter().enumerate() {
            tracealloc::start(16).unwrap();
            let traced = ns_per_op(|| pair(&GLOBAL, layout), iters[i]);
            tracealloc::stop();
            let stopped = ns_per_op(|| pair(&GLOBAL, layout), iters[i]);
            let system = ns_per_op(|| pair(&System, layout), iters[i]);
            let floor = ns_per_op(|| pair(&WalkOnly, layout), iters[i]);
            tracealloc::start(16).unwrap();
            tracealloc::set_sampling(Some(tracealloc::DEFAULT_SAMPLE_MEAN)).unwrap();
            let sampled = ns_per_op(|| pair(&GLOBAL, layout), iters[i]);
            tracealloc::set_sampling(None).unwrap();
            tracealloc::stop();
            traced_rows[i].push(system, traced);
            floor_rows[i].push(system, floor);
            stopped_rows[i].push(system, stopped);
            sampled_rows[i].push(system, sampled);
        }
        tracealloc::stop();
        let stopped = ns_per_op(
            || {
                mixed_workload();
            },
            mixed_iters,
        );
        tracealloc::start(16).unwrap();
        let traced = ns_per_op(
            || {
                mixed_workload();
            },
            mixed_iters,
        );
        mixed_row.push(stopped, traced);
        tracealloc::set_sampling(Some(tracealloc::DEFAULT_SAMPLE_MEAN)).unwrap();
        let sampled = ns_per_op(
            || {
                mixed_workload();
            },
            mixed_iters,
        );
        tracealloc::set_sampling(None).unwrap();
        mixed_sampled_row.push(stopped, sampled);
    }

    println!(
        "{rounds} interleaved rounds; capture mode: {}",
        tracealloc::capture_mode()
    );
    println!();
    println!("| benchmark | baseline (ns) | measured (ns) | median ratio | per-round range |");
    println!("|---|---|---|---|---|");
    for row in traced_rows
        .iter_mut()
        .chain(floor_rows.iter_mut())
        .chain(stopped_rows.iter_mut())
        .chain(sampled_rows.iter_mut())
    {
        row.print("ns", 1.0);
    }
    println!("(mixed: µs per workload)");
    mixed_row.print("µs", 1000.0);
    mixed_sampled_row.print("µs", 1000.0);

    two_threads(rounds);
    snapshot_of_a_million_blocks();
}

/// ns per 64 B pair on one thread, and on each of two threads running at once: traced, and
/// through `System` (what the machine itself does with two threads).
fn two_threads(rounds: usize) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    tracealloc::start(16).unwrap();
    let traced = scaling(rounds, || pair(&GLOBAL, layout));
    let system = scaling(rounds, || pair(&System, layout));
    println!();
    for (name, (one, two, ratio)) in [("traced", traced), ("System", system)] {
        println!(
            "64 B pair {name}, 2 threads at once vs 1: {one:.1} ns → {two:.1} ns per pair per \
             thread, median ratio {ratio:.2}x"
        );
    }
}

/// (ns per call on one thread, ns per call per thread on two at once, median ratio).
fn scaling(rounds: usize, f: impl Fn() + Sync) -> (f64, f64, f64) {
    const N: usize = 200_000;
    let run = || {
        for _ in 0..N {
            f();
        }
    };
    let mut ratios = Vec::new();
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        run();
        let single = t.elapsed().as_nanos() as f64 / N as f64;
        let barrier = std::sync::Barrier::new(2);
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                run();
            });
            barrier.wait();
            run();
        });
        // Both threads did N calls at once: the wall time per call of each thread.
        let double = t.elapsed().as_nanos() as f64 / N as f64;
        one.push(single);
        two.push(double);
        ratios.push(double / single);
    }
    (median(&mut one), median(&mut two), median(&mut ratios))
}

fn snapshot_of_a_million_blocks() {
    tracealloc::start(16).unwrap();
    tracealloc::clear_traces();
    let held = hold(1_000_000);
    let t = Instant::now();
    let first = tracealloc::take_snapshot().unwrap();
    let cold = t.elapsed();
    drop(first);
    let t = Instant::now();
    let warm = tracealloc::take_snapshot().unwrap();
    let warm_time = t.elapsed();
    let t = Instant::now();
    let stats = warm.statistics(tracealloc::GroupBy::Line);
    let stats_time = t.elapsed();
    println!();
    println!(
        "snapshot of {} live blocks: first {:.0} ms (cold symbolization), warm {:.0} ms; \
         statistics(Line) {:.0} ms; tracer tables {:.1} MiB ({:.0} B per live block)",
        warm.traces().len(),
        cold.as_secs_f64() * 1e3,
        warm_time.as_secs_f64() * 1e3,
        stats_time.as_secs_f64() * 1e3,
        tracealloc::tracer_memory() as f64 / (1 << 20) as f64,
        tracealloc::tracer_memory() as f64 / warm.traces().len() as f64,
    );
    println!("top: {}", stats[0]);

    // The same while another thread keeps allocating and freeing (copying takes one shard
    // lock at a time, so it waits at most for one shard's copy).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut times = Vec::new();
    let mut pairs_during = 0u64;
    std::thread::scope(|s| {
        let busy = s.spawn(|| {
            let mut n = 0u64;
            let mut keep = Vec::with_capacity(1024);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                keep.push(std::hint::black_box(Box::new(n)));
                if keep.len() == 1024 {
                    keep.clear();
                }
                n += 1;
            }
            n
        });
        std::thread::sleep(Duration::from_millis(20));
        for _ in 0..5 {
            let t = Instant::now();
            let snapshot = tracealloc::take_snapshot().unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(snapshot.traces().len());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        pairs_during = busy.join().unwrap();
    });
    println!(
        "snapshot of 1 M live blocks while another thread allocates: median {:.0} ms, max {:.0} ms \
         of 5 ({} allocations made meanwhile)",
        median(&mut times.clone()),
        times.iter().cloned().fold(0.0, f64::max),
        pairs_during
    );
    drop(held);
}
