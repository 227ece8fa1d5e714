//! The workloads both bench harnesses run.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;

/// One `GlobalAlloc::alloc` + `dealloc` of `layout`, through `allocator` directly.
#[inline(never)]
pub(crate) fn pair<A: GlobalAlloc>(allocator: &A, layout: Layout) {
    // SAFETY: a nonzero layout, freed right away with the same layout.
    unsafe {
        let p = allocator.alloc(black_box(layout));
        black_box(p);
        allocator.dealloc(p, layout);
    }
}

/// Build and drop a `HashMap<String, Vec<u32>>` of 1000 entries: formatting, growth, reallocs.
#[inline(never)]
pub(crate) fn mixed_workload() -> usize {
    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    for i in 0..1000u32 {
        let values = map.entry(format!("key-{}", i % 1000)).or_default();
        for j in 0..(i % 16) {
            values.push(j);
        }
    }
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    black_box(keys.len())
}
