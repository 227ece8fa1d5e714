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

pub use capture::CaptureMode;
pub(crate) use intern::StackId;

use crate::lock::SpinLock;

/// Held around each of the tracer's `dl_iterate_phdr` calls, and by `fork`'s prepare handler:
/// glibc's `dl_iterate_phdr` holds the loader's write lock, which the child of a `fork` does not
/// reset, so a thread inside it at the fork would leave the child's own next call (the unwind
/// cache's periodic check for unloaded modules, or a snapshot's list of objects) waiting for
/// ever. A leaf lock: nothing else is taken while it is held.
static LOADER: SpinLock<()> = SpinLock::new(());

/// Runs `f` (a `dl_iterate_phdr` call) with [`LOADER`] held; `None`, without running it, when
/// this thread holds it already (a signal handler that interrupted the call).
pub(crate) fn iterating_loaded_objects<R>(f: impl FnOnce() -> R) -> Option<R> {
    let _held = LOADER.lock_unless_mine()?;
    Some(f())
}

/// `fork`'s prepare handler: waits for every `dl_iterate_phdr` call of the tracer to end.
pub(crate) fn lock_loader_for_fork() {
    LOADER.lock_and_keep();
}

/// Releases what [`lock_loader_for_fork`] took, in the parent or the child.
pub(crate) fn unlock_loader_after_fork() {
    // SAFETY: this thread took the lock in `lock_loader_for_fork` and holds no guard of it.
    unsafe { LOADER.force_unlock() };
}
