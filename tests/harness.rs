//! The same verdicts in every harness: `cargo test` (libtest captures the output of `println!`
//! into a buffer of its own), `cargo test -- --nocapture` and `cargo nextest run` (the terminal).
//! CI runs this file in all three.

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[inline(never)]
fn kept(n: usize) -> Vec<u8> {
    vec![7; n]
}

#[test]
fn printing_in_measured_code_counts_the_same_in_every_harness() {
    for round in 0..3 {
        let (v, m) = tracealloc::measure(|| {
            println!("round {round}: a line printed by the measured code, {}", 42);
            eprintln!("and one on stderr, {}", "x".repeat(300).len());
            kept(1000)
        });
        // `repeat`'s 300 B string (freed before the kept 1000 B block); nothing of the output's.
        assert_eq!(
            (m.allocations(), m.allocated(), m.retained(), m.peak()),
            (2, 1300, 1000, 1000),
            "round {round}\n{m}"
        );
        drop(v);
        tracealloc::assert_no_leaks!({
            println!("{}", "a line printed inside a leak check ".repeat(40));
        });
        tracealloc::assert_no_alloc!(println!("no allocation of its own: {round}"));
    }
}

#[test]
fn a_leak_is_still_a_leak_when_the_code_prints() {
    let failed = std::panic::catch_unwind(|| {
        tracealloc::assert_no_leaks!({
            println!("printing, then keeping a block");
            std::mem::forget(kept(64));
        })
    });
    let message = failed.expect_err("a forgotten block is a leak");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("64 B"), "{message}");
}

static CACHE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Keeps a small block in a cache that lives on (a known, bounded "leak").
#[inline(never)]
fn cached_small() -> u32 {
    CACHE.lock().unwrap().push(vec![1; 100]);
    line!() - 1
}

/// Forgets a large block (a real leak).
#[inline(never)]
fn leak_large() -> u32 {
    std::mem::forget(vec![2u8; 5000]);
    line!() - 1
}

#[test]
fn per_stack_leak_limits_and_filters() {
    CACHE.lock().unwrap().reserve(100);
    let (lines, m) = tracealloc::measure(|| (cached_small(), cached_small(), leak_large()));
    let leaks = m.leaks();
    assert!(
        leaks
            .iter()
            .any(|s| s.size == 5000 && s.traceback.call_site().lineno == lines.2),
        "{leaks:?}"
    );
    assert_eq!(leaks.iter().map(|s| s.size).sum::<usize>(), m.retained());

    let message = |r: std::thread::Result<()>| {
        let e = r.expect_err("the leak check must fail");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    // The cache's 100 B blocks stay under the limit; the 5000 B leak does not.
    let failed = message(std::panic::catch_unwind(|| {
        tracealloc::assert_leaks_below!("1 KiB", {
            cached_small();
            leak_large();
        })
    }));
    assert!(
        failed.contains("1 call stack still holds 1024 B or more"),
        "{failed}"
    );
    assert!(
        failed.contains(&format!("tests/harness.rs:{}", leak_large_line())),
        "{failed}"
    );
    assert!(
        !failed.contains(&format!("tests/harness.rs:{}", cached_small_line())),
        "the cache's stack is under the limit\n{failed}"
    );
    // Small leaks pass; a filter leaves a known stack out.
    tracealloc::assert_leaks_below!("1 KiB", {
        cached_small();
    });
    tracealloc::assert_leaks_below!(
        "1 KiB",
        {
            leak_large();
        },
        filter = |tb: &tracealloc::Traceback| !tb.mentions("leak_large")
    );
    let (_, m) = tracealloc::measure(|| {
        leak_large();
    });
    m.assert_leaks_below_where("1 KiB", |tb| !tb.mentions("harness::leak_large"));
    let checked = message(std::panic::catch_unwind(|| m.assert_leaks_below(5000)));
    assert!(checked.contains("5000 B"), "{checked}");
    m.assert_leaks_below(5001);
    // A nonsense limit is an error that names it.
    let bad = message(std::panic::catch_unwind(|| {
        tracealloc::assert_leaks_below!("12 parsecs", {})
    }));
    assert!(bad.contains("12 parsecs"), "{bad}");
}

fn leak_large_line() -> u32 {
    // The line of the `vec!` in `leak_large` (the function leaks one block to say where).
    let (line, _) = tracealloc::measure(leak_large);
    line
}

fn cached_small_line() -> u32 {
    let (line, _) = tracealloc::measure(cached_small);
    line
}

#[test]
fn large_sizes_carry_the_exact_count() {
    let failed = std::panic::catch_unwind(|| {
        tracealloc::assert_peak_below!("10 KiB", kept(20_000));
    })
    .expect_err("20,000 B is over 10 KiB");
    let failed = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        failed.starts_with(
            "tracealloc: peak 19.5 KiB (20,000 B) reached the limit 10.0 KiB (10,240 B)"
        ),
        "{failed}"
    );
    assert!(
        failed.contains("19.5 KiB (20,000 B) in 1 block at tests/harness.rs:"),
        "{failed}"
    );
}

#[test]
fn an_unoptimized_build_says_so_in_the_snapshot_notes() {
    let snapshot = tracealloc::take_snapshot().unwrap();
    let said = snapshot
        .notes()
        .iter()
        .any(|n| n.starts_with("tracealloc is compiled without optimization"));
    // This crate's own test profile: the dev profile (opt-level 0) in debug, 3 in release.
    assert_eq!(said, cfg!(debug_assertions), "{:?}", snapshot.notes());
}
