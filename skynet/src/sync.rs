//! Taking a lock, the one way this crate does it.
//!
//! A lock is poisoned when a thread panics while holding it. Every critical section in this
//! crate leaves its data consistent at each step (none spans an `.await` or a call into user
//! code that could unwind halfway through an update), so the data behind a poisoned lock is as
//! good as any: the guard is taken anyway. Failing instead would turn one panicking service
//! handler into a node that fails every later call.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] that takes the guard of a poisoned lock too (see the module docs).
pub(crate) trait Locked<T: ?Sized> {
    /// The guard.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`] that take the guard of a poisoned lock too.
pub(crate) trait RwLocked<T: ?Sized> {
    /// A shared guard.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// The exclusive guard.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLocked<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_taken() {
        let shared = std::sync::Arc::new(Mutex::new(1));
        let held = shared.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.locked();
            panic!("poisons the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        *shared.locked() += 1;
        assert_eq!(*shared.locked(), 2);
    }
}
