//! Fault trials: 10,000 short-lived threads whose thread-locals allocate in their destructors;
//! a thread with a 64 KiB stack; a 10,000-frame recursion. Every block traced, at its line,
//! and the books exact.

use std::sync::Mutex;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

static KEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct AllocatesOnDrop;

impl Drop for AllocatesOnDrop {
    fn drop(&mut self) {
        let temporary = format!("{:>100}", "gone at once");
        drop(std::hint::black_box(temporary));
        let kept = "k".repeat(77); // the line of the kept blocks
        KEPT.lock().unwrap().push(kept);
    }
}

thread_local! {
    static ON_EXIT: AllocatesOnDrop = const { AllocatesOnDrop };
}

fn site_bytes(snapshot: &tracealloc::Snapshot, line: u32) -> usize {
    snapshot
        .traces()
        .iter()
        .filter(|t| {
            let site = t.traceback.call_site();
            site.filename.ends_with("threads_and_stacks.rs") && site.lineno == line
        })
        .map(|t| t.size)
        .sum()
}

fn line_of(marker: &str) -> u32 {
    let source = include_str!("threads_and_stacks.rs");
    let index = source
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of"))
        .unwrap();
    index as u32 + 1
}

fn recurse(depth: usize) -> Vec<u8> {
    if depth == 0 {
        return vec![7; 12_345]; // the recursion's block
    }
    let v = recurse(depth - 1);
    std::hint::black_box(v)
}

#[test]
fn thread_local_destructors_small_stacks_and_deep_recursion() {
    const THREADS: usize = 10_000;
    for _ in 0..THREADS / 50 {
        let batch: Vec<_> = (0..50)
            .map(|_| std::thread::spawn(|| ON_EXIT.with(|_| ())))
            .collect();
        for t in batch {
            t.join().unwrap();
        }
    }
    assert_eq!(KEPT.lock().unwrap().len(), THREADS);

    let small = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(|| vec![3u8; 4321]) // the small stack's block
        .unwrap()
        .join()
        .unwrap();

    let deep = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| recurse(10_000))
        .unwrap()
        .join()
        .unwrap();

    let snapshot = tracealloc::take_snapshot().unwrap();
    assert_eq!(
        site_bytes(&snapshot, line_of("// the line of the kept blocks")),
        77 * THREADS,
        "the blocks thread-local destructors kept"
    );
    assert_eq!(
        site_bytes(&snapshot, line_of("// the small stack's block")),
        4321
    );
    let line = line_of("// the recursion's block");
    let trace = snapshot
        .traces()
        .iter()
        .find(|t| t.size == 12_345)
        .expect("the recursion's block is traced");
    assert_eq!(trace.traceback.call_site().lineno, line);
    assert!(trace.traceback.is_truncated(), "10,000 frames do not fit");
    assert_eq!(snapshot.total_size(), tracealloc::traced_memory().current);
    drop((small, deep));
}
