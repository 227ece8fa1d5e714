//! A traced allocation inside an `SA_ONSTACK` signal handler, on a sigaltstack of `SIGSTKSZ`
//! bytes (8 KiB: what std maps for each thread's stack-overflow handler, unless the kernel's
//! `AT_MINSIGSTKSZ` asks for more), must fit in what the kernel's signal frame (3.3 KiB with
//! AVX-512 state) leaves of it: also when the unwind-rule cache misses (builds without frame
//! pointers), since a miss reads `.eh_frame` on the spot. In builds with debug assertions
//! (tracealloc unoptimized) the trial's signal stack is 12 KiB, or std's size when larger.
//!
//! The trial runs in a child process (this test binary again, with `TRACEALLOC_SIGALTSTACK_CHILD`
//! set), so a stack overflow on the signal stack is reported as the child's SIGSEGV instead of
//! killing the test harness. Each raise calls through a function the process has never run, so
//! its return address is new to the rule cache; every few raises a shared library is loaded
//! and unloaded, which retires every cached rule. The child also paints the signal stack
//! before each raise and prints how deep the handler wrote (`--nocapture` shows it).
//!
//! ```text
//! RUSTFLAGS="" CARGO_TARGET_DIR=target/nofp cargo test --release --test sigaltstack -- --nocapture
//! ```
#![cfg(target_os = "linux")]

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const CHILD: &str = "TRACEALLOC_SIGALTSTACK_CHILD";
/// Overrides the signal stack's size in the child (to measure with room to spare).
const SIZE: &str = "TRACEALLOC_SIGALTSTACK_SIZE";
const TEST_NAME: &str = "traced_allocations_in_a_handler_on_a_sigaltstack";
const PATTERN: u8 = 0x5A;
/// The signal stack of the trial in builds with debug assertions (tracealloc unoptimized, as
/// in a program's debug build): there a traced allocation needs more stack than SIGSTKSZ
/// leaves after the kernel's signal frame (see the README's limits).
const DEBUG_ALTSTACK: usize = 16 * 1024;
/// Most stack the handler may use below its first frame, traced allocations included.
const BUDGET: usize = if cfg!(debug_assertions) {
    10 * 1024
} else {
    3 * 1024
};

/// What the handler runs: an index into [`FRESH`].
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Whether the handler keeps its `Vec` (in [`KEPT`]) for its traceback to be checked.
static KEEP: AtomicBool = AtomicBool::new(false);
static KEPT: AtomicUsize = AtomicUsize::new(0);
static KEPT_CAPACITY: AtomicUsize = AtomicUsize::new(0);
/// An address in the handler's first frame: the signal frame lies above it.
static ENTRY: AtomicUsize = AtomicUsize::new(0);

/// One of many distinct functions (the constant makes each one's code differ, so none is
/// merged with another): each allocates from a code address the rule cache has not seen.
#[inline(never)]
fn fresh<const N: usize>() {
    let mut v: Vec<u64> = Vec::with_capacity(black_box(N + 3));
    v.push(N as u64);
    let mut s = String::from(black_box("raised"));
    s.push_str(black_box(" on the signal stack"));
    black_box((&v, &s));
    if KEEP.load(SeqCst) {
        let kept = std::mem::ManuallyDrop::new(v);
        KEPT.store(kept.as_ptr() as usize, SeqCst);
        KEPT_CAPACITY.store(kept.capacity(), SeqCst);
    }
}

macro_rules! fresh_functions {
    ($($n:literal)*) => { [$(fresh::<$n> as fn()),*] };
}

static FRESH: [fn(); 64] = fresh_functions!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
    32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63
);

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let here = 0u8;
    ENTRY.store(black_box(&here) as *const u8 as usize, SeqCst);
    FRESH[NEXT.load(SeqCst) % FRESH.len()]();
}

/// Loads and unloads a shared library the process does not use, so that the next miss of the
/// rule cache retires every cached rule. Returns whether a library was unloaded.
fn retire_rule_cache() -> bool {
    for name in [c"libBrokenLocale.so.1", c"libanl.so.1", c"libutil.so.1"] {
        // SAFETY: dlopen and dlclose with NUL-terminated names; the handle is closed at once.
        unsafe {
            if !libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD).is_null() {
                continue; // already loaded: closing it would not unload it
            }
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if !handle.is_null() {
                libc::dlclose(handle);
                return true;
            }
        }
    }
    false
}

struct SignalStack {
    low: usize,
    size: usize,
}

impl SignalStack {
    /// A signal stack of `size` bytes above a guard page, as std maps its own, installed for
    /// this thread.
    fn install(size: usize) -> SignalStack {
        // SAFETY: plain mmap/mprotect/sigaltstack calls on a fresh private mapping.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let map = libc::mmap(
                std::ptr::null_mut(),
                page + size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap");
            assert_eq!(libc::mprotect(map, page, libc::PROT_NONE), 0, "guard page");
            let low = map as usize + page;
            let stack = libc::stack_t {
                ss_sp: low as *mut libc::c_void,
                ss_flags: 0,
                ss_size: size,
            };
            assert_eq!(
                libc::sigaltstack(&stack, std::ptr::null_mut()),
                0,
                "sigaltstack of {size} bytes: {}",
                std::io::Error::last_os_error()
            );
            SignalStack { low, size }
        }
    }

    fn top(&self) -> usize {
        self.low + self.size
    }

    fn paint(&self) {
        for i in 0..self.size {
            // SAFETY: inside our mapping, which nothing runs on between raises.
            unsafe { std::ptr::write_volatile((self.low + i) as *mut u8, PATTERN) };
        }
    }

    /// The lowest address the last handler wrote to.
    fn deepest_write(&self) -> usize {
        (0..self.size)
            // SAFETY: inside our mapping.
            .find(|&i| unsafe { std::ptr::read_volatile((self.low + i) as *const u8) } != PATTERN)
            .map_or(self.top(), |i| self.low + i)
    }
}

/// Raises SIGUSR1 with the handler calling `FRESH[next]`; returns the handler's depth below
/// its first frame and the signal frame's size above it, in bytes.
fn raise(stack: &SignalStack, next: usize) -> (usize, usize) {
    stack.paint();
    NEXT.store(next, SeqCst);
    // SAFETY: raise delivers the signal to this thread before returning.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
    let entry = ENTRY.load(SeqCst);
    assert!(
        (stack.low..stack.top()).contains(&entry),
        "the handler ran on the signal stack"
    );
    (entry - stack.deepest_write(), stack.top() - entry)
}

fn child() {
    // SAFETY: getauxval has no preconditions (0 when the kernel does not give the entry).
    let at_minsigstksz = unsafe { libc::getauxval(51) } as usize; // AT_MINSIGSTKSZ
    let std_size = libc::SIGSTKSZ.max(at_minsigstksz);
    let size = std::env::var(SIZE)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            std_size.max(DEBUG_ALTSTACK)
        } else {
            libc::SIGSTKSZ
        });
    let stack = SignalStack::install(size);
    // SAFETY: a handler that only allocates and frees (the signal is raised synchronously,
    // never in the middle of an allocation), installed for SIGUSR1.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_ONSTACK | libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    // Warm: the first traced allocations of the process already happened (the self-test ran).
    black_box(vec![0u8; 16]);
    let mode = tracealloc::capture_mode();

    // Untraced, for the handler's own use (and glibc's malloc).
    tracealloc::stop();
    let (untraced, frame) = raise(&stack, 0);
    tracealloc::start(tracealloc::DEFAULT_FRAMES).expect("tracing restarts");

    let mut retired = 0;
    let mut deepest_miss = 0;
    let mut deepest_again = 0;
    for i in 1..FRESH.len() {
        if i % 16 == 8 && retire_rule_cache() {
            retired += 1;
        }
        // A new function (its return address misses), then the same one again.
        deepest_miss = deepest_miss.max(raise(&stack, i).0);
        deepest_again = deepest_again.max(raise(&stack, i).0);
    }

    // The handler's allocations are recorded, with the handler's code as their call site.
    KEEP.store(true, SeqCst);
    raise(&stack, 0);
    KEEP.store(false, SeqCst);
    let kept = KEPT.load(SeqCst) as *mut u64;
    let traceback = tracealloc::object_traceback(kept)
        .expect("the Vec allocated in the signal handler is traced");
    let site = traceback.call_site().function.to_string();
    // SAFETY: `kept` is the Vec<u64> the handler left, of length 1 and this capacity.
    drop(unsafe { Vec::from_raw_parts(kept, 1, KEPT_CAPACITY.load(SeqCst)) });
    let deepest = deepest_miss.max(deepest_again);

    println!(
        "mode={mode} altstack={size} std_altstack={std_size} (SIGSTKSZ {}, AT_MINSIGSTKSZ \
         {at_minsigstksz}) signal_frame={frame} untraced={untraced} traced_miss={deepest_miss} \
         traced_again={deepest_again} tracer_extra={} left={} retired={retired} call_site={site}",
        libc::SIGSTKSZ,
        deepest - untraced,
        size - frame - deepest,
    );
    assert!(
        deepest <= BUDGET,
        "the handler used {deepest} bytes of stack, more than the {BUDGET} allowed"
    );
    assert!(
        site.contains("fresh"),
        "the call site of the handler's Vec is the handler's code, not {site:?}"
    );
}

/// Runs the trial in a child process with `TRACEALLOC_CAPTURE` set to `mode` (the self-test
/// when `None`); returns the child's figures line.
fn run_child(mode: Option<&str>) -> String {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("TRACEALLOC_CAPTURE")
        .env_remove(SIZE);
    if let Some(mode) = mode {
        command.env("TRACEALLOC_CAPTURE", mode);
    }
    let out = command.output().expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = mode.unwrap_or("chosen by the self-test");
    if let Some(signal) = out.status.signal() {
        panic!(
            "capture {what}: the child was killed by signal {signal}{} (a traced allocation in \
             the handler overflowed the signal stack?)\nstdout:\n{stdout}\nstderr:\n{stderr}",
            if signal == libc::SIGSEGV {
                " (SIGSEGV)"
            } else {
                ""
            }
        );
    }
    assert!(
        out.status.success(),
        "capture {what}: the child failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("mode=").map(|at| l[at..].to_string()))
        .unwrap_or_else(|| panic!("capture {what}: no figures\nstdout:\n{stdout}"));
    println!("{line}");
    line
}

#[test]
fn traced_allocations_in_a_handler_on_a_sigaltstack() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let chosen = run_child(None);
    // With frame pointers, the rule cache too (its misses are what needs the most stack).
    if cfg!(target_arch = "x86_64") && !chosen.starts_with("mode=unwind-tables ") {
        run_child(Some("unwind-tables"));
    }
    // The DWARF fallback: libgcc's unwinder, in the same handler.
    run_child(Some("backtrace"));
}
