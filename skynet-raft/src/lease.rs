//! The leader's lease clock: deadlines in memory, keep-alives off the log.
//!
//! A lease's *existence* and its keys are replicated state ([`crate::state`]): grants, revokes and
//! expiries go through Raft because they change keys. Its *deadline* is not. A client keeps a lease
//! alive by pinging every few seconds; writing each ping to the log would turn liveness traffic into
//! consensus traffic (one fsync on a majority per ping, for thousands of members), which is exactly
//! what skynet's invariants forbid. So only the leader tracks deadlines, here, in memory:
//!
//! - keep-alives reset a deadline and never touch the log;
//! - the leader polls [`LeaseClock::expired`] and proposes one `LeaseExpire` command for the batch;
//! - a new leader does not know the old leader's deadlines, so it calls [`LeaseClock::reset_all`]
//!   and gives every known lease a fresh full TTL. A lease may therefore live up to one TTL longer
//!   across a leader change, never shorter — the safe direction for an owner that is still alive.
//!
//! Sans-IO: time comes in as an argument, so tests need no sleeping and no paused runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::state::LeaseId;

/// A keep-alive could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeepAliveError {
    /// The clock does not know the lease (never granted, revoked, or already expired and forgotten).
    #[error("lease {id} not found")]
    NotFound {
        /// The lease.
        id: LeaseId,
    },
    /// The deadline already passed; the lease is being expired and cannot be revived.
    #[error("lease {id} expired")]
    Expired {
        /// The lease.
        id: LeaseId,
    },
}

#[derive(Debug, Clone)]
struct Deadline {
    ttl: Duration,
    at: Instant,
}

/// Lease deadlines held by the leader.
#[derive(Debug, Clone, Default)]
pub struct LeaseClock {
    leases: BTreeMap<LeaseId, Deadline>,
    /// Leases already reported by [`LeaseClock::expired`], waiting for their expiry to apply.
    expiring: BTreeSet<LeaseId>,
}

impl LeaseClock {
    /// An empty clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a lease (after its grant applied) with a deadline of `now + ttl`. A lease that
    /// is already tracked keeps its deadline, so replaying grants is harmless.
    pub fn track(&mut self, id: LeaseId, ttl: Duration, now: Instant) {
        self.leases
            .entry(id)
            .or_insert_with(|| Deadline { ttl, at: now + ttl });
    }

    /// Stops tracking a lease (after its revoke or expiry applied).
    pub fn forget(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        self.expiring.remove(&id);
    }

    /// Makes the tracked set equal to `leases` (the state machine's live leases with their TTLs): new
    /// ones start at `now + ttl`, known ones keep their deadline, vanished ones are forgotten.
    pub fn sync(&mut self, leases: impl IntoIterator<Item = (LeaseId, Duration)>, now: Instant) {
        let live: BTreeMap<LeaseId, Duration> = leases.into_iter().collect();
        self.leases.retain(|id, _| live.contains_key(id));
        self.expiring.retain(|id| live.contains_key(id));
        for (id, ttl) in live {
            self.track(id, ttl, now);
        }
    }

    /// Reports `ids` again from the next [`Self::expired`] call; for when proposing their expiry
    /// failed and the leader is still in charge.
    pub fn retry_expiry(&mut self, ids: &[LeaseId]) {
        for id in ids {
            self.expiring.remove(id);
        }
    }

    /// Extends a lease to `now + ttl` and returns the new deadline.
    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Instant, KeepAliveError> {
        let d = self
            .leases
            .get_mut(&id)
            .ok_or(KeepAliveError::NotFound { id })?;
        if self.expiring.contains(&id) || d.at <= now {
            return Err(KeepAliveError::Expired { id });
        }
        d.at = now + d.ttl;
        Ok(d.at)
    }

    /// Leases whose deadline is at or before `now`, each reported once; the leader proposes one
    /// expire command for them. They stay tracked (and refuse keep-alives) until [`Self::forget`].
    pub fn expired(&mut self, now: Instant) -> Vec<LeaseId> {
        let ids: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(id, d)| d.at <= now && !self.expiring.contains(id))
            .map(|(id, _)| *id)
            .collect();
        self.expiring.extend(ids.iter().copied());
        ids
    }

    /// Gives every tracked lease a fresh deadline of `now + ttl`; called by a new leader, which cannot
    /// know the keep-alives its predecessor received. Pending expiries are re-armed too.
    pub fn reset_all(&mut self, now: Instant) {
        self.expiring.clear();
        for d in self.leases.values_mut() {
            d.at = now + d.ttl;
        }
    }

    /// The earliest deadline, so the driver knows when to poll [`Self::expired`] next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases
            .iter()
            .filter(|(id, _)| !self.expiring.contains(id))
            .map(|(_, d)| d.at)
            .min()
    }

    /// Number of tracked leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No tracked leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn lease_expires_after_ttl_without_keep_alive() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, 3 * S, t0);
        assert_eq!(c.expired(t0 + 2 * S), Vec::<LeaseId>::new());
        assert_eq!(c.next_deadline(), Some(t0 + 3 * S));
        assert_eq!(c.expired(t0 + 3 * S), vec![1]);
    }

    #[test]
    fn keep_alive_pushes_the_deadline() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, 3 * S, t0);
        assert_eq!(c.keep_alive(1, t0 + 2 * S), Ok(t0 + 5 * S));
        assert!(c.expired(t0 + 4 * S).is_empty());
        assert_eq!(c.expired(t0 + 5 * S), vec![1]);
    }

    #[test]
    fn expired_reports_each_lease_once_and_refuses_keep_alive() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, S, t0);
        c.track(2, S, t0);
        c.track(3, 10 * S, t0);
        assert_eq!(c.expired(t0 + S), vec![1, 2]);
        assert!(c.expired(t0 + 2 * S).is_empty(), "already reported");
        assert_eq!(
            c.keep_alive(1, t0 + 2 * S),
            Err(KeepAliveError::Expired { id: 1 })
        );
        assert_eq!(c.next_deadline(), Some(t0 + 10 * S));
        c.forget(1);
        c.forget(2);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.keep_alive(1, t0 + 2 * S),
            Err(KeepAliveError::NotFound { id: 1 })
        );
    }

    #[test]
    fn keep_alive_at_the_deadline_is_too_late() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, S, t0);
        assert_eq!(
            c.keep_alive(1, t0 + S),
            Err(KeepAliveError::Expired { id: 1 })
        );
    }

    #[test]
    fn reset_all_gives_every_lease_a_fresh_ttl() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, S, t0);
        c.track(2, 5 * S, t0);
        assert_eq!(c.expired(t0 + 2 * S), vec![1]);
        // A new leader takes over at t0 + 4s.
        c.reset_all(t0 + 4 * S);
        assert!(c.expired(t0 + 4 * S).is_empty());
        assert_eq!(c.keep_alive(1, t0 + 4 * S), Ok(t0 + 5 * S));
        assert_eq!(c.expired(t0 + 5 * S), vec![1]);
        assert_eq!(c.expired(t0 + 9 * S), vec![2]);
    }

    #[test]
    fn sync_tracks_new_keeps_known_and_forgets_gone() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.sync([(1, S), (2, 2 * S)], t0);
        assert_eq!(c.len(), 2);
        // Lease 1 keeps its deadline, 2 is gone, 3 is new.
        c.sync([(1, S), (3, S)], t0 + S / 2);
        assert_eq!(
            c.keep_alive(2, t0 + S / 2),
            Err(KeepAliveError::NotFound { id: 2 })
        );
        assert_eq!(c.expired(t0 + S), vec![1]);
        assert_eq!(c.expired(t0 + S + S / 2), vec![3]);
        c.sync([], t0 + 2 * S);
        assert!(c.is_empty());
        assert!(c.expired(t0 + 10 * S).is_empty());
    }

    #[test]
    fn retry_expiry_reports_again() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, S, t0);
        assert_eq!(c.expired(t0 + S), vec![1]);
        assert!(c.expired(t0 + S).is_empty());
        c.retry_expiry(&[1]);
        assert_eq!(c.expired(t0 + S), vec![1]);
    }

    #[test]
    fn track_is_idempotent() {
        let t0 = Instant::now();
        let mut c = LeaseClock::new();
        c.track(1, S, t0);
        c.track(1, 10 * S, t0 + S / 2);
        assert_eq!(c.expired(t0 + S), vec![1]);
        assert!(!c.is_empty());
    }
}
