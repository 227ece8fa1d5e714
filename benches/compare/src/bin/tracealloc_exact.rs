//! tracealloc, every allocation traced; a snapshot and its top line at the end.
#[path = "../common.rs"]
mod common;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

fn main() {
    common::run(|| {
        let snapshot = tracealloc::take_snapshot().unwrap();
        let top = snapshot.statistics(tracealloc::GroupBy::Line);
        eprintln!("{} [{}]", top[0], tracealloc::capture_mode());
    });
}
