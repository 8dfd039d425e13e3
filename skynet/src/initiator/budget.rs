//! The memory that requests being read and run may hold at once, across every connection and
//! pipelined line of the initiators that share the budget.
//!
//! A request reserves its cost as its bytes arrive and gives it back when its answer has been
//! written; a request that would take the budget over its limit is refused at once (HTTP 503
//! with `Retry-After`, an error line on TCP) instead of growing the process. The cost is
//! counted before the bytes are kept, so the limit holds however slowly or quickly they come.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// How many times a request's bytes are held at once, at most: as received, as the router's
/// request, and in the frame on its way to the router. Initiators never parse a request's
/// input into a tree (it is checked and forwarded as text), so nothing larger is made of it.
pub(crate) const REQUEST_COST: usize = 3;

/// The process-wide budget's limit: 64 MiB.
pub const DEFAULT_LIMIT: usize = 64 << 20;

/// A shared limit on the bytes that requests in flight hold.
///
/// Clones share one count. [`MemoryBudget::default`] is the process-wide budget (64 MiB), which
/// every initiator uses unless it is given another, so that two initiators in one process stay
/// under one limit together.
///
/// ```
/// use skynet::initiator::MemoryBudget;
///
/// let budget = MemoryBudget::new(8 << 20);
/// assert_eq!(budget.limit(), 8 << 20);
/// assert_eq!(budget.in_use(), 0);
/// ```
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, shared by its clones only.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Its limit, in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// The bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// How many reservations were refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// An empty reservation that can grow.
    pub(crate) fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, bytes: usize) -> Result<(), OverBudget> {
        let inner = &*self.inner;
        let taken = inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= inner.limit)
            });
        if taken.is_err() {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(OverBudget { limit: inner.limit });
        }
        Ok(())
    }
}

impl Default for MemoryBudget {
    /// The process-wide budget of [`DEFAULT_LIMIT`] bytes.
    fn default() -> Self {
        static PROCESS: OnceLock<MemoryBudget> = OnceLock::new();
        PROCESS
            .get_or_init(|| MemoryBudget::new(DEFAULT_LIMIT))
            .clone()
    }
}

impl PartialEq for MemoryBudget {
    /// The same budget (clones of one another), not two of the same size.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for MemoryBudget {}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// A request's share of a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: MemoryBudget,
    bytes: usize,
}

impl Reservation {
    /// Reserves the cost of `bytes` more bytes of a request ([`REQUEST_COST`] times them).
    pub(crate) fn grow(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let cost = bytes.saturating_mul(REQUEST_COST);
        self.budget.take(cost)?;
        self.bytes += cost;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .inner
            .used
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Taking more would exceed the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is busy: requests in flight hold its memory budget of {limit} bytes")]
pub(crate) struct OverBudget {
    limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_under_the_limit_and_give_back_on_drop() {
        let budget = MemoryBudget::new(10 * REQUEST_COST);
        let mut a = budget.reservation();
        a.grow(6).expect("fits");
        let mut b = budget.reservation();
        assert!(b.grow(5).is_err(), "6 + 5 > 10");
        assert_eq!(budget.refused(), 1);
        b.grow(4).expect("6 + 4 fits");
        assert_eq!(budget.in_use(), 10 * REQUEST_COST);
        drop(a);
        assert_eq!(budget.in_use(), 4 * REQUEST_COST);
        b.grow(6).expect("fits again");
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn the_default_budget_is_one_per_process() {
        assert_eq!(MemoryBudget::default(), MemoryBudget::default());
        assert_ne!(MemoryBudget::new(1), MemoryBudget::new(1));
        assert_eq!(MemoryBudget::default().limit(), DEFAULT_LIMIT);
    }
}
