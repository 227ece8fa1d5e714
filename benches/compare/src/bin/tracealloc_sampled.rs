//! tracealloc, Poisson sampling with the default 512 KiB mean; a snapshot at the end.
#[path = "../common.rs"]
mod common;

#[global_allocator]
static GLOBAL: tracealloc::Tracer =
    tracealloc::Tracer::new().sampled(tracealloc::DEFAULT_SAMPLE_MEAN);

fn main() {
    common::run(|| {
        let snapshot = tracealloc::take_snapshot().unwrap();
        let top = snapshot.statistics(tracealloc::GroupBy::Line);
        match top.first() {
            Some(line) => eprintln!("{line}"),
            // The deep workload keeps about 500 KB: often no sample among it.
            None => eprintln!("no sampled block is live"),
        }
    });
}
