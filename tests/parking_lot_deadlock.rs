//! The dhat-rs deadlock (dhat-rs issues 18 and 25): parking_lot's slow path grows its global
//! hash table while holding its bucket locks, and allocates doing so. A tracer whose hot path
//! parks through parking_lot, or allocates under its own lock, then deadlocks. Here 16 threads
//! fight over parking_lot mutexes (forcing the table to grow with the thread count) while
//! allocating; the test fails if they have not all finished within a generous deadline.

use parking_lot::{Condvar, Mutex};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const THREADS: usize = 16;
const ROUNDS: usize = if cfg!(miri) { 10 } else { 3_000 };

#[test]
fn contended_parking_lot_mutexes_never_deadlock_the_tracer() {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let locks: Arc<Vec<Mutex<Vec<String>>>> =
            Arc::new((0..4).map(|_| Mutex::new(Vec::new())).collect());
        let gate = Arc::new((Mutex::new(0usize), Condvar::new()));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let locks = locks.clone();
                let gate = gate.clone();
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        let mut guard = locks[(t + i) % locks.len()].lock();
                        guard.push(format!("{t}-{i}"));
                        if guard.len() > 64 {
                            guard.clear();
                        }
                        drop(guard);
                        if i % 100 == 0 {
                            let (count, cv) = &*gate;
                            *count.lock() += 1;
                            cv.notify_all();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let _ = done_tx.send(tracealloc::take_snapshot().map(|s| s.traces().len()));
    });
    match done_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(snapshot) => assert!(snapshot.unwrap() > 0),
        Err(_) => panic!("threads using parking_lot did not finish in 120 s: deadlock"),
    }
}
