//! Fault trial: `fork` while other threads allocate. The child's only thread is the one that
//! forked; a tracer lock held by another thread at that moment would never be released there
//! (before the fix, 79 and 106 of 200 children hung). Each child must finish, and keep exact
//! books: `current` equal to the live traced bytes its snapshot lists.
//!
//! Alone in its binary: no other test may be symbolizing when a child is forked (the
//! `backtrace` crate's lock is not covered, see README "Limitations").

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const CHILDREN: usize = 200;

fn churn(stop: &AtomicBool, seed: usize) {
    let mut live: Vec<String> = Vec::new();
    let mut i = seed;
    while !stop.load(Relaxed) {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if live.len() < 500 {
            live.push("x".repeat(1 + (i >> 40) % 200));
        }
        let k = (i >> 20) % live.len();
        if i % 3 == 0 {
            live.swap_remove(k);
        } else {
            live[k].push_str("grow");
        }
    }
}

/// What a child does: allocate, check its books, exit without running the parent's exit
/// handlers. Exit status 0 when the books are exact.
fn child(check: bool) -> ! {
    let v: Vec<String> = (0..1000).map(|i| format!("child {i}")).collect();
    let mut code = 0;
    if check {
        match tracealloc::take_snapshot() {
            Ok(snapshot) => {
                let listed = snapshot.total_size();
                let current = tracealloc::traced_memory().current;
                if listed != current {
                    code = 2;
                }
            }
            Err(_) => code = 3,
        }
    }
    drop(std::hint::black_box(v));
    // SAFETY: `_exit` ends the child at once; nothing of the parent's runs in it.
    unsafe { libc::_exit(code) }
}

#[test]
fn every_child_of_a_fork_under_allocating_threads_finishes_with_exact_books() {
    // Symbolize once in the parent: the children inherit the cache.
    let _ = tracealloc::take_snapshot().expect("tracing");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(&stop, t))
        })
        .collect();
    let (mut finished, mut hung, mut wrong_books, mut failed) = (0, 0, 0, 0);
    let mut forked = 0;
    for n in 0..CHILDREN {
        if hung >= 5 {
            // The verdict is in; waiting out every hung child would take minutes.
            break;
        }
        forked += 1;
        std::thread::sleep(Duration::from_micros(300));
        // SAFETY: the child only allocates, snapshots and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            child(n % 10 == 0);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    finished += 1;
                } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 2 {
                    wrong_books += 1;
                } else {
                    failed += 1;
                }
                break;
            }
            if Instant::now() > deadline {
                hung += 1;
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        (finished, hung, wrong_books, failed),
        (CHILDREN, 0, 0, 0),
        "children of {forked} forked: (finished, hung, books wrong, other failures)"
    );
    // The parent's books too.
    let snapshot = tracealloc::take_snapshot().unwrap();
    let listed = snapshot.total_size();
    assert_eq!(listed, tracealloc::traced_memory().current);
}
