//! What grew: snapshot, do more work, snapshot again, print the top 10 differences by line.
//!
//!     cargo run --release --example diff
//!
//! Also shows filters (only this file's lines), cumulative statistics (which functions hold
//! memory including their callees), and dump/load.

use std::collections::HashMap;
use tracealloc::{Filter, GroupBy, Snapshot};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// A cache that is supposed to stay small.
struct Cache {
    entries: HashMap<u64, String>,
    log: Vec<String>,
}

impl Cache {
    fn handle(&mut self, request: u64) -> usize {
        let answer = self
            .entries
            .entry(request % 5_000)
            .or_insert_with(|| format!("answer to {request} ").repeat(8));
        // The bug: every request is logged and the log is never trimmed.
        self.log
            .push(format!("served {request}: {} bytes", answer.len()));
        answer.len()
    }
}

fn serve(cache: &mut Cache, from: u64, to: u64) -> usize {
    (from..to)
        .map(|r| cache.handle(r.wrapping_mul(2_654_435_761)))
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut cache = Cache {
        entries: HashMap::new(),
        log: Vec::new(),
    };
    serve(&mut cache, 0, 20_000);
    let before = tracealloc::take_snapshot()?;

    serve(&mut cache, 20_000, 120_000);
    cache.entries.retain(|k, _| k % 2 == 0);
    let after = tracealloc::take_snapshot()?;

    let ours = [Filter::include("*examples/diff.rs")?];
    let (before, after) = (before.filter_traces(&ours), after.filter_traces(&ours));
    println!("Top 10 differences");
    for diff in after.compare_to(&before, GroupBy::Line).iter().take(10) {
        println!("{diff}");
    }

    println!();
    println!("This file's functions, callees included");
    for stat in after
        .cumulative_statistics(GroupBy::Function)
        .iter()
        .filter(|s| {
            s.traceback
                .call_site()
                .filename
                .ends_with("examples/diff.rs")
        })
        .take(5)
    {
        println!("{stat}");
    }

    let path = std::env::temp_dir().join("tracealloc-diff-example.tracealloc");
    after.dump(&path)?;
    let reloaded = Snapshot::load(&path)?;
    println!();
    println!(
        "dumped and reloaded {} traces ({} bytes on disk): {}",
        reloaded.traces().len(),
        std::fs::metadata(&path)?.len(),
        if reloaded == after {
            "identical"
        } else {
            "DIFFERENT"
        }
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
