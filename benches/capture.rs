//! Stack capture, each way, interleaved in one process (the figures of benches/README.md):
//!
//! - ns per capture at about 7, 19 and 39 frames: frame-pointer walk, unwind-rule cache,
//!   `backtrace::trace` (libgcc);
//! - the rule cache with 1,024 distinct call sites (7-frame captures, round robin);
//! - a traced 64 B alloc+free pair with each capture way, and `System`'s pair as the baseline.
//!
//! ```text
//! cargo bench --bench capture                                              # every way
//! RUSTFLAGS="" CARGO_TARGET_DIR=target/nofp cargo bench --bench capture    # no frame pointers
//! ```
//!
//! Without frame pointers the walk rows are meaningless (the walk stops after a frame or two)
//! and are left out.

use std::alloc::{Layout, System};
use std::hint::black_box;
use tracealloc::{__private as p, CaptureMode};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[allow(dead_code)]
mod common;
use common::{iterations, median, ns_per_op, pair};

const BUF: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Way {
    FramePointers,
    Tables,
    Backtrace,
}

#[inline(never)]
fn capture(way: Way) -> usize {
    let mut buf = [0usize; BUF];
    let n = match way {
        Way::FramePointers => p::capture_frame_pointers(&mut buf),
        Way::Tables => p::unwind_tables(&mut buf).unwrap_or((0, false)).0,
        Way::Backtrace => p::capture_backtrace(&mut buf),
    };
    black_box(&buf);
    n
}

#[inline(never)]
fn at_depth(depth: usize, way: Way) -> usize {
    if depth == 0 {
        return black_box(capture(way));
    }
    black_box(at_depth(black_box(depth - 1), way))
}

/// One of 1,024 distinct functions (two const parameters, 32 × 32 instances), each calling the
/// capture from its own code address.
#[inline(never)]
fn site<const A: usize, const B: usize>(way: Way) -> usize {
    black_box(A * 32 + B);
    black_box(at_depth(black_box(0), way))
}

type Site = fn(Way) -> usize;

macro_rules! row {
    ($a:literal; $($b:literal)*) => { [$(site::<$a, $b> as Site),*] };
}
macro_rules! table {
    ($($a:literal)*) => {
        [$(row!($a; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)),*]
    };
}

fn main() {
    let Some(rounds) = common::rounds(11) else {
        return;
    };
    let sites: [[Site; 32]; 32] = table!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

    // Captures run on a thread of their own: its stack is short (clone3, start_thread, std's
    // thread start), so depths of 7 are reachable.
    std::thread::spawn(move || {
        // The capture way was decided by the self-test at the first traced allocation.
        black_box(Box::new(0u8));
        let frame_pointers = tracealloc::capture_mode() == CaptureMode::FramePointers;
        let base = at_depth(0, Way::Tables);
        let targets = [7usize, 19, 39];
        let depths: Vec<usize> = targets.iter().map(|t| t.saturating_sub(base)).collect();
        let mut ways = vec![(Way::Tables, "unwind-rule cache"), (Way::Backtrace, "backtrace::trace")];
        if frame_pointers {
            ways.insert(0, (Way::FramePointers, "frame-pointer walk"));
        }
        let mut ns: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); targets.len()]; ways.len()];
        let mut frames = vec![vec![0usize; targets.len()]; ways.len()];
        let mut many_sites = Vec::new();
        for _ in 0..rounds {
            for (w, &(way, _)) in ways.iter().enumerate() {
                for (d, &depth) in depths.iter().enumerate() {
                    let iters = if way == Way::Backtrace { 200 } else { 20_000 };
                    frames[w][d] = at_depth(depth, way);
                    ns[w][d].push(ns_per_op(|| { at_depth(depth, way); }, iters));
                }
            }
            // 1,024 call sites, round robin: each capture starts from another function.
            let mut i = 0usize;
            let per = ns_per_op(
                || {
                    let f = sites[(i >> 5) & 31][i & 31];
                    i = i.wrapping_add(1);
                    black_box(f(Way::Tables));
                },
                1024 * 20,
            );
            many_sites.push(per);
        }
        let site_frames = sites[3][7](Way::Tables);
        println!("{rounds} interleaved rounds; ns per capture (median), frames returned in brackets");
        println!();
        println!("| way | ~7 frames | ~19 frames | ~39 frames | ns/frame (7→39) |");
        println!("|---|---|---|---|---|");
        for (w, &(_, name)) in ways.iter().enumerate() {
            let m: Vec<f64> = ns[w].iter_mut().map(|v| median(v)).collect();
            let per_frame = (m[2] - m[0]) / (frames[w][2] as f64 - frames[w][0] as f64);
            println!(
                "| {name} | {:.1} ({}) | {:.1} ({}) | {:.1} ({}) | {:.2} |",
                m[0], frames[w][0], m[1], frames[w][1], m[2], frames[w][2], per_frame
            );
        }
        println!();
        println!(
            "unwind-rule cache, 1,024 distinct call sites round robin ({site_frames} frames): {:.1} ns per capture",
            median(&mut many_sites)
        );
    })
    .join()
    .unwrap();

    traced_pairs(rounds);
}

/// A traced 64 B pair with each capture way, against `System`, interleaved.
fn traced_pairs(rounds: usize) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let iters = iterations(|| pair(&System, layout));
    tracealloc::start(16).unwrap();
    pair(&GLOBAL, layout); // decides the mode once
    let decided = tracealloc::capture_mode();
    let mut ways = vec![CaptureMode::UnwindTables];
    if decided == CaptureMode::FramePointers {
        ways.insert(0, CaptureMode::FramePointers);
    }
    let mut system = Vec::new();
    let mut traced: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for _ in 0..rounds {
        system.push(ns_per_op(|| pair(&System, layout), iters));
        for (i, &way) in ways.iter().enumerate() {
            p::force_capture_mode(way);
            traced[i].push(ns_per_op(|| pair(&GLOBAL, layout), iters));
        }
    }
    p::force_capture_mode(decided);
    let base = median(&mut system);
    println!();
    println!(
        "64 B alloc+free pair, traced (16 frames), self-test chose {decided}; System {base:.1} ns"
    );
    let medians: Vec<f64> = traced.iter_mut().map(|v| median(v)).collect();
    for (way, m) in ways.iter().zip(&medians) {
        println!(
            "| traced with {way} | {m:.1} ns | {:.2}x System |",
            m / base
        );
    }
    if medians.len() == 2 {
        println!(
            "unwind tables / frame pointers, traced pair: {:.2}x",
            medians[1] / medians[0]
        );
    }
}
