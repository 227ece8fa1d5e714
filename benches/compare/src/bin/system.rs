//! The baseline: no profiler.
#[path = "../common.rs"]
mod common;

fn main() {
    common::run(|| ());
}
