//! Fault trial: a signal handler that allocates and frees while the thread it interrupts does
//! the same. Allocating in a handler is not async-signal-safe, but a profiler must not turn
//! that rare hazard into a certain hang: before the fix the handler's free spun for ever on
//! the shard lock its own interrupted thread held (9 of 20 runs hung).
//!
//! The inner allocator is a lock-free bump allocator, so that whatever happens is the
//! tracer's doing, not the C allocator's (glibc's malloc is not reentrant either).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

struct Bump;

const REGION: usize = 8 << 30;
static BASE: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Bump {
    fn base() -> usize {
        let base = BASE.load(Relaxed);
        if base != 0 {
            return base;
        }
        // SAFETY: an anonymous private mapping, reserved only as pages are touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED);
        match BASE.compare_exchange(0, p as usize, Relaxed, Relaxed) {
            Ok(_) => p as usize,
            Err(other) => {
                // SAFETY: our own mapping, unused.
                unsafe { libc::munmap(p, REGION) };
                other
            }
        }
    }
}

// SAFETY: every block is a distinct, suitably aligned range of one mapping; frees are no-ops.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = Bump::base();
        let mut at = NEXT.load(Relaxed);
        loop {
            let start = (base + at).next_multiple_of(layout.align()) - base;
            let end = start + layout.size();
            if end > REGION {
                return std::ptr::null_mut();
            }
            match NEXT.compare_exchange_weak(at, end, Relaxed, Relaxed) {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => at = now,
            }
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
}

#[global_allocator]
static GLOBAL: tracealloc::Tracer<Bump> = tracealloc::Tracer::with_allocator(Bump);

static HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    // Grows through several reallocations, then frees everything.
    let mut v: Vec<u8> = Vec::with_capacity(8);
    for i in 0..100u8 {
        v.push(i);
    }
    let s = String::from_utf8_lossy(&v).into_owned();
    drop(std::hint::black_box((v, s)));
    HANDLED.fetch_add(1, Relaxed);
}

fn set_timer(micros: libc::suseconds_t) {
    let t = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: micros,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: micros,
        },
    };
    // SAFETY: a valid timer value; the old value is not wanted.
    unsafe { libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut()) };
}

/// One run, in a child process: exit status 0 when it finished with exact books.
fn trial(seed: u64) -> ! {
    // SAFETY: a plain handler for SIGALRM, restarting interrupted calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
    }
    // Often, but not so often that a debug build spends all its time in the handler.
    set_timer(if cfg!(debug_assertions) { 300 } else { 100 });
    let mut x = seed | 1;
    let mut live: Vec<Vec<u64>> = Vec::new();
    let until = Instant::now() + Duration::from_millis(150);
    while Instant::now() < until {
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 4 == 0 {
                // Inside a measurement scope: the handler then also meets the scope registry.
                let (_, m) = tracealloc::measure(|| {
                    std::hint::black_box(vec![x; 1 + (x % 64) as usize]);
                });
                std::hint::black_box(m);
            } else if live.len() < 64 || x % 3 == 0 {
                live.push(vec![x; 1 + (x >> 50) as usize % 32]);
            } else {
                let k = (x >> 8) as usize % live.len();
                live.swap_remove(k);
            }
        }
    }
    set_timer(0);
    // A free that completes any the handler had to leave waiting.
    drop(std::hint::black_box(vec![0u8; 10]));
    let handled = HANDLED.load(Relaxed);
    let snapshot = tracealloc::take_snapshot().expect("tracing");
    let exact = snapshot.total_size() == tracealloc::traced_memory().current;
    let code = if !exact {
        2
    } else if handled == 0 {
        3
    } else {
        0
    };
    // SAFETY: ends the child at once.
    unsafe { libc::_exit(code) }
}

#[test]
fn a_signal_handler_that_allocates_never_hangs_its_thread() {
    if let Ok(seed) = std::env::var("TRACEALLOC_SIGNAL_TRIAL") {
        // One run in this process, to debug it.
        trial(seed.parse().unwrap());
    }
    let runs = 100;
    // Symbolize once here: the children inherit the parsed debug information.
    drop(tracealloc::take_snapshot().expect("tracing"));
    let (mut finished, mut hung, mut inexact, mut other) = (0, 0, 0, 0);
    let mut ran = 0;
    for run in 0..runs {
        if hung >= 5 {
            break;
        }
        ran += 1;
        // SAFETY: the child runs the trial and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            trial(0x9E37_79B9 ^ run);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
                    (true, 0) => finished += 1,
                    (true, 2) => inexact += 1,
                    _ => {
                        other += 1;
                        eprintln!("run {run}: status {status:#x}");
                    }
                }
                break;
            }
            if Instant::now() > deadline {
                hung += 1;
                if std::env::var_os("TRACEALLOC_SIGNAL_DEBUG").is_some() {
                    eprintln!("run {run}: child {pid} hangs");
                    std::thread::sleep(Duration::from_secs(60));
                }
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(
        (finished, hung, inexact, other),
        (runs, 0, 0, 0),
        "of {ran} runs: (finished, hung, books wrong, other failures)"
    );
}
