//! The reentrancy guard.
//!
//! Everything the tracer does while recording (hashing, locking, the backtrace fallback,
//! symbolization at snapshot time) may allocate. Those allocations re-enter the global
//! allocator; while a thread holds a [`Guard`], they go straight to the inner allocator and are
//! not traced.
//!
//! A signal handler that allocates on this thread sees the flag too: while it is set, the
//! handler's allocations are not recorded, so the per-thread buffers the recording uses (the
//! raw frames in `tracer.rs`, the stack cache in `intern.rs`) have one user at a time. Compiler
//! fences keep the flag's stores on the right side of the guarded work (a handler runs on the
//! same thread, so no hardware fence is needed).

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, Ordering::SeqCst};

thread_local! {
    // Const-initialized and without a destructor: reading it never allocates and never registers
    // a TLS destructor, so it is usable from inside the allocator at any time, thread teardown
    // included.
    static IN_TRACER: Cell<bool> = const { Cell::new(false) };
}

/// Proof that the current thread is inside the tracer; dropping it leaves.
#[derive(Debug)]
pub(crate) struct Guard {
    // Not Send: the flag it restores belongs to this thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Guard {
    /// Enters the tracer, or returns `None` when this thread is already inside it (or its
    /// thread-locals are gone), in which case the caller must not trace.
    #[inline]
    pub(crate) fn enter() -> Option<Guard> {
        IN_TRACER
            .try_with(|flag| {
                if flag.get() {
                    None
                } else {
                    flag.set(true);
                    compiler_fence(SeqCst);
                    Some(Guard {
                        _not_send: std::marker::PhantomData,
                    })
                }
            })
            .ok()
            .flatten()
    }

    /// Whether the current thread is inside the tracer.
    #[cfg(test)]
    pub(crate) fn is_held() -> bool {
        IN_TRACER.try_with(Cell::get).unwrap_or(true)
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        compiler_fence(SeqCst);
        let _ = IN_TRACER.try_with(|flag| flag.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::Guard;

    #[test]
    fn guard_is_exclusive_per_thread_and_restored_on_drop() {
        let outer = Guard::enter().expect("first entry succeeds");
        assert!(Guard::is_held());
        assert!(Guard::enter().is_none(), "reentry must be refused");
        std::thread::spawn(|| assert!(Guard::enter().is_some(), "other threads are independent"))
            .join()
            .unwrap();
        drop(outer);
        assert!(!Guard::is_held());
        assert!(Guard::enter().is_some());
    }
}
