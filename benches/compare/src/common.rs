//! What every binary runs: `WORKLOAD=index` (the default), the workload of examples/top.rs on
//! `DOCUMENTS` documents (default 1,000: about a million allocations); or `WORKLOAD=deep`,
//! serde_json and regex on nested documents (src/deep.rs, `DOCUMENTS` default 3,000), with
//! 20 to 40 frames between an allocation and the program's line.

#[path = "../../../examples/shared/index_workload.rs"]
#[allow(dead_code)]
mod workload;

#[path = "deep.rs"]
mod deep;

fn documents(default: usize) -> usize {
    std::env::var("DOCUMENTS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(default)
}

/// Runs the workload and keeps what it built until the end of `f`.
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> R {
    match std::env::var("WORKLOAD").as_deref() {
        Ok("deep") => {
            let built = deep::run_with(documents(3_000));
            let r = f();
            std::hint::black_box((&built.index, built.pretty_bytes));
            r
        }
        Ok("index") | Err(_) => {
            let built = workload::run_with(documents(1_000));
            let r = f();
            std::hint::black_box(&built);
            r
        }
        Ok(other) => panic!("WORKLOAD={other}: expected index or deep"),
    }
}
