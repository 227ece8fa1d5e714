//! The unwind-rule cache against libgcc's DWARF unwinder (`backtrace::trace`), frame for frame,
//! on varied stacks: depths of about 7, 20 and 40, a spawned thread, std's growth paths inside
//! the global allocator (Vec, String, HashMap, BTreeMap, format!), closures, generic functions,
//! and a C callback called by glibc's `qsort` (C code without frame pointers). CI runs it in a
//! build without frame pointers (`RUSTFLAGS=""`) as well as in the default one.
#![cfg(all(target_arch = "x86_64", target_os = "linux"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

const DEPTH: usize = 128;

/// A global allocator that, when armed on this thread, captures the stack both ways from
/// inside `alloc`: the allocator's own view of std's growth paths.
struct Probe;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static OURS: Cell<([usize; DEPTH], usize, bool)> = const { Cell::new(([0; DEPTH], 0, false)) };
    static THEIRS: Cell<([usize; DEPTH], usize)> = const { Cell::new(([0; DEPTH], 0)) };
}

// SAFETY: forwards to System unchanged; the capture neither allocates nor touches the block.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(|a| a.replace(false)) {
            capture_into_thread_locals();
        }
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Probe = Probe;

/// Both captures from the same function, so they share every frame from its caller outward.
#[inline(never)]
fn capture_into_thread_locals() {
    let mut ours = [0usize; DEPTH];
    let (n, clean) = tracealloc::__private::unwind_tables(&mut ours).expect("x86_64 Linux");
    let mut theirs = [0usize; DEPTH];
    let mut m = 0;
    // SAFETY: no other thread unwinds with this closure; it neither allocates nor panics.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            theirs[m] = frame.ip() as usize;
            m += 1;
            m < DEPTH
        });
    }
    OURS.with(|o| o.set((ours, n, clean)));
    THEIRS.with(|t| t.set((theirs, m)));
    black_box(&ours);
}

static FRAMES_COMPARED: AtomicUsize = AtomicUsize::new(0);

/// Checks the last capture of this thread: the rule cache's frames from the capturing
/// function's caller outward equal libgcc's, to the last, and the stack ended cleanly.
fn check(what: &str) -> usize {
    let (ours, n, clean) = OURS.with(|o| o.get());
    let (theirs, m) = THEIRS.with(|t| t.get());
    assert!(n >= 4, "{what}: the rule cache found {n} frames");
    let ours = &ours[..n];
    let mut theirs = &theirs[..m];
    while theirs.last() == Some(&0) {
        theirs = &theirs[..theirs.len() - 1];
    }
    // ours[0] returns into `unwind_tables`, ours[1] into `capture_into_thread_locals`, ours[2]
    // into its caller: from there on both see the same frames.
    let start = theirs
        .iter()
        .position(|&ip| ip == ours[2])
        .unwrap_or_else(|| panic!("{what}: {:#x} not in libgcc's stack", ours[2]));
    assert_eq!(
        &ours[2..],
        &theirs[start..],
        "{what}: frames differ (ours {} from index 2, libgcc {} from {start})",
        n - 2,
        theirs.len() - start
    );
    assert!(
        clean,
        "{what}: the rule cache did not reach the outermost frame"
    );
    FRAMES_COMPARED.fetch_add(n - 2, Ordering::Relaxed);
    n - 2
}

/// Arms the probe and runs `f`, whose first allocation is captured.
fn armed<R>(f: impl FnOnce() -> R) -> R {
    ARMED.with(|a| a.set(true));
    let r = f();
    assert!(!ARMED.with(|a| a.get()), "the code did not allocate");
    r
}

#[inline(never)]
fn recurse(depth: usize, leaf: &mut dyn FnMut()) -> usize {
    if depth == 0 {
        leaf();
        return black_box(0);
    }
    black_box(recurse(black_box(depth - 1), leaf)) + 1
}

#[inline(never)]
fn generic_leaf<T: std::fmt::Debug + Default + Clone>(items: usize) -> Vec<T> {
    armed(|| black_box(vec![T::default(); items]))
}

#[test]
fn depths_of_7_20_and_40() {
    for depth in [1, 14, 34] {
        let mut total = 0;
        recurse(depth, &mut || {
            armed(|| black_box(Box::new([0u8; 48])));
            total = check(&format!("recursion {depth}"));
        });
        assert!(total > depth, "{total} frames at depth {depth}");
    }
}

#[test]
fn std_growth_paths_inside_the_allocator() {
    let mut v: Vec<u64> = Vec::with_capacity(1);
    v.push(1);
    armed(|| v.push(2));
    check("Vec::push growth");

    let mut s = String::with_capacity(1);
    armed(|| s.push_str("more than one byte"));
    check("String growth");

    let mut map: HashMap<u64, u64> = HashMap::new();
    armed(|| {
        for i in 0..4 {
            map.insert(i, i);
        }
    });
    check("HashMap insert");

    let mut tree: BTreeMap<u64, u64> = BTreeMap::new();
    armed(|| tree.insert(1, 1));
    check("BTreeMap insert");

    let text = armed(|| format!("{}-{:?}", black_box(42), black_box([1, 2])));
    check("format!");
    black_box((v, s, map, tree, text));
}

#[test]
fn closures_and_generic_functions() {
    let make = |n: usize| armed(|| black_box(vec![0u32; n]));
    black_box(make(10));
    check("closure");
    black_box(generic_leaf::<String>(3));
    check("generic fn, String");
    black_box(generic_leaf::<(u8, u64)>(5));
    check("generic fn, tuple");
    let boxed: Box<dyn Fn() -> Vec<u8>> = Box::new(|| armed(|| black_box(vec![1u8; 9])));
    black_box(boxed());
    check("boxed dyn Fn");
}

#[test]
fn a_spawned_thread() {
    std::thread::spawn(|| {
        recurse(5, &mut || {
            armed(|| black_box(Box::new(7u64)));
            check("spawned thread");
        });
    })
    .join()
    .unwrap();
}

extern "C" fn compare_and_allocate(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
    // SAFETY: qsort passes pointers to two elements of the u32 array being sorted.
    let (a, b) = unsafe { (*(a as *const u32), *(b as *const u32)) };
    if ARMED_IN_QSORT.with(|f| f.replace(false)) {
        armed(|| black_box(Box::new([a, b])));
    }
    a.cmp(&b) as libc::c_int
}

thread_local! {
    static ARMED_IN_QSORT: Cell<bool> = const { Cell::new(false) };
}

#[test]
fn a_c_callback_through_qsort() {
    let mut data: Vec<u32> = (0..64).rev().collect();
    ARMED_IN_QSORT.with(|f| f.set(true));
    // SAFETY: sorts 64 u32s in place with a comparator of the right type.
    unsafe {
        libc::qsort(
            data.as_mut_ptr().cast(),
            data.len(),
            std::mem::size_of::<u32>(),
            Some(compare_and_allocate),
        );
    }
    let frames = check("callback from qsort");
    assert!(frames > 5);
    assert!(data.windows(2).all(|w| w[0] <= w[1]));
}
