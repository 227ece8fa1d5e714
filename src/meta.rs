//! The metadata allocator: where the tracer's own tables live.
//!
//! Tables allocate from `System` directly, never through the global allocator, so growing them
//! cannot re-enter the tracer, and their size is known exactly ([`crate::tracer_memory`]).
//!
//! A signal handler's allocation that interrupted this thread inside `System` on the tracer's
//! behalf (C `malloc` holds its arena lock there and is not reentrant) gets an error instead
//! of a second entry into `malloc`, which would wait for ever on that lock: the tracer then
//! drops the record, as when memory runs out.

use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

static META_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // This thread is inside `System` for the tracer. Const-initialized, no destructor.
    static IN_SYSTEM: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside `System` for the tracer until dropped; `None` when it already
/// is (a signal handler interrupted that call).
struct InSystem;

impl InSystem {
    fn enter() -> Option<InSystem> {
        match IN_SYSTEM.try_with(|flag| flag.replace(true)) {
            Ok(false) => Some(InSystem),
            _ => None,
        }
    }
}

impl Drop for InSystem {
    fn drop(&mut self) {
        let _ = IN_SYSTEM.try_with(|flag| flag.set(false));
    }
}

/// Bytes currently held by the tracer's tables.
pub(crate) fn meta_bytes() -> usize {
    META_BYTES.load(Ordering::Relaxed)
}

/// `System`, with a byte count. Fallible: a failure here makes the tracer drop a record, never
/// the user's allocation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MetaAlloc;

// SAFETY: every block comes from `System` with the layout it is later freed with; `System` is a
// correct allocator, and counting does not change the blocks.
unsafe impl Allocator for MetaAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            // SAFETY: the alignment is a nonzero power of two, so it is a valid dangling pointer.
            let dangling = unsafe { NonNull::new_unchecked(layout.align() as *mut u8) };
            return Ok(NonNull::slice_from_raw_parts(dangling, 0));
        }
        let Some(_inside) = InSystem::enter() else {
            return Err(AllocError);
        };
        // SAFETY: size is nonzero.
        let ptr = unsafe { System.alloc(layout) };
        let ptr = NonNull::new(ptr).ok_or(AllocError)?;
        META_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        META_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // Never interrupted-and-reentered in practice: a handler frees tracer memory only
        // after allocating some, which `InSystem` refuses in the interrupted state.
        let _inside = InSystem::enter();
        // SAFETY: the caller guarantees `ptr` came from `allocate` with this layout, i.e. from
        // `System.alloc(layout)`.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }
}

/// A cache-line padded value (128 bytes: adjacent-line prefetch pairs lines on x86_64), so
/// neighbouring shards never share a line.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Padded<T>(pub(crate) T);
