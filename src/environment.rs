//! Environment switches read once, at the first allocation (like `PYTHONTRACEMALLOC`):
//!
//! - `TRACEALLOC_FRAMES=N`: the traceback limit (1..=256).
//! - `TRACEALLOC_REPORT=N`: at exit, print the report (`tracealloc::summary`) to stderr: the
//!   peak and the top N lines live at it, the top N lines by bytes allocated, by allocation
//!   calls and by temporary allocations, what is still live, by crate, allocation sizes, the
//!   process's resident memory.
//! - `TRACEALLOC_DUMP=path`: at exit, write a snapshot to `path` (see `Snapshot::load`).
//! - `TRACEALLOC_PEAK=0` or `1`: keep the per-stack breakdown of the peak or not (overrides
//!   `Tracer::peak_breakdown`). Off by default, on when `TRACEALLOC_REPORT` or
//!   `TRACEALLOC_DUMP` is set.
//! - `TRACEALLOC_LIFETIMES=0` or `1`: measure block lifetimes for DHAT files or not (overrides
//!   `Tracer::block_lifetimes`; on, it turns the peak breakdown on unless `TRACEALLOC_PEAK=0`).
//! - `TRACEALLOC_ATTRIBUTION=innermost`: attribute traces to their innermost frame outside the
//!   allocator and std, dependencies included, instead of the program's own line (`own`, the
//!   default); see `Attribution`.
//!
//! The exit work runs from an `atexit` handler: after `main` returns and on
//! `std::process::exit`, not on `abort`, a fatal signal or `SIGKILL`. Reading happens inside
//! the allocator, so it uses `getenv` and fixed buffers: nothing here allocates. A bad value
//! costs one warning line on stderr and is otherwise ignored.

use crate::stack::capture::say;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

static REPORT_LINES: AtomicUsize = AtomicUsize::new(0);
static DUMP_PATH: Mutex<([u8; 4096], usize)> = Mutex::new(([0; 4096], 0));
static REGISTERED: AtomicBool = AtomicBool::new(false);
/// `TRACEALLOC_ATTRIBUTION=innermost` was given.
static INNERMOST: AtomicBool = AtomicBool::new(false);

/// The attribution the environment asks for (the default, `OwnCode`, unless
/// `TRACEALLOC_ATTRIBUTION=innermost`).
pub(crate) fn attribution() -> crate::Attribution {
    if INNERMOST.load(Relaxed) {
        crate::Attribution::Innermost
    } else {
        crate::Attribution::OwnCode
    }
}

fn var(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a NUL-terminated string that
    // stays valid as long as the environment is not modified for that name, and we copy what
    // we keep before returning to the program.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        (!value.is_null()).then(|| CStr::from_ptr(value).to_bytes())
    }
}

/// `TRACEALLOC_PEAK`, when set to a value it understands (a bad value: a warning, `None`).
pub(crate) fn peak_switch() -> Option<bool> {
    switch(
        c"TRACEALLOC_PEAK",
        "tracealloc: ignoring TRACEALLOC_PEAK: expected 0 or 1\n",
    )
}

/// `TRACEALLOC_LIFETIMES`, as [`peak_switch`].
pub(crate) fn lifetimes_switch() -> Option<bool> {
    switch(
        c"TRACEALLOC_LIFETIMES",
        "tracealloc: ignoring TRACEALLOC_LIFETIMES: expected 0 or 1\n",
    )
}

fn switch(name: &CStr, warning: &str) -> Option<bool> {
    match var(name)? {
        b"1" | b"on" | b"true" | b"yes" => Some(true),
        b"0" | b"off" | b"false" | b"no" => Some(false),
        _ => {
            say(warning);
            None
        }
    }
}

/// Whether the exit report or dump is asked for (the peak breakdown is then on by default).
pub(crate) fn exit_work_wanted() -> bool {
    [c"TRACEALLOC_REPORT", c"TRACEALLOC_DUMP"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.is_empty()))
}

fn number(bytes: &[u8]) -> Option<usize> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// Reads the switches; returns the traceback limit they ask for, if any.
pub(crate) fn read_at_startup() -> Option<usize> {
    let mut frames = None;
    if let Some(value) = var(c"TRACEALLOC_FRAMES") {
        match number(value) {
            Some(n) if (1..=crate::tracer::MAX_FRAMES).contains(&n) => frames = Some(n),
            _ => say("tracealloc: ignoring TRACEALLOC_FRAMES: expected a number from 1 to 256\n"),
        }
    }
    if let Some(value) = var(c"TRACEALLOC_REPORT") {
        match number(value) {
            Some(n) if n > 0 => REPORT_LINES.store(n, Relaxed),
            _ => say(
                "tracealloc: ignoring TRACEALLOC_REPORT: expected a number of lines (1 or more)\n",
            ),
        }
    }
    if let Some(value) = var(c"TRACEALLOC_ATTRIBUTION") {
        match value {
            b"own" => INNERMOST.store(false, Relaxed),
            b"innermost" => INNERMOST.store(true, Relaxed),
            _ => say("tracealloc: ignoring TRACEALLOC_ATTRIBUTION: expected own or innermost\n"),
        }
    }
    if let Some(value) = var(c"TRACEALLOC_DUMP") {
        let mut path = DUMP_PATH.lock().unwrap_or_else(|p| p.into_inner());
        if value.is_empty() || value.len() > path.0.len() {
            say(
                "tracealloc: ignoring TRACEALLOC_DUMP: expected a file path (at most 4096 bytes)\n",
            );
        } else {
            path.0[..value.len()].copy_from_slice(value);
            path.1 = value.len();
        }
    }
    let wanted =
        REPORT_LINES.load(Relaxed) > 0 || DUMP_PATH.lock().map(|p| p.1 > 0).unwrap_or(false);
    if wanted && !REGISTERED.swap(true, Relaxed) {
        // SAFETY: registers a function with the C signature atexit expects; it never unwinds
        // (see `at_exit`).
        if unsafe { libc::atexit(at_exit) } != 0 {
            say("tracealloc: could not register the exit report\n");
        }
    }
    frames
}

extern "C" fn at_exit() {
    // Never unwind into C.
    let _ = std::panic::catch_unwind(exit_work);
}

fn exit_work() {
    use std::io::Write;
    // Nothing the exit work allocates is the program's.
    let _quiet = crate::guard::Guard::enter();
    let lines = REPORT_LINES.load(Relaxed);
    let path = {
        let path = DUMP_PATH.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&path.0[..path.1]).into_owned()
    };
    let snapshot = match crate::take_snapshot() {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "tracealloc: no exit report: {e}");
            return;
        }
    };
    if !path.is_empty() {
        if let Err(e) = snapshot.dump(&path) {
            let _ = writeln!(std::io::stderr(), "tracealloc: TRACEALLOC_DUMP: {e}");
        }
    }
    if lines > 0 {
        let text = snapshot
            .summary_with(lines, "at exit", crate::control::process_figures())
            .to_string();
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

/// The process's resident memory, as the operating system counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessMemory {
    /// Bytes resident now (`VmRSS`).
    pub resident: usize,
    /// Most bytes ever resident (`VmHWM`).
    pub peak_resident: usize,
}

/// Resident and peak resident bytes of this process, from `/proc/self/status` on Linux;
/// `None` elsewhere or when it cannot be read (never a made-up value).
pub fn process_memory() -> Option<ProcessMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<usize> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: usize = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    Some(ProcessMemory {
        resident: field("VmRSS:")?,
        peak_resident: field("VmHWM:")?,
    })
}

/// For the switches that start a thread (`TRACEALLOC_HTTP`, `TRACEALLOC_TIMELINE`): from an ELF
/// constructor, when `name` is set and not empty, runs `run` on a detached thread of its own,
/// so nothing runs before `main` on the main thread but this check. `failure` is said when the
/// thread cannot start; a panic in `run` is caught.
#[cfg(target_os = "linux")]
pub(crate) fn start_thread_if_set(name: &str, run: fn(), failure: &str) {
    extern "C" fn launch(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the `fn()` that `start_thread_if_set` passed, cast to a pointer.
        let run = unsafe { std::mem::transmute::<*mut libc::c_void, fn()>(arg) };
        let _ = std::panic::catch_unwind(run);
        std::ptr::null_mut()
    }
    if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
        return;
    }
    // SAFETY: a plain detached thread; `launch` never unwinds (it catches panics).
    unsafe {
        let mut thread: libc::pthread_t = std::mem::zeroed();
        if libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            launch,
            run as *mut libc::c_void,
        ) == 0
        {
            libc::pthread_detach(thread);
        } else {
            say(failure);
        }
    }
}
