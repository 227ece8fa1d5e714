//! Capturing return addresses on the hot path.
//!
//! Three ways, chosen once by a self-test on the first traced allocation's stack, with
//! `backtrace::trace` (libgcc's DWARF unwinder) as the reference:
//! 1. a frame-pointer walk (~1 ns a frame), bounds-checked against the current thread's stack
//!    so that code built without frame pointers yields a short stack, never a crash; used when
//!    it matches the reference;
//! 2. otherwise, on x86_64 Linux, the unwind-rule cache (`cfi.rs`, ~5 ns a frame warm), when it
//!    matches the reference frame for frame;
//! 3. otherwise `backtrace::trace_unsynchronized` itself (~100 ns a frame).
//!
//! The choice is reported once on stderr when it is not the frame-pointer walk, and in every
//! snapshot.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// How stacks are captured in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaptureMode {
    /// Not decided yet: nothing has been traced so far.
    Undecided,
    /// Frame-pointer walk: fast and exact (the build has frame pointers).
    FramePointers,
    /// DWARF unwinding through `backtrace::trace_unsynchronized`: exact but ~100× slower per
    /// allocation; chosen when neither faster way matched it.
    Backtrace,
    /// tracealloc's cache of unwind rules read from `.eh_frame` (x86_64 Linux): exact without
    /// frame pointers, ~5 ns a frame once warm; chosen when the frame-pointer walk did not
    /// match the DWARF unwinder and the rule cache did, frame for frame.
    UnwindTables,
}

impl std::fmt::Display for CaptureMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptureMode::Undecided => "undecided",
            CaptureMode::FramePointers => "frame-pointers",
            CaptureMode::Backtrace => "backtrace",
            CaptureMode::UnwindTables => "unwind-tables",
        })
    }
}

const UNDECIDED: u8 = 0;
const CHECKING: u8 = 1;
const FRAME_POINTERS: u8 = 2;
const BACKTRACE: u8 = 3;
const UNWIND_TABLES: u8 = 4;

/// Written after the last frame of a stack that could not be finished (a frame without unwind
/// information): the snapshot marks it truncated. Never a return address (page 0 is unmapped).
pub(crate) const CUT_SHORT: usize = 1;

static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

pub(crate) fn mode() -> CaptureMode {
    match MODE.load(Ordering::Relaxed) {
        FRAME_POINTERS => CaptureMode::FramePointers,
        BACKTRACE => CaptureMode::Backtrace,
        UNWIND_TABLES => CaptureMode::UnwindTables,
        _ => CaptureMode::Undecided,
    }
}

/// Fills `buf` with return addresses, innermost first; returns how many.
///
/// Must be called with the reentrancy guard held (the fallback and the calibration may
/// allocate).
#[inline]
pub(crate) fn capture(buf: &mut [MaybeUninit<usize>]) -> usize {
    match MODE.load(Ordering::Relaxed) {
        FRAME_POINTERS => fp_walk(buf),
        UNWIND_TABLES => tables(buf),
        BACKTRACE => unwind(buf),
        _ => calibrate(buf),
    }
}

/// [`capture`], also returning the stack's [`hash_stack`](super::intern::hash_stack) (computed
/// during the walk in frame-pointer mode).
#[inline]
pub(crate) fn capture_hashed(buf: &mut [MaybeUninit<usize>]) -> (usize, u64) {
    let n = match MODE.load(Ordering::Relaxed) {
        FRAME_POINTERS => return fp_walk_hashed(buf),
        UNWIND_TABLES => tables(buf),
        BACKTRACE => unwind(buf),
        _ => calibrate(buf),
    };
    // SAFETY: the capture initialized the first `n` slots.
    let addresses = unsafe { &*(&buf[..n] as *const [MaybeUninit<usize>] as *const [usize]) };
    (n, super::intern::hash_stack(addresses))
}

/// Captures with the unwind-rule cache; a stack it cannot finish ends with [`CUT_SHORT`].
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
fn tables(buf: &mut [MaybeUninit<usize>]) -> usize {
    thread_local! {
        static CAPTURES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    // Every 1024 captures of a thread, look for unloaded modules (their cached rules retire).
    let due = CAPTURES
        .try_with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n % 1024 == 0
        })
        .unwrap_or(false);
    if due {
        super::cfi::check_unloads();
    }
    let (_, sp) = frame_and_stack_pointer();
    let (n, clean) = super::cfi::unwind(buf, stack_top_for(sp));
    if !clean && n < buf.len() {
        buf[n].write(CUT_SHORT);
        return n + 1;
    }
    n
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[inline(always)]
fn tables(buf: &mut [MaybeUninit<usize>]) -> usize {
    unwind(buf)
}

/// Decides the capture mode on the current stack, then captures.
#[cold]
#[inline(never)]
fn calibrate(buf: &mut [MaybeUninit<usize>]) -> usize {
    if MODE
        .compare_exchange(UNDECIDED, CHECKING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Another thread is deciding (or has decided); the unwinder is always right.
        return match MODE.load(Ordering::Acquire) {
            FRAME_POINTERS => fp_walk(buf),
            UNWIND_TABLES => tables(buf),
            _ => unwind(buf),
        };
    }
    let forced = forced_mode();
    let chosen = if let Some(mode) = forced {
        mode
    } else if frame_pointers_match_unwinder() {
        FRAME_POINTERS
    } else if tables_match_unwinder() {
        UNWIND_TABLES
    } else {
        BACKTRACE
    };
    MODE.store(chosen, Ordering::Release);
    if chosen == BACKTRACE && forced.is_none() {
        say(concat!(
            "tracealloc: frame pointers are missing and the unwind-table cache is not available ",
            "here, so stacks are captured with the much slower DWARF unwinder (backtrace). Build ",
            "with RUSTFLAGS=\"-C force-frame-pointers=yes\" for the fast path.\n"
        ));
    }
    capture(buf)
}

/// Writes a message to stderr without allocating or taking std's stderr lock.
pub(crate) fn say(msg: &str) {
    // SAFETY: writes `msg.len()` initialized bytes from a live &str to fd 2; a failed or short
    // write only loses the message.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

const CHECK_DEPTH: usize = 64;

/// Compares the frame-pointer walk with the DWARF unwinder on the current stack.
///
/// The walk is accepted when it is a contiguous run of the unwinder's frames that reaches the
/// unwinder's last frames (glibc's start-up code has no frame pointers: a few may be missing).
fn frame_pointers_match_unwinder() -> bool {
    matches_unwinder(fp_walk, walk_agrees)
}

/// Compares the unwind-rule cache with the DWARF unwinder on the current stack: every frame
/// must be equal, to the outermost.
fn tables_match_unwinder() -> bool {
    matches_unwinder(tables, tables_agree)
}

/// Captures the current stack with `way` and with the DWARF unwinder, from the same function,
/// and asks `agree` whether they match.
#[inline(never)]
fn matches_unwinder(
    way: fn(&mut [MaybeUninit<usize>]) -> usize,
    agree: fn(&[usize], &[usize]) -> bool,
) -> bool {
    let mut walked = [MaybeUninit::uninit(); CHECK_DEPTH];
    let mut unwound = [MaybeUninit::uninit(); CHECK_DEPTH];
    let n_walked = way(&mut walked);
    let n_unwound = unwind(&mut unwound);
    // SAFETY: both captures initialize the first `n` slots they return.
    let (walked, unwound) = unsafe {
        (
            slice_assume_init(&walked[..n_walked]),
            slice_assume_init(&unwound[..n_unwound]),
        )
    };
    agree(walked, unwound)
}

/// The rule of [`tables_match_unwinder`]: line the two up on the first of the walk's frames
/// (after the first, which is inside the capture) that the reference also has, then every
/// frame equal and both at their end (the reference's trailing null frame aside).
pub(crate) fn tables_agree(walked: &[usize], unwound: &[usize]) -> bool {
    let unwound = match unwound.iter().rposition(|&ip| ip != 0) {
        Some(last) => &unwound[..=last],
        None => return false,
    };
    if walked.contains(&CUT_SHORT) || unwound.len() >= CHECK_DEPTH {
        return false;
    }
    for i in 1..walked.len().min(4) {
        if let Some(start) = unwound.iter().position(|&ip| ip == walked[i]) {
            return walked.len() - i >= 3 && unwound[start..] == walked[i..];
        }
    }
    false
}

/// `TRACEALLOC_CAPTURE=frame-pointers|unwind-tables|backtrace` skips the self-test (for
/// measuring each way on one build, and for programs whose allocations run through C code
/// without frame pointers, where the walk stops early). Read without allocating.
fn forced_mode() -> Option<u8> {
    // SAFETY: getenv with a NUL-terminated name; the result is read before anything else can
    // change the environment in this single decision.
    let value = unsafe { libc::getenv(c"TRACEALLOC_CAPTURE".as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let value = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    match value {
        b"frame-pointers" => Some(FRAME_POINTERS),
        b"unwind-tables" if cfg!(all(target_arch = "x86_64", target_os = "linux")) => {
            Some(UNWIND_TABLES)
        }
        b"backtrace" => Some(BACKTRACE),
        _ => {
            say("tracealloc: TRACEALLOC_CAPTURE must be frame-pointers, unwind-tables or backtrace; ignored\n");
            None
        }
    }
}

/// The rule of [`frame_pointers_match_unwinder`] on two captured stacks.
pub(crate) fn walk_agrees(walked: &[usize], unwound: &[usize]) -> bool {
    // The two captures start in different functions; line them up on the walk's second frame
    // (the first is the return into the function that called the walk, the unwinder's is a
    // different call in that same function).
    if walked.len() < 3 {
        return false;
    }
    let Some(start) = unwound.iter().position(|&ip| ip == walked[1]) else {
        return false;
    };
    let tail = &unwound[start..];
    let compared = &walked[1..];
    if compared.len() > tail.len() || tail[..compared.len()] != *compared {
        return false;
    }
    const MISSING_AT_THE_ROOT: usize = 4;
    tail.len() - compared.len() <= MISSING_AT_THE_ROOT
}

/// # Safety
/// Every element of `s` must be initialized.
unsafe fn slice_assume_init(s: &[MaybeUninit<usize>]) -> &[usize] {
    // SAFETY: MaybeUninit<usize> has usize's layout; the caller guarantees initialization.
    unsafe { &*(s as *const [MaybeUninit<usize>] as *const [usize]) }
}

/// Captures with `backtrace::trace_unsynchronized`.
#[inline(never)]
fn unwind(buf: &mut [MaybeUninit<usize>]) -> usize {
    let mut n = 0;
    // SAFETY: `trace_unsynchronized` is unsafe only because it does not serialize calls into the
    // platform unwinder; on the Unix targets that support it (libgcc/libunwind) the unwinder is
    // thread-safe. The closure neither panics nor allocates.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if let Some(slot) = buf.get_mut(n) {
                slot.write(frame.ip() as usize);
                n += 1;
                n < buf.len()
            } else {
                false
            }
        });
    }
    n
}

thread_local! {
    // Lower and upper end of this thread's stack; (0, 0) = not known yet, (0, usize::MAX) =
    // unknown. Const-initialized, no destructor.
    static STACK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
    // The signal stack this thread last ran a traced allocation on, (0, 0) = none.
    static SIGNAL_STACK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// This thread's stack, `(low, top)`, learnt the first time; `top == usize::MAX` when it is
/// unknown (never walked).
#[inline]
fn thread_bounds() -> (usize, usize) {
    match STACK.try_with(|t| t.get()) {
        Ok((0, 0)) => find_stack(),
        Ok(bounds) => bounds,
        Err(_) => (0, usize::MAX), // thread-locals gone
    }
}

/// The upper end of the stack `sp` is on: this thread's stack, or the signal stack a handler
/// runs on; 0 (walk nothing) when it is neither or unknown.
#[inline]
fn stack_top_for(sp: usize) -> usize {
    let (low, top) = thread_bounds();
    if sp >= low && sp < top && top != usize::MAX {
        return top;
    }
    signal_stack_top(sp)
}

/// The top of this thread's stack (0 when unknown).
#[inline]
fn stack_top() -> usize {
    match thread_bounds() {
        (_, usize::MAX) => 0,
        (_, top) => top,
    }
}

/// `sp` is outside this thread's stack: a signal handler on an alternate stack
/// (`sigaltstack`, asked once per signal stack), or else a stack the program switched to
/// itself, which is walked not at all.
#[cold]
#[inline(never)]
fn signal_stack_top(sp: usize) -> usize {
    let (low, top) = SIGNAL_STACK.try_with(|t| t.get()).unwrap_or((0, 0));
    if sp >= low && sp < top {
        return top;
    }
    match signal_stack() {
        Some((low, top)) if sp >= low && sp < top => {
            let _ = SIGNAL_STACK.try_with(|t| t.set((low, top)));
            top
        }
        _ => 0,
    }
}

#[cold]
#[inline(never)]
fn find_stack() -> (usize, usize) {
    let bounds = thread_stack().unwrap_or((0, usize::MAX));
    let _ = STACK.try_with(|t| t.set(bounds));
    bounds
}

/// The alternate signal stack this thread is running on, if it is (async-signal-safe).
#[cfg(target_os = "linux")]
fn signal_stack() -> Option<(usize, usize)> {
    // SAFETY: asks for the current alternate stack only (no new one), into a valid local.
    unsafe {
        let mut current = std::mem::zeroed::<libc::stack_t>();
        if libc::sigaltstack(std::ptr::null(), &mut current) != 0
            || current.ss_flags & libc::SS_ONSTACK == 0
        {
            return None;
        }
        let low = current.ss_sp as usize;
        Some((low, low.checked_add(current.ss_size)?))
    }
}

#[cfg(not(target_os = "linux"))]
fn signal_stack() -> Option<(usize, usize)> {
    None
}

#[cfg(target_os = "linux")]
fn thread_stack() -> Option<(usize, usize)> {
    // SAFETY: `attr` is initialized by pthread_getattr_np before use and destroyed once; the
    // out-pointers are valid locals. glibc allocates with its own malloc here, never ours.
    unsafe {
        let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if rc != 0 || addr.is_null() {
            return None;
        }
        Some((addr as usize, (addr as usize).checked_add(size)?))
    }
}

#[cfg(not(target_os = "linux"))]
fn thread_stack() -> Option<(usize, usize)> {
    None
}

/// Walks the frame-pointer chain from the caller's frame.
///
/// Every frame record is checked to lie within `[sp, stack top)`, to be aligned and to move
/// towards the stack top; anything else ends the walk. Reading never leaves the current
/// thread's stack.
#[inline(never)]
pub(crate) fn fp_walk(buf: &mut [MaybeUninit<usize>]) -> usize {
    walk(buf).0
}

/// [`fp_walk`], also returning the stack's [`hash_stack`](super::intern::hash_stack), computed
/// during the walk: the multiplications run while the next frame record is being loaded, so
/// the hash costs almost nothing on top of the pointer chase.
#[inline(never)]
pub(crate) fn fp_walk_hashed(buf: &mut [MaybeUninit<usize>]) -> (usize, u64) {
    walk(buf)
}

#[inline(always)]
fn walk(buf: &mut [MaybeUninit<usize>]) -> (usize, u64) {
    let (mut fp, sp) = frame_and_stack_pointer();
    let word = std::mem::size_of::<usize>();
    // A record [fp, fp + 2 words) must end at or below the top of the stack `sp` is on (a
    // signal handler's alternate stack may lie above or below the thread's): fp ≤ last.
    let last = stack_top_for(sp).saturating_sub(2 * word);
    let mut hash = super::intern::HASH_START;
    // Records move strictly towards the top (checked below), so once above `sp` they stay so.
    if fp < sp {
        return (0, super::intern::hash_finish(hash, 0));
    }
    let mut n = 0;
    while n < buf.len() {
        if fp > last || fp % word != 0 {
            break;
        }
        // SAFETY: [fp, fp + 2 words) lies within this thread's live stack (at or above the
        // current stack pointer, checked before the loop and kept by the strict increase of
        // `fp`, and at most the stack's upper end), and is word-aligned.
        let (next, ret) = unsafe {
            let record = fp as *const usize;
            (record.read(), record.add(1).read())
        };
        if ret == 0 {
            break;
        }
        if let Some(slot) = buf.get_mut(n) {
            slot.write(ret);
        }
        hash = super::intern::hash_step(hash, ret);
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    (n, super::intern::hash_finish(hash, n))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn frame_and_stack_pointer() -> (usize, usize) {
    let (fp, sp): (usize, usize);
    // SAFETY: reads two registers; no memory access, no stack use.
    unsafe {
        std::arch::asm!("mov {0}, rbp", "mov {1}, rsp", out(reg) fp, out(reg) sp,
            options(nomem, nostack, preserves_flags));
    }
    (fp, sp)
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn frame_and_stack_pointer() -> (usize, usize) {
    let (fp, sp): (usize, usize);
    // SAFETY: reads two registers; no memory access, no stack use.
    unsafe {
        std::arch::asm!("mov {0}, x29", "mov {1}, sp", out(reg) fp, out(reg) sp,
            options(nomem, nostack, preserves_flags));
    }
    (fp, sp)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn frame_and_stack_pointer() -> (usize, usize) {
    // No walker for this architecture: an empty walk, so calibration picks the unwinder.
    (0, usize::MAX)
}

/// `backtrace::trace_unsynchronized` capture, for benchmarks.
pub(crate) fn unwind_for_benches(buf: &mut [MaybeUninit<usize>]) -> usize {
    unwind(buf)
}

/// Sets the capture mode, skipping the self-test (benchmarks).
pub(crate) fn force(mode: CaptureMode) {
    let value = match mode {
        CaptureMode::FramePointers => FRAME_POINTERS,
        CaptureMode::Backtrace => BACKTRACE,
        CaptureMode::UnwindTables if cfg!(all(target_arch = "x86_64", target_os = "linux")) => {
            UNWIND_TABLES
        }
        _ => return,
    };
    MODE.store(value, Ordering::Release);
}

/// This thread's stack top (0 when unknown).
pub(crate) fn current_stack_top() -> usize {
    stack_top()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_rule() {
        let unwound = [1, 2, 3, 4, 5, 6, 7, 8];
        assert!(walk_agrees(&[99, 3, 4, 5, 6, 7, 8], &unwound));
        assert!(
            walk_agrees(&[99, 3, 4, 5, 6], &unwound),
            "a short root is fine"
        );
        assert!(
            !walk_agrees(&[99, 2, 3], &unwound),
            "too many frames missing"
        );
        assert!(
            !walk_agrees(&[99, 3, 5, 6, 7, 8], &unwound),
            "a skipped frame"
        );
        assert!(!walk_agrees(&[99, 42, 43, 44], &unwound), "garbage");
        assert!(!walk_agrees(&[], &unwound));
    }

    #[test]
    fn tables_rule() {
        let unwound = [1, 2, 3, 4, 5, 6, 0];
        assert!(tables_agree(&[99, 3, 4, 5, 6], &unwound));
        assert!(
            tables_agree(&[98, 99, 3, 4, 5, 6], &unwound),
            "two frames inside"
        );
        assert!(
            !tables_agree(&[99, 3, 4, 5], &unwound),
            "the root is missing"
        );
        assert!(
            !tables_agree(&[99, 3, 4, 5, 6, 7], &unwound),
            "a frame too many"
        );
        assert!(!tables_agree(&[99, 3, 4, CUT_SHORT], &unwound), "cut short");
        assert!(!tables_agree(&[99, 42, 43, 44, 45], &unwound), "garbage");
    }

    #[test]
    fn a_stack_pointer_off_every_known_stack_walks_nothing() {
        let here = 0u8;
        let on_stack = &here as *const u8 as usize;
        let top = stack_top();
        assert!(top > on_stack, "this thread's stack is known on Linux");
        assert_eq!(stack_top_for(on_stack), top);
        // Not this thread's stack, and no signal handler is running: nothing to walk.
        assert_eq!(stack_top_for(4096), 0);
        let heap = Box::new(0u8);
        assert_eq!(stack_top_for(&*heap as *const u8 as usize), 0);
    }

    #[test]
    fn walk_never_leaves_the_stack_and_ends() {
        let mut buf = [MaybeUninit::uninit(); 300];
        let n = fp_walk(&mut buf);
        assert!(n <= 300);
    }
}
