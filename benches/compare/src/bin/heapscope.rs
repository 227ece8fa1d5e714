//! heapscope 0.3, every allocation (its default); it writes its profile when the profiler drops.
#[path = "../common.rs"]
mod common;

#[global_allocator]
static ALLOC: heapscope::Alloc = heapscope::Alloc::system();

fn main() {
    let profiler = heapscope::Profiler::builder()
        .output(heapscope::Output::dhat_v2(
            std::env::temp_dir().join("compare-heapscope.json"),
        ))
        .build()
        .expect("heapscope starts (frame pointers?)");
    common::run(|| ());
    drop(profiler);
}
