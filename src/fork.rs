//! `fork`: the child's only thread is the one that called `fork`, so any lock another thread
//! held at that moment would stay held in the child for ever. As glibc does for its own
//! allocator, a `pthread_atfork` prepare handler takes every lock of the hot path (the 64
//! trace-table shards, the 16 interner shards, the scope registry) before the address space
//! is copied, and both processes release them afterwards. No thread is then inside the
//! tracer's tables in the copy; the child also sets `current` to what its table holds, since
//! a thread it does not have may have been between the two halves of a `realloc`.
//!
//! The tracer's own `dl_iterate_phdr` calls are waited for too (`stack::LOADER`): glibc does
//! not reset the loader's write lock in the child, and a child forked while another thread
//! was in one (the unwind cache checks for unloaded modules every 1,024 captures) hung in its
//! own next call (1 child of 200 in a CI run without frame pointers).
//!
//! Not covered: the symbol cache and the `backtrace` crate's lock (snapshot time only): a
//! child forked while another thread was symbolizing may wait for ever in its first snapshot.

use crate::{scope, stack, table};

extern "C" fn prepare() {
    // First: a thread inside the tracer's `dl_iterate_phdr` may need a table lock to finish
    // (see `stack::LOADER`); nothing waits for this one while holding another.
    stack::lock_loader_for_fork();
    stack::intern::lock_for_fork();
    scope::lock_for_fork();
    table::lock_for_fork();
}

extern "C" fn parent() {
    release(false);
}

extern "C" fn child() {
    release(true);
}

fn release(child: bool) {
    table::unlock_after_fork(child);
    scope::unlock_after_fork();
    stack::intern::unlock_after_fork();
    stack::unlock_loader_after_fork();
}

/// Registers the handlers, once per process.
pub(crate) fn register_once() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    // SAFETY: the three handlers are `extern "C" fn()` that only take and release the
    // tracer's own locks; registering cannot fail except for lack of memory, in which case
    // forking is simply not made safe (glibc returns ENOMEM).
    unsafe {
        libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
    }
}
