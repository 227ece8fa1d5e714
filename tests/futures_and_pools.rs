//! Measurements that follow the work: futures polled on any worker of tokio's multi-thread
//! runtime, rayon's pool and scoped threads through `Scope::run`; and the ways a measurement
//! refuses to be silently wrong (other threads' unscoped allocations reported, assertion panics
//! at the test's line, negative limits refused; a clear during a measurement: tests/disturbed.rs).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tracealloc::{Measurement, Scope};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// Returns `Pending` once, waking itself: the runtime may then run the task on another worker.
/// (No allocation, unlike a timer.)
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// `blocks` blocks of `size` bytes, yielding between them; returns the threads it ran on.
async fn task(blocks: usize, size: usize) -> Vec<std::thread::ThreadId> {
    let mut threads = Vec::with_capacity(blocks + 1);
    threads.push(std::thread::current().id());
    let mut kept = Vec::with_capacity(blocks);
    for _ in 0..blocks {
        kept.push(black_box(vec![1u8; size]));
        YieldOnce(false).await;
        threads.push(std::thread::current().id());
    }
    drop(kept);
    threads
}

#[test]
fn forty_futures_measured_at_once_on_a_multi_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let mut moved = 0;
    for round in 0..20 {
        let results: Vec<(usize, usize, Vec<std::thread::ThreadId>, Measurement)> = runtime
            .block_on(async {
                let handles: Vec<_> = (0..40usize)
                    .map(|i| {
                        let (blocks, size) = (5 + i % 7, 100 + 8 * i);
                        tokio::spawn(async move {
                            let (threads, m) = tracealloc::measure_future(task(blocks, size)).await;
                            (blocks, size, threads, m)
                        })
                    })
                    .collect();
                let mut out = Vec::new();
                for h in handles {
                    out.push(h.await.unwrap());
                }
                out
            });
        for (blocks, size, threads, m) in results {
            // The two `Vec::with_capacity` and the blocks; nothing of the other 39 tasks. The
            // list of threads is the result: still live.
            let expected = (blocks * size + (blocks + 1) * 8 + blocks * 24) as u64;
            assert_eq!(
                (m.allocated(), m.allocations(), m.retained()),
                (expected, blocks as u64 + 2, (blocks + 1) * 8),
                "round {round}: {blocks} blocks of {size} B\n{m}"
            );
            assert_eq!(m.peak() as u64, expected);
            if threads.iter().any(|t| *t != threads[0]) {
                moved += 1;
            }
        }
    }
    assert!(
        moved > 0,
        "no task moved between workers: the test proves less than it says"
    );
}

#[test]
fn a_spawned_task_counts_when_it_carries_the_scope() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (carried, bare) = runtime.block_on(async {
        let carried = tracealloc::measure_future(async {
            let scope = Scope::current().unwrap();
            tokio::spawn(scope.wrap_future(async { black_box(vec![0u8; 5000]).len() }))
                .await
                .unwrap()
        })
        .await
        .1;
        let bare = tracealloc::measure_future(async {
            tokio::spawn(async { black_box(vec![0u8; 5000]).len() })
                .await
                .unwrap()
        })
        .await
        .1;
        (carried, bare)
    });
    assert!(
        carried.allocated() >= 5000,
        "the wrapped task's 5000 B count:\n{carried}"
    );
    assert!(
        bare.allocated() < 5000,
        "an unwrapped task runs outside the scope:\n{bare}"
    );
    assert!(
        bare.others_unscoped_allocations() >= 1,
        "and the measurement says others allocated outside any scope:\n{bare}"
    );
    assert!(bare.to_string().contains("Scope::wrap_future"), "{bare}");
    // The spawned task runs a block written inside the measured one: the check on the
    // measurement cannot pass, whatever the harness.
    assert!(!bare.escaped_work().is_empty(), "{bare}");
    let failed = std::panic::catch_unwind(|| bare.assert_allocations_at_most(100)).unwrap_err();
    let failed = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(failed.contains("cannot pass"), "{failed}");
    assert!(carried.escaped_work().is_empty(), "{carried}");
    carried.assert_allocations_at_most(100);
}

/// Allocates a `Vec<u64>` of `n` elements (one block of `8 n` bytes) and returns it.
#[inline(never)]
fn work(n: u64) -> (Vec<u64>, u32) {
    ((0..n).collect(), line!())
}

/// The retained bytes and blocks of `work`'s line in `m`.
fn work_site(m: &Measurement) -> (usize, usize) {
    let line = work(0).1;
    m.top_retained()
        .iter()
        .find(|s| s.traceback.call_site().lineno == line)
        .map_or((0, 0), |s| (s.size, s.blocks))
}

#[test]
fn rayon_and_scoped_threads_count_the_same_as_sequential_code_through_scope_run() {
    use rayon::prelude::*;
    let items: Vec<u64> = (1..=64).collect();
    let expected = (items.iter().sum::<u64>() as usize * 8, items.len());
    // Warm the pool up: its threads' first allocations are not the test's business.
    let _ = items.par_iter().map(|&x| x + 1).sum::<u64>();

    let (_, sequential) =
        tracealloc::measure(|| items.iter().map(|&x| work(x).0).collect::<Vec<_>>());
    assert_eq!(work_site(&sequential), expected);

    let (_, pooled) = tracealloc::measure(|| {
        let scope = Scope::current().unwrap();
        items
            .par_iter()
            .map(|&x| scope.run(|| work(x).0))
            .collect::<Vec<_>>()
    });
    assert_eq!(
        work_site(&pooled),
        expected,
        "rayon through Scope::run\n{pooled}"
    );

    let (_, threads) = tracealloc::measure(|| {
        let scope = Scope::current().unwrap();
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(16)
                .map(|chunk| {
                    s.spawn(move || {
                        scope.run(|| chunk.iter().map(|&x| work(x).0).collect::<Vec<_>>())
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(
        work_site(&threads),
        expected,
        "std::thread::scope through Scope::run\n{threads}"
    );

    // Without it, the pool's allocations are not the measurement's, and it says so.
    let (_, bare) =
        tracealloc::measure(|| items.par_iter().map(|&x| work(x).0).collect::<Vec<_>>());
    assert_eq!(work_site(&bare).1, 0, "{bare}");
    assert!(
        bare.others_unscoped_allocations() >= items.len() as u64 / 2,
        "{bare}"
    );
    assert!(bare.to_string().contains("Scope::run"), "{bare}");
}

static LOCATION: Mutex<Option<(String, u32)>> = Mutex::new(None);

#[test]
fn assertion_panics_point_at_the_test_and_negative_limits_are_refused() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if let Some(l) = info.location() {
            *LOCATION.lock().unwrap() = Some((l.file().to_owned(), l.line()));
        }
    }));
    let (line, failed) = (
        line!() + 1,
        std::panic::catch_unwind(|| tracealloc::assert_no_alloc!(black_box(vec![1u8; 10]))),
    );
    let at = LOCATION.lock().unwrap().take();
    let (negative_line, negative) = (
        line!() + 1,
        std::panic::catch_unwind(|| tracealloc::assert_allocations!(-1i32, black_box(1))),
    );
    let at_negative = LOCATION.lock().unwrap().take();
    let (bad_line, bad) = (
        line!() + 1,
        std::panic::catch_unwind(|| tracealloc::assert_peak_below!("-5 MB", black_box(1))),
    );
    let at_bad = LOCATION.lock().unwrap().take();
    std::panic::set_hook(previous);
    let here = |line| Some(("tests/futures_and_pools.rs".to_owned(), line));
    assert_eq!(
        at_negative,
        here(negative_line),
        "a negative count fails at the test"
    );
    assert_eq!(at_bad, here(bad_line), "a bad size limit fails at the test");
    let bad = bad.unwrap_err();
    let bad = bad.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(bad.contains("a size cannot be negative"), "{bad}");
    assert!(failed.is_err());
    assert_eq!(
        at,
        Some(("tests/futures_and_pools.rs".to_owned(), line)),
        "the panic points at the assertion"
    );
    let message = negative.unwrap_err();
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("the allocation limit -1 is not a count"),
        "{message}"
    );
}

/// Like `work`, with blocks 64 times larger, on a line no other test here calls.
#[inline(never)]
fn all_threads_work(n: u64) -> (Vec<u64>, u32) {
    ((0..n * 64).collect(), line!())
}

#[test]
fn measure_all_threads_counts_a_pool_it_does_not_control() {
    use rayon::prelude::*;
    let items: Vec<u64> = (1..=64).collect();
    let _ = items.par_iter().map(|&x| x + 1).sum::<u64>();
    let line = all_threads_work(0).1;
    let site = |m: &Measurement| {
        m.top_retained()
            .iter()
            .find(|s| s.traceback.call_site().lineno == line)
            .map_or((0, 0), |s| (s.size, s.blocks))
    };
    let expected = (items.iter().sum::<u64>() as usize * 64 * 8, items.len());
    let (_, sequential) = tracealloc::measure(|| {
        items
            .iter()
            .map(|&x| all_threads_work(x).0)
            .collect::<Vec<_>>()
    });
    assert_eq!(site(&sequential), expected, "{sequential}");
    let (_, everyone) = tracealloc::measure_all_threads(|| {
        items
            .par_iter()
            .map(|&x| all_threads_work(x).0)
            .collect::<Vec<_>>()
    });
    assert_eq!(site(&everyone), expected, "{everyone}");
    assert!(everyone.escaped_work().is_empty(), "{everyone}");
    // One at a time, and not inside itself.
    let (nested, _) = tracealloc::measure_all_threads(|| tracealloc::try_measure_all_threads(|| 1));
    assert!(
        matches!(nested, Err(tracealloc::Error::AllThreadsNested)),
        "{nested:?}"
    );
}

/// Six blocks for `n` = 5 (five and the `Vec` holding them), on a line no other test here calls.
#[inline(never)]
fn beside_work(n: usize) -> (Vec<Vec<u8>>, u32) {
    let line = line!() + 1;
    let blocks = (0..n).map(|i| black_box(vec![7u8; 100 + i])).collect();
    (blocks, line)
}

#[test]
fn a_measurement_beside_an_all_threads_measurement_still_sees_the_work_it_left_out() {
    use std::sync::Barrier;
    let line = beside_work(0).1;
    let at_line = |sites: &[tracealloc::SiteUsage]| {
        sites
            .iter()
            .filter(|s| s.traceback.call_site().lineno == line)
            .map(|s| s.blocks)
            .sum::<usize>()
    };
    let (opened, done) = (Barrier::new(2), Barrier::new(2));
    let (everyone, mine) = std::thread::scope(|s| {
        let everyone = s.spawn(|| {
            tracealloc::measure_all_threads(|| {
                opened.wait();
                done.wait();
            })
            .1
        });
        opened.wait();
        // A thread the measurement does not carry its scope to: in no scope of its own, its
        // blocks are the all-threads measurement's, and work this measurement left out.
        let (_, mine) =
            tracealloc::measure(|| std::thread::spawn(|| beside_work(5).0).join().unwrap());
        done.wait();
        (everyone.join().unwrap(), mine)
    });
    assert_eq!(
        at_line(everyone.top_allocating()),
        6,
        "the thread's blocks are the all-threads measurement's:\n{everyone}"
    );
    assert_eq!(everyone.others_unscoped_allocations(), 0, "{everyone}");
    assert!(everyone.escaped_work().is_empty(), "{everyone}");
    assert!(
        mine.others_unscoped_allocations() >= 6,
        "the thread's blocks are work the measurement left out:\n{mine}"
    );
    assert_eq!(at_line(&mine.escaped_work()), 6, "{mine}");
    assert_eq!(at_line(mine.top_allocating()), 0, "{mine}");
    assert!(
        std::panic::catch_unwind(|| mine.assert_allocations_at_most(100)).is_err(),
        "{mine}"
    );
}

/// Like `beside_work`, on a line no other test here calls.
#[inline(never)]
fn carried_work(n: usize) -> (Vec<Vec<u8>>, u32) {
    let line = line!() + 1;
    let blocks = (0..n).map(|i| black_box(vec![3u8; 200 + i])).collect();
    (blocks, line)
}

#[test]
fn a_thread_beside_an_all_threads_measurement_has_no_scope_to_carry() {
    use std::sync::Barrier;
    let line = carried_work(0).1;
    let at_line = |sites: &[tracealloc::SiteUsage]| {
        sites
            .iter()
            .filter(|s| s.traceback.call_site().lineno == line)
            .map(|s| s.blocks)
            .sum::<usize>()
    };
    let (opened, done) = (Barrier::new(2), Barrier::new(2));
    let (everyone, (carried, mine)) = std::thread::scope(|s| {
        let everyone = s.spawn(|| {
            tracealloc::measure_all_threads(|| {
                opened.wait();
                done.wait();
            })
            .1
        });
        opened.wait();
        // Pool-like code that carries whatever scope its thread is in into the work: on a
        // thread in no scope of its own there is none, the all-threads measurement's included.
        let ((carried, _), mine) = tracealloc::measure(|| {
            std::thread::spawn(|| {
                let scope = tracealloc::Scope::current();
                let work = || carried_work(5).0;
                (scope.is_some(), scope.map_or_else(work, |s| s.run(work)))
            })
            .join()
            .unwrap()
        });
        done.wait();
        (everyone.join().unwrap(), (carried, mine))
    });
    assert_eq!(
        at_line(everyone.top_allocating()),
        6,
        "the thread's blocks are the all-threads measurement's:\n{everyone}"
    );
    assert_eq!(at_line(&mine.escaped_work()), 6, "{mine}");
    assert!(
        std::panic::catch_unwind(|| mine.assert_allocations_at_most(100)).is_err(),
        "{mine}"
    );
    assert!(
        !carried,
        "Scope::current() on an unscoped thread was the all-threads scope"
    );
}

/// Like `work`, on a line no other test here calls.
#[inline(never)]
fn nested_work(n: u64) -> (Vec<u64>, u32) {
    ((0..n).collect(), line!())
}

#[test]
fn an_all_threads_measurement_inside_a_measurement_is_not_work_it_left_out() {
    use rayon::prelude::*;
    let items: Vec<u64> = (1..=64).collect();
    let _ = items.par_iter().map(|&x| x + 1).sum::<u64>();
    let line = nested_work(0).1;
    let (inner, outer) = tracealloc::measure(|| {
        tracealloc::measure_all_threads(|| {
            items
                .par_iter()
                .map(|&x| nested_work(x).0)
                .collect::<Vec<_>>()
        })
        .1
    });
    let at_line = |m: &Measurement| {
        m.top_allocating()
            .iter()
            .filter(|s| s.traceback.call_site().lineno == line)
            .map(|s| s.blocks)
            .sum::<usize>()
    };
    assert_eq!(at_line(&inner), items.len(), "{inner}");
    // The pool's blocks count in the measurement around it too, and are not work it left out.
    assert_eq!(at_line(&outer), items.len(), "{outer}");
    assert!(outer.escaped_work().is_empty(), "{outer}");
    outer.assert_peak_below("1 GiB");
}

/// The lengths of `work(x)` for each item, computed in the pool: the result's `Vec` is made on
/// the calling thread, each item's `Vec` on a worker.
#[inline(never)]
fn pooled_lengths(items: &[u64]) -> Vec<usize> {
    use rayon::prelude::*;
    let mut lengths = Vec::with_capacity(items.len());
    items
        .par_iter()
        .map(|&x| work(x).0.len())
        .collect_into_vec(&mut lengths);
    lengths
}

#[test]
fn work_handed_to_a_pool_without_the_scope_fails_the_assertions() {
    use rayon::prelude::*;
    let items: Vec<u64> = (1..=64).collect();
    let _ = items.par_iter().map(|&x| x + 1).sum::<u64>();
    let message = |r: std::thread::Result<usize>| {
        let e = r.expect_err("the assertion must fail");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    // The false pass of the issue: every allocation happens on the pool's workers.
    let bare = std::panic::catch_unwind(|| {
        tracealloc::assert_no_alloc!(items.par_iter().map(|&x| work(x).0.len()).sum::<usize>())
    });
    let bare = message(bare);
    assert!(bare.contains("cannot pass"), "{bare}");
    assert!(bare.contains("measure_all_threads"), "{bare}");
    assert!(
        bare.contains(&format!("tests/futures_and_pools.rs:{}", work(0).1)),
        "the message names the work's line\n{bare}"
    );
    let leaks = std::panic::catch_unwind(|| {
        tracealloc::assert_no_leaks!(items.par_iter().map(|&x| work(x).0.len()).sum::<usize>())
    });
    assert!(message(leaks).contains("cannot pass"));
    // The same through the check on a measurement.
    let (_, m) = tracealloc::measure(|| items.par_iter().map(|&x| work(x).0.len()).sum::<usize>());
    assert!(!m.escaped_work().is_empty(), "{m}");
    let checked = std::panic::catch_unwind(|| {
        m.assert_allocations_at_most(1000);
        0
    });
    assert!(message(checked).contains("cannot pass"));

    // Carried into the pool, the work counts and the assertion holds exactly.
    let carried = tracealloc::assert_allocations!(items.len(), {
        let scope = Scope::current().unwrap();
        items
            .par_iter()
            .map(|&x| scope.run(|| work(x).0.len()))
            .sum::<usize>()
    });
    assert_eq!(carried as u64, items.iter().sum::<u64>());
    let (_, m) = tracealloc::measure(|| {
        let scope = Scope::current().unwrap();
        items
            .par_iter()
            .map(|&x| scope.run(|| work(x).0.len()))
            .sum::<usize>()
    });
    assert!(m.escaped_work().is_empty(), "{m}");
    m.assert_allocations_at_most(items.len());

    // A library function that hands its work to the pool: its closures are found through the
    // measured code's own call sites (the function allocated on the measuring thread too).
    let (lengths, m) = tracealloc::measure(|| pooled_lengths(&items));
    assert_eq!(lengths.len(), items.len());
    let escaped = m.escaped_work();
    assert!(
        escaped
            .iter()
            .any(|s| s.traceback.call_site().lineno == work(0).1),
        "{m}\n{escaped:?}"
    );
}

static NEIGHBOUR_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static NEIGHBOUR_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A neighbour test that allocates the program's own blocks in a loop while
/// `a_busy_neighbour_does_not_fail_an_assertion` measures (up to 10 s).
#[test]
fn busy_neighbour() {
    use std::sync::atomic::Ordering;
    if std::env::var_os("NEXTEST_RUN_ID").is_some() {
        return; // a process of its own: there is no test beside it
    }
    let started = std::time::Instant::now();
    NEIGHBOUR_RUNNING.store(true, Ordering::SeqCst);
    while !NEIGHBOUR_STOP.load(Ordering::SeqCst) && started.elapsed().as_secs() < 10 {
        black_box(work(16));
    }
    NEIGHBOUR_RUNNING.store(false, Ordering::SeqCst);
}

#[test]
fn a_busy_neighbour_does_not_fail_an_assertion() {
    use std::sync::atomic::Ordering;
    let alone = std::env::var_os("NEXTEST_RUN_ID").is_some()
        || std::env::args().any(|a| a == "--test-threads=1" || a.starts_with("--exact"));
    let waited = std::time::Instant::now();
    while !alone && !NEIGHBOUR_RUNNING.load(Ordering::SeqCst) && waited.elapsed().as_secs() < 5 {
        std::thread::yield_now();
    }
    let mut beside = 0;
    let mut rounds = 0;
    let measuring = std::time::Instant::now();
    // 200 rounds, and more while the neighbour runs but has not yet allocated during one (on a
    // busy 2-core machine it can be descheduled for all of the first 200).
    while rounds < 200
        || (beside == 0
            && NEIGHBOUR_RUNNING.load(Ordering::SeqCst)
            && measuring.elapsed().as_secs() < 5)
    {
        let (_, m) = tracealloc::measure(|| black_box(items_sum(1000)));
        beside += u64::from(m.others_unscoped_allocations() > 0);
        m.assert_allocations_at_most(0);
        tracealloc::assert_no_alloc!(black_box(items_sum(1000)));
        rounds += 1;
    }
    NEIGHBOUR_STOP.store(true, Ordering::SeqCst);
    if NEIGHBOUR_RUNNING.load(Ordering::SeqCst) || beside > 0 {
        // It really ran beside a neighbour: the assertions above held next to it.
        assert!(beside > 0);
    }
}

#[inline(never)]
fn items_sum(n: u64) -> u64 {
    (0..n).map(black_box).sum()
}
