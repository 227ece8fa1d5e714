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
