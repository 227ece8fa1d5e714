//! What every binary runs: the workload of examples/top.rs on `DOCUMENTS` documents (default
//! 1,000: about a million allocations), and a summary line.

#[path = "../../../examples/shared/index_workload.rs"]
#[allow(dead_code)]
mod workload;

pub(crate) fn documents() -> usize {
    std::env::var("DOCUMENTS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1_000)
}

/// Runs the workload and keeps what it built until the end of `f`.
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    let built = workload::run_with(documents());
    let r = f();
    std::hint::black_box(&built);
    r
}
