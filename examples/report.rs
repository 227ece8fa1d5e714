//! Every output on the workload of `examples/top.rs`: folded stacks, flame graphs (live and
//! allocated), a pprof profile, DHAT JSON, a timeline (CSV and SVG chart) and a snapshot file
//! for the `tracealloc` command-line tool.
//!
//!     cargo run --release --all-features --example report [OUTPUT_DIR]
//!
//! OUTPUT_DIR defaults to `target/tracealloc-report`.

use std::path::PathBuf;
use std::time::Duration;
use tracealloc::{GroupBy, Metric, Timeline};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new().block_lifetimes(true);

#[path = "shared/index_workload.rs"]
mod workload;

/// The classic temporary: a `format!` in a loop, each string freed before the next is made.
/// DHAT's viewer lists it under "Total (blocks), short-lived".
fn labels() -> usize {
    let mut longest = 0;
    for doc in 0..50_000 {
        let label = format!("doc-{doc}");
        longest = longest.max(std::hint::black_box(label).len());
    }
    longest
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/tracealloc-report"));
    std::fs::create_dir_all(&dir)?;

    let timeline = Timeline::start(Duration::from_millis(20))?;
    let built = workload::run();
    labels();
    let snapshot = tracealloc::take_snapshot()?;
    let series = timeline.stop();

    println!("{}", snapshot.report(GroupBy::Line, 5));
    println!();
    if let Some(allocated) = snapshot.allocation_statistics(GroupBy::Line) {
        println!("Most allocated (freed blocks included):");
        for stat in allocated.iter().take(3) {
            println!("  {stat}");
        }
        println!();
    }

    let path = |name: &str| dir.join(name);
    snapshot.write_folded(path("live.folded"), Metric::Live)?;
    snapshot.write_flamegraph(path("live.svg"), Metric::Live)?;
    snapshot.write_flamegraph(path("allocated.svg"), Metric::Allocated)?;
    snapshot.write_flamegraph(path("peak.svg"), Metric::Peak)?;
    snapshot.write_pprof(path("heap.pb.gz"))?;
    if let Some(peak) = snapshot.at_peak() {
        peak.write_pprof(path("peak.pb.gz"))?;
    }
    snapshot.write_dhat(path("dhat.json"), Metric::Allocated)?;
    snapshot.dump(path("snapshot.tracealloc"))?;
    series.write_csv(path("timeline.csv"))?;
    series.write_svg(path("timeline.svg"))?;

    if let Some(highest) = series.highest() {
        println!(
            "Timeline: {} samples, highest traced {} at {:.2} s",
            series.samples.len(),
            tracealloc::format_size(highest.current as f64, false),
            highest.at.as_secs_f64()
        );
    }
    println!("Wrote to {}:", dir.display());
    for name in [
        "live.folded         folded stacks (flamegraph.pl, speedscope)",
        "live.svg            flame graph of live memory",
        "allocated.svg       flame graph of everything allocated",
        "peak.svg            flame graph of what was live at the peak",
        "heap.pb.gz          pprof: go tool pprof -top heap.pb.gz",
        "peak.pb.gz          pprof of what was live at the peak",
        "dhat.json           DHAT: open /usr/libexec/valgrind/dh_view.html, load it",
        "snapshot.tracealloc tracealloc top snapshot.tracealloc",
        "timeline.csv        traced and resident memory over time",
        "timeline.svg        the same as a chart, peak marked",
    ] {
        println!("  {name}");
    }
    std::hint::black_box(&built);
    Ok(())
}
