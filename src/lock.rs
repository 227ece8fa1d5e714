//! The locks of the hot path: spin briefly, then yield; each knows which thread holds it.
//!
//! Why not `std::sync::Mutex`: its futex unlock is an atomic swap (it must learn whether to wake
//! a waiter), so a lock/unlock pair costs two locked instructions; here unlocking is a plain
//! release store, and an uncontended pair costs one compare-exchange. With 64 shards the lock is
//! almost never contended. Why not `parking_lot`: see `table.rs`. This lock never allocates and
//! never parks: a waiter spins, then calls `sched_yield`.
//!
//! The lock word holds the holder's thread token (the address of a thread-local), so a thread
//! can tell that it holds a lock itself: a signal handler that frees memory while the code it
//! interrupted holds that lock ([`SpinLock::lock_unless_mine`] returns `None` instead of
//! spinning for ever), and the child of `fork`, whose only thread is the one that took every
//! lock before the fork ([`SpinLock::force_unlock`]).

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    // Only its address is used: unique among live threads, nonzero, and computed without a
    // call (const-initialized, no destructor).
    static TOKEN: u8 = const { 0 };
}

/// This thread's token: nonzero, distinct from every other live thread's.
#[inline(always)]
pub(crate) fn token() -> usize {
    TOKEN.with(|t| t as *const u8 as usize)
}

/// A spin-then-yield mutual exclusion lock.
#[derive(Debug)]
pub(crate) struct SpinLock<T> {
    /// 0 when free, else the holder's [`token`].
    holder: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time (see `lock`).
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        SpinLock {
            holder: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, waiting for another holder. On the cold paths only: if this thread
    /// holds it already (a signal handler calling into the tracer's API), it waits for ever.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        let me = token();
        if self
            .holder
            .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended(me, false);
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock, waiting for another holder; `None` when this thread holds it already
    /// (a signal handler interrupted it while it held the lock): waiting would never end.
    #[inline]
    pub(crate) fn lock_unless_mine(&self) -> Option<SpinGuard<'_, T>> {
        let me = token();
        if self
            .holder
            .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
            && !self.lock_contended(me, true)
        {
            return None;
        }
        Some(SpinGuard { lock: self })
    }

    /// Takes the lock if it is free, without waiting.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.holder
            .compare_exchange(0, token(), Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// Whether this thread holds the lock.
    #[inline]
    pub(crate) fn is_mine(&self) -> bool {
        self.holder.load(Ordering::Relaxed) == token()
    }

    /// Takes the lock and keeps it past the guard: for `fork`'s prepare handler, which
    /// releases it in the parent and the child with [`force_unlock`](Self::force_unlock).
    pub(crate) fn lock_and_keep(&self) {
        std::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`lock_and_keep`](Self::lock_and_keep).
    ///
    /// # Safety
    /// The calling thread holds the lock and no guard of it exists.
    pub(crate) unsafe fn force_unlock(&self) {
        self.holder.store(0, Ordering::Release);
    }

    /// Returns false, without the lock, when `give_up_if_mine` and this thread holds it.
    #[cold]
    #[inline(never)]
    fn lock_contended(&self, me: usize, give_up_if_mine: bool) -> bool {
        let mut spins = 0u32;
        loop {
            loop {
                let holder = self.holder.load(Ordering::Relaxed);
                if holder == 0 {
                    break;
                }
                if holder == me && give_up_if_mine {
                    // Only this thread stores its own token, so it cannot change under us
                    // before the interrupted code resumes.
                    return false;
                }
                if spins < 100 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    // The holder may be descheduled; let it run.
                    std::thread::yield_now();
                }
            }
            if self
                .holder
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
    }
}

/// Access to a locked value; unlocks on drop.
#[derive(Debug)]
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the lock, and `&mut self`
        // makes this the only reference derived from it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.holder.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::SpinLock;
    use std::sync::Arc;

    #[test]
    fn excludes_under_contention() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..if cfg!(miri) { 100 } else { 100_000 } {
                        // A non-atomic read-modify-write: lost updates would show.
                        let mut guard = lock.lock();
                        let v = *guard;
                        *guard = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), if cfg!(miri) { 400 } else { 400_000 });
    }

    #[test]
    fn a_thread_knows_the_locks_it_holds() {
        let lock = Arc::new(SpinLock::new(0u32));
        let held = lock.lock();
        assert!(lock.is_mine());
        assert!(
            lock.lock_unless_mine().is_none(),
            "the holder must not wait for itself"
        );
        let other = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                assert!(!lock.is_mine());
                // Waits for the main thread's release instead of giving up.
                *lock
                    .lock_unless_mine()
                    .expect("another thread's lock is waited for") += 1;
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(if cfg!(miri) {
            1
        } else {
            20
        }));
        drop(held);
        other.join().unwrap();
        assert!(!lock.is_mine());
        assert_eq!(*lock.lock_unless_mine().expect("free now"), 1);
        lock.lock_and_keep();
        assert!(lock.is_mine());
        // SAFETY: this thread took it with lock_and_keep; no guard exists.
        unsafe { lock.force_unlock() };
        assert!(lock.lock_unless_mine().is_some());
    }
}
