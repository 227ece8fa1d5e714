//! Whole tracebacks: the call site, its callers, and the allocator frames trimmed before it.
//!
//!     cargo run --example tracebacks
//!
//! Shows `GroupBy::Traceback`, `Traceback::format` and `Traceback::machinery`, and
//! `object_traceback` for one live block.

use std::collections::HashMap;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[inline(never)]
fn load_table(rows: usize) -> HashMap<String, Vec<u64>> {
    let mut table = HashMap::new();
    for row in 0..rows {
        table
            .entry(format!("row-{row}"))
            .or_insert_with(Vec::new)
            .extend(0..row as u64 % 50);
    }
    table
}

fn main() -> Result<(), tracealloc::Error> {
    let table = load_table(20_000);
    let snapshot = tracealloc::take_snapshot()?;
    for note in snapshot.notes() {
        println!("note: {note}");
    }
    for stat in snapshot
        .statistics(tracealloc::GroupBy::Traceback)
        .iter()
        .take(3)
    {
        println!("{stat}");
        for line in stat.traceback.format(Some(4), true) {
            println!("{line}");
        }
        println!("  (trimmed before the call site:)");
        for frame in stat.traceback.machinery() {
            println!("    {frame} in {}", frame.function);
        }
        println!();
    }
    let first = table.values().find(|v| !v.is_empty()).expect("rows");
    if let Some(traceback) = tracealloc::object_traceback(first.as_ptr()) {
        println!("One row's vector was allocated at {traceback}:");
        for line in traceback.format(None, true) {
            println!("{line}");
        }
    }
    Ok(())
}
