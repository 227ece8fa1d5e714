//! dhat-rs 0.3 in heap mode; it writes dhat-heap.json when the profiler drops.
#[path = "../common.rs"]
mod common;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let _profiler = dhat::Profiler::builder()
        .file_name(std::env::temp_dir().join("compare-dhat-heap.json"))
        .build();
    common::run(|| ());
}
