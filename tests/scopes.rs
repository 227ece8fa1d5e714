//! Heap measurements under parallel `cargo test`: every test measures exact, known figures
//! while the `churn_*` neighbours allocate and free on their own threads in the same process.
//! Copy any of these into your own tests.

use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// The line of `Vec::with_capacity` in `bytes`, for the verbatim failure messages.
const BYTES_LINE: u32 = line!() + 4;
/// Allocates exactly `n` bytes in one block.
#[inline(never)]
fn bytes(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 1u8);
    black_box(v)
}

fn churn(seconds: f64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..2)
        .map(|t| {
            std::thread::spawn(move || {
                let mut held: Vec<Vec<u8>> = Vec::new();
                let mut i = t;
                while Instant::now() < until {
                    i += 1;
                    held.push(vec![i as u8; 1 + i % 5000]);
                    if held.len() > 64 {
                        held.drain(..32);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn churn_neighbour_one() {
    churn(1.5);
}

#[test]
fn churn_neighbour_two() {
    churn(1.5);
}

/// (peak, allocated, allocations, retained)
fn figures(m: &tracealloc::Measurement) -> (usize, u64, u64, usize) {
    (m.peak(), m.allocated(), m.allocations(), m.retained())
}

#[test]
fn sequential_blocks() {
    let (kept, m) = tracealloc::measure(|| {
        let a = bytes(1000);
        let b = bytes(2000);
        drop(a);
        let c = bytes(500);
        (b, c)
    });
    assert_eq!(figures(&m), (3000, 3500, 3, 2500));
    drop(kept);
}

#[test]
fn boxes_and_strings() {
    let (kept, m) = tracealloc::measure(|| {
        let page = black_box(Box::new([0u8; 4096]));
        drop(black_box(String::with_capacity(100)));
        page
    });
    assert_eq!(figures(&m), (4196, 4196, 2, 4096));
    drop(kept);
}

#[test]
fn overlapping_lifetimes() {
    let (kept, m) = tracealloc::measure(|| {
        let a = bytes(1000);
        let b = bytes(2000);
        drop(a);
        let c = bytes(3000);
        drop(b);
        let d = bytes(100);
        (c, d)
    });
    assert_eq!(figures(&m), (5000, 6100, 4, 3100));
    drop(kept);
}

#[test]
fn nothing_allocated() {
    let (sum, m) = tracealloc::measure(|| (0..1000u64).sum::<u64>());
    assert_eq!(sum, 499_500);
    assert_eq!(figures(&m), (0, 0, 0, 0));
}

#[test]
fn everything_freed() {
    let ((), m) = tracealloc::measure(|| {
        for n in [100, 200, 300] {
            drop(bytes(n));
        }
    });
    assert_eq!(figures(&m), (300, 600, 3, 0));
}

#[test]
fn peak_in_the_middle() {
    let ((), m) = tracealloc::measure(|| {
        let a = bytes(10_000);
        let b = bytes(20_000);
        let c = bytes(30_000);
        drop((a, b, c));
        drop(bytes(50_000));
    });
    assert_eq!(figures(&m), (60_000, 110_000, 4, 0));
    // At the peak: the three first blocks, each at its own line of `bytes`... one line here.
    assert_eq!(m.top_at_peak().len(), 1);
    assert_eq!(
        (m.top_at_peak()[0].size, m.top_at_peak()[0].blocks),
        (60_000, 3)
    );
}

#[test]
fn realloc_counts_its_new_size() {
    let (v, m) = tracealloc::measure(|| {
        let mut v: Vec<u8> = Vec::with_capacity(1000);
        v.reserve_exact(4000 - v.len());
        black_box(v)
    });
    assert_eq!(v.capacity(), 4000);
    // Peak: the new block only (the old one is freed as the new one appears).
    assert_eq!(figures(&m), (4000, 5000, 2, 4000));
}

#[test]
fn freed_on_another_thread_is_credited_back() {
    // A thread started outside the scope; bounded channels allocate nothing per message.
    let (to_worker, inbox) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
    let (done, finished) = std::sync::mpsc::sync_channel::<()>(1);
    let worker = std::thread::spawn(move || {
        for block in inbox {
            drop(block);
            done.send(()).unwrap();
        }
    });
    // One round first: a thread's first blocking receive allocates its waiting context.
    to_worker.send(Vec::new()).unwrap();
    finished.recv().unwrap();
    let ((), m) = tracealloc::measure(|| {
        to_worker.send(bytes(7000)).unwrap();
        finished.recv().unwrap();
    });
    assert_eq!(
        figures(&m),
        (7000, 7000, 1, 0),
        "freed by the worker, credited back"
    );
    drop(to_worker);
    worker.join().unwrap();
}

#[test]
fn a_thread_that_joins_the_scope_is_counted() {
    let ((), m) = tracealloc::measure(|| {
        let handle = tracealloc::spawn(|| bytes(3000));
        let block = handle.join().unwrap();
        drop(block);
        let scope = tracealloc::Scope::current().expect("inside measure");
        std::thread::spawn(move || {
            let _in = scope.enter();
            drop(bytes(4000));
        })
        .join()
        .unwrap();
    });
    assert!(m.peak() >= 4000, "{m}");
    assert_eq!(m.retained(), 0, "{m}");
    assert!(m.allocated() >= 7000, "{m}");
}

#[test]
fn nested_scopes_add_up() {
    let ((inner_m, kept), outer) = tracealloc::measure(|| {
        let before = bytes(1000);
        let (kept, inner) = tracealloc::measure(|| {
            drop(bytes(8000));
            bytes(2000)
        });
        drop(before);
        (inner, kept)
    });
    assert_eq!(figures(&inner_m), (8000, 10_000, 2, 2000));
    assert_eq!(figures(&outer), (9000, 11_000, 3, 2000));
    drop(kept);
}

#[test]
fn reset_peak_inside_a_scope() {
    let ((), m) = tracealloc::measure(|| {
        drop(bytes(50_000));
        let kept = bytes(100);
        tracealloc::Scope::current().unwrap().reset_peak();
        drop(bytes(1000));
        drop(kept);
    });
    assert_eq!(figures(&m), (1100, 51_100, 3, 0));
}

#[test]
fn many_small_blocks() {
    let (v, m) = tracealloc::measure(|| (0..1000).map(|_| bytes(16)).collect::<Vec<_>>());
    // 1000 blocks of 16 B, plus the outer vector of 1000 × 24 B.
    assert_eq!(figures(&m), (16_000 + 24_000, 40_000, 1001, 40_000));
    drop(v);
}

#[test]
fn retained_sites_name_the_line() {
    let ((kept, line), m) = tracealloc::measure(|| (black_box(vec![0u32; 2500]), line!()));
    assert_eq!(m.retained(), 10_000);
    let site = &m.top_retained()[0];
    assert_eq!(site.size, 10_000);
    assert_eq!(site.traceback.call_site().lineno, line);
    assert_eq!(&*site.traceback.call_site().filename, "tests/scopes.rs");
    drop(kept);
}

#[test]
fn macros_return_the_value_when_they_pass() {
    let v = tracealloc::assert_peak_below!("64 KiB", bytes(1000));
    assert_eq!(v.len(), 1000);
    let n = tracealloc::assert_no_leaks!(bytes(10).len());
    assert_eq!(n, 10);
    let w = tracealloc::assert_allocations!(2, bytes(5));
    assert_eq!(w.len(), 5);
    let s = tracealloc::assert_no_alloc!((1..=10u32).product::<u32>());
    assert_eq!(s, 3_628_800);
    // The limit is strict, as pytest-memray's.
    assert!(catch_unwind(|| tracealloc::assert_peak_below!(1000, bytes(1000))).is_err());
    tracealloc::assert_peak_below!(1001, bytes(1000));
}

fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the assertion must fail");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap();
    // The first failing assertion of an unoptimized build ends with a note saying so.
    let message = match message.split_once("\n  note: tracealloc is compiled without optimization")
    {
        Some((head, _)) => head.to_owned(),
        None => message,
    };
    // The churning tests beside these allocate outside any scope, so messages end with the
    // note about other threads; it must name the fix, and the rest is compared verbatim.
    let message = match message.split_once("\n  note: other threads made ") {
        Some((head, note)) => {
            assert!(
                note.contains("carry the scope there with Scope::run"),
                "{note}"
            );
            head.to_owned()
        }
        None => message,
    };
    legacy_closures(&outer_frames(&message))
}

/// The frame after `...` (the outermost of the program's own) is the test function where it has
/// a frame of its own, or the closure `#[test]` wraps it in where an optimized build inlined it
/// there (the TSan build): both read as `<the test>`.
fn outer_frames(message: &str) -> String {
    let mut out = Vec::new();
    let mut after_dots = false;
    for line in message.split('\n') {
        if after_dots && line.contains(" in scopes::") {
            out.push("      <the test>".to_owned());
        } else {
            out.push(line.to_owned());
        }
        after_dots = line == "      ...";
    }
    out.join("\n")
}

/// `text` with the closures of v0 symbol mangling (nightly's default: `f::{closure#1}`) written
/// as legacy mangling writes them (`f::{{closure}}`), so one expectation holds for both.
fn legacy_closures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{closure#") {
        let after = &rest[i + "{closure#".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..i]);
        if digits > 0 && after[digits..].starts_with('}') {
            out.push_str("{{closure}}");
            rest = &after[digits + 1..];
        } else {
            out.push_str("{closure#");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn v0_closures_read_as_legacy_ones() {
    assert_eq!(
        legacy_closures("scopes::f::{closure#1}::{closure#0} and {{closure}}"),
        "scopes::f::{{closure}}::{{closure}} and {{closure}}"
    );
    assert_eq!(
        legacy_closures("{closure#x} {closure#12"),
        "{closure#x} {closure#12"
    );
}

const PARSE_TABLE_LINE: u32 = line!() + 4;
#[inline(never)]
fn parse_table(n: usize) -> Vec<u8> {
    // black_box: a call in tail position becomes a jump in release builds, and its frame is gone.
    black_box(bytes(n))
}

const PARSE_LINE: u32 = line!() + 3;
#[inline(never)]
fn parse(n: usize) -> (Vec<u8>, Vec<u8>) {
    (parse_table(n), parse_table(n / 4))
}

#[test]
fn failure_messages_name_the_lines() {
    let (b, t, p) = (BYTES_LINE, PARSE_TABLE_LINE, PARSE_LINE);
    // A site deeper than two frames ends with the outermost frame of the program: the test.
    let msg = panic_message(|| {
        tracealloc::assert_peak_below!("1.0 KiB", parse(2048));
    });
    assert_eq!(
        msg,
        format!(
            "tracealloc: peak 2560 B reached the limit 1024 B\n\
             \x20 2560 B in 2 blocks at tests/scopes.rs:{b} in scopes::bytes\n\
             \x20     tests/scopes.rs:{t} in scopes::parse_table\n\
             \x20     tests/scopes.rs:{p} in scopes::parse\n\
             \x20     ...\n\
             \x20     <the test>"
        )
    );

    let mut line = 0;
    let msg = panic_message(|| {
        line = line!() + 2;
        let _leak = tracealloc::assert_no_leaks!(
            parse_table(300),
            "the parser must not keep {}",
            "buffers"
        );
    });
    assert_eq!(
        msg,
        format!(
            "the parser must not keep buffers\n\
             tracealloc: 300 B leaked: still live at the end of the measured code (1 block at the sites below)\n\
             \x20 300 B in 1 block at tests/scopes.rs:{b} in scopes::bytes\n\
             \x20     tests/scopes.rs:{t} in scopes::parse_table\n\
             \x20     tests/scopes.rs:{line} in scopes::failure_messages_name_the_lines::{{{{closure}}}}::{{{{closure}}}}\n\
             \x20     ...\n\
             \x20     <the test>"
        )
    );

    let msg = panic_message(|| {
        tracealloc::assert_allocations!(1, parse(100));
    });
    assert_eq!(
        msg,
        format!(
            "tracealloc: 2 allocations, more than the limit of 1\n\
             \x20 2 allocations at tests/scopes.rs:{b} in scopes::bytes\n\
             \x20     tests/scopes.rs:{t} in scopes::parse_table\n\
             \x20     tests/scopes.rs:{p} in scopes::parse\n\
             \x20     ...\n\
             \x20     <the test>"
        )
    );

    let mut line = 0;
    // A size no other closure here uses: optimized builds merge identical closures, and the
    // traceback would then name the other one's line.
    let msg = panic_message(|| {
        line = line!() + 1;
        tracealloc::assert_no_alloc!(bytes(37));
    });
    assert_eq!(
        msg,
        format!(
            "tracealloc: 1 allocation where none were allowed\n\
             \x20 1 allocation at tests/scopes.rs:{b} in scopes::bytes\n\
             \x20     tests/scopes.rs:{line} in scopes::failure_messages_name_the_lines::{{{{closure}}}}::{{{{closure}}}}\n\
             \x20     tests/scopes.rs:{line} in scopes::failure_messages_name_the_lines::{{{{closure}}}}\n\
             \x20     ...\n\
             \x20     <the test>"
        )
    );

    let msg = panic_message(|| {
        tracealloc::assert_peak_below!("12 parsecs", bytes(1));
    });
    assert!(
        msg.starts_with("tracealloc: invalid size limit \"12 parsecs\": unknown unit \"parsecs\""),
        "{msg}"
    );
}

#[test]
fn a_thread_started_elsewhere_can_enter_the_scope() {
    let (to_worker, inbox) = std::sync::mpsc::sync_channel::<Option<tracealloc::Scope>>(1);
    let (done, finished) = std::sync::mpsc::sync_channel::<()>(1);
    let worker = std::thread::spawn(move || {
        for scope in inbox {
            let _in = scope.map(|s| s.enter());
            let kept = bytes(4000);
            drop(bytes(1000));
            drop(kept);
            done.send(()).unwrap();
        }
    });
    // One round outside any scope first: a thread's first blocking receive allocates.
    to_worker.send(None).unwrap();
    finished.recv().unwrap();
    let ((), m) = tracealloc::measure(|| {
        to_worker.send(tracealloc::Scope::current()).unwrap();
        finished.recv().unwrap();
    });
    assert_eq!(figures(&m), (5000, 5000, 2, 0));
    drop(to_worker);
    worker.join().unwrap();
}

const SMALL_LINE: u32 = line!() + 3;
#[inline(never)]
fn small(n: usize) -> Vec<u16> {
    black_box(vec![7u16; n])
}

#[test]
fn the_site_list_is_ordered_by_size() {
    let (b, s) = (BYTES_LINE, SMALL_LINE);
    let mut line = 0;
    let msg = panic_message(|| {
        line = line!() + 1;
        tracealloc::assert_peak_below!(4096, (small(100), bytes(3000), small(1000), small(10)));
    });
    assert_eq!(
        msg,
        format!(
            "tracealloc: peak 5220 B reached the limit 4096 B\n\
             \x20 3000 B in 1 block at tests/scopes.rs:{b} in scopes::bytes\n\
             \x20     tests/scopes.rs:{line} in scopes::the_site_list_is_ordered_by_size::{{{{closure}}}}::{{{{closure}}}}\n\
             \x20     tests/scopes.rs:{line} in scopes::the_site_list_is_ordered_by_size::{{{{closure}}}}\n\
             \x20     ...\n\
             \x20     <the test>\n\
             \x20 2220 B in 3 blocks at tests/scopes.rs:{s} in scopes::small\n\
             \x20     tests/scopes.rs:{line} in scopes::the_site_list_is_ordered_by_size::{{{{closure}}}}::{{{{closure}}}}\n\
             \x20     tests/scopes.rs:{line} in scopes::the_site_list_is_ordered_by_size::{{{{closure}}}}\n\
             \x20     ...\n\
             \x20     <the test>"
        )
    );
}

#[test]
fn every_limit_string_error_is_verbatim() {
    let cases = [
        (
            "12 parsecs",
            "tracealloc: invalid size limit \"12 parsecs\": unknown unit \"parsecs\" (use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)",
        ),
        (
            "24 mib",
            "tracealloc: invalid size limit \"24 mib\": unknown unit \"mib\" (use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)",
        ),
        ("", "tracealloc: invalid size limit \"\": expected a number such as 64 or 1.5"),
        ("MB", "tracealloc: invalid size limit \"MB\": expected a number such as 64 or 1.5"),
        (
            "1.5.2 MB",
            "tracealloc: invalid size limit \"1.5.2 MB\": expected a number such as 64 or 1.5",
        ),
        ("0.3 B", "tracealloc: invalid size limit \"0.3 B\": not a whole number of bytes"),
        (
            "99999999999999999999 TiB",
            "tracealloc: invalid size limit \"99999999999999999999 TiB\": larger than usize::MAX bytes",
        ),
    ];
    for (limit, expected) in cases {
        let msg = panic_message(|| {
            tracealloc::assert_peak_below!(limit, bytes(1));
        });
        assert_eq!(msg, expected);
    }
    let msg = panic_message(|| {
        tracealloc::assert_peak_below!(-5, bytes(1));
    });
    assert_eq!(
        msg,
        "tracealloc: invalid size limit \"-5\": a limit must be a number of bytes from 0 to usize::MAX"
    );
}
