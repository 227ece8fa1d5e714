//! Stacks: capture on the hot path, interning, and symbolization on the cold path.

pub(crate) mod capture;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) mod cfi;
#[cfg(target_os = "linux")]
pub(crate) mod elf;
pub(crate) mod intern;
pub(crate) mod objects;
pub(crate) mod origin;
pub(crate) mod symbolize;
#[cfg(target_os = "linux")]
pub(crate) mod unitwise;

pub use capture::CaptureMode;
pub(crate) use intern::StackId;

use crate::lock::SpinLock;

/// Held around each of the tracer's `dl_iterate_phdr` calls, and by `fork`'s prepare handler:
/// glibc's `dl_iterate_phdr` holds the loader's write lock, which the child of a `fork` does not
/// reset, so a thread inside it at the fork would leave the child's own next call (the unwind
/// cache's periodic check for unloaded modules, or a snapshot's list of objects) waiting for
/// ever.
///
/// The hot path never waits for it ([`try_iterating_loaded_objects`]): another thread may hold
/// it while it waits inside `dl_iterate_phdr` for the loader's lock, which a third thread holds
/// while its own `dl_iterate_phdr` callback allocates, so waiting there deadlocked (a debug
/// test binary without frame pointers, seen in CI). Only threads that cannot be inside a
/// `dl_iterate_phdr` callback wait for it: a snapshot (with the reentrancy guard, its callback's
/// allocations go untraced) and the `fork` handler, which takes it before every other lock.
static LOADER: SpinLock<()> = SpinLock::new(());

/// Runs `f` (a `dl_iterate_phdr` call) with [`LOADER`] held, waiting for it; `None`, without
/// running it, when this thread holds it already (a signal handler that interrupted the call).
/// Cold paths only (see [`LOADER`]).
pub(crate) fn iterating_loaded_objects<R>(f: impl FnOnce() -> R) -> Option<R> {
    let _held = LOADER.lock_unless_mine()?;
    Some(f())
}

/// Runs `f` with [`LOADER`] held if it is free; `None`, without running it, otherwise. For the
/// hot path, which may be inside another `dl_iterate_phdr` callback (an allocation made there).
pub(crate) fn try_iterating_loaded_objects<R>(f: impl FnOnce() -> R) -> Option<R> {
    let _held = LOADER.try_lock()?;
    Some(f())
}

/// `fork`'s prepare handler, before any other lock: waits for every `dl_iterate_phdr` call of
/// the tracer to end.
pub(crate) fn lock_loader_for_fork() {
    LOADER.lock_and_keep();
}

/// Releases what [`lock_loader_for_fork`] took, in the parent or the child.
pub(crate) fn unlock_loader_after_fork() {
    // SAFETY: this thread took the lock in `lock_loader_for_fork` and holds no guard of it.
    unsafe { LOADER.force_unlock() };
}
