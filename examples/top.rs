//! The main job: a real allocation-heavy workload, then the ten lines holding the most memory.
//!
//! It generates a text corpus of a few megabytes, tokenizes it, builds an inverted index
//! (word → postings) and a bigram table, keeps per-document term vectors, then drops part of it;
//! it also keeps a catalog of the documents parsed from JSON with serde_json. It prints what is
//! still live, by line of this program (serde_json's own allocations count for the line that
//! called it, named below it) and by crate, with current and peak traced memory.
//!
//!     cargo run --release --example top

use std::time::Instant;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[path = "shared/index_workload.rs"]
mod workload;

fn main() -> Result<(), tracealloc::Error> {
    let started = Instant::now();
    let built = workload::run();
    let catalog = catalog(&built.corpus);
    let corpus = &built.corpus;
    let corpus_bytes: usize = corpus.iter().map(String::len).sum();
    let elapsed = started.elapsed();

    let snapshot = tracealloc::take_snapshot()?;
    println!(
        "Indexed {} documents ({:.1} MB of text) in {:.2?}; capture: {}",
        corpus.len(),
        corpus_bytes as f64 / 1e6,
        elapsed,
        tracealloc::capture_mode()
    );
    println!();
    println!("Top 10 lines");
    println!("{}", snapshot.report(tracealloc::GroupBy::Line, 10));
    println!();
    println!("By crate");
    println!("{}", snapshot.report(tracealloc::GroupBy::Crate, 5));
    let memory = tracealloc::traced_memory();
    println!();
    println!(
        "Traced memory: current {}, peak {}; {} blocks allocated in all ({}); tracer tables {}",
        tracealloc::format_size(memory.current as f64, false),
        tracealloc::format_size(memory.peak as f64, false),
        memory.allocated_blocks,
        tracealloc::format_size(memory.allocated_bytes as f64, false),
        tracealloc::format_size(tracealloc::tracer_memory() as f64, false),
    );
    std::hint::black_box((&built, &catalog));
    Ok(())
}

/// The documents' metadata as a JSON array, parsed back as a service would read its catalog.
fn catalog(corpus: &[String]) -> serde_json::Value {
    let mut json = String::from("[");
    for (id, text) in corpus.iter().enumerate() {
        let title: String = text.split(' ').take(6).collect::<Vec<_>>().join(" ");
        let words = text.split(' ').count();
        if id > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#"{{"id":{id},"title":"{title}","words":{words},"tags":["corpus","generated"]}}"#
        ));
    }
    json.push(']');
    serde_json::from_str(&json).expect("the catalog is valid JSON")
}
