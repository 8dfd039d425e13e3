//! Keeping the voter count: which members answer the leader, the pure decision of the next voter
//! set, and the leader-side loop that applies it.
//!
//! openraft 0.9's metrics show how far each member's log is replicated, but not when a member
//! last answered; [`Health`] fills that gap from the transport, which sees every reply.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use skynet_raft::NodeMetrics;
use tokio_util::sync::CancellationToken;

use super::StoreShared;
use crate::sync::Locked as _;

/// A member that has not answered the leader for this long counts as dead. The leader sends each
/// member a heartbeat every 30 ms and elections time out after 100–200 ms, so this is many
/// election timeouts: one slow moment does not cost a member its vote.
pub(super) const DEAD_AFTER: Duration = Duration::from_secs(2);
/// How often the leader reconsiders the voter set.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A learner at most this many entries behind the leader's log counts as caught up: promoting
/// one further behind would stall commits until it catches up.
const CAUGHT_UP_LAG: u64 = 64;

/// When each peer last answered a Raft message from this member. Written by the transport.
#[derive(Debug, Default)]
pub(super) struct Health {
    last: Mutex<HashMap<u64, Instant>>,
}

impl Health {
    /// Records an answer from `id`, now.
    pub(super) fn answered(&self, id: u64) {
        self.last.locked().insert(id, Instant::now());
    }

    /// The peers that answered at or after `since`.
    fn answered_since(&self, since: Instant) -> BTreeSet<u64> {
        self.last
            .locked()
            .iter()
            .filter(|(_, at)| **at >= since)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// What the leader knows when it reconsiders the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct View {
    /// The voting members.
    pub(super) voters: BTreeSet<u64>,
    /// The non-voting members.
    pub(super) learners: BTreeSet<u64>,
    /// Members that answered recently; the leader counts itself.
    pub(super) healthy: BTreeSet<u64>,
    /// Learners close enough to the leader's log to vote without stalling commits.
    pub(super) caught_up: BTreeSet<u64>,
    /// How many voters the cluster should have.
    pub(super) wanted: usize,
}

impl View {
    /// The leader's view from its metrics and the transport's record of answers.
    pub(super) fn on_leader(m: &NodeMetrics, health: &Health, wanted: usize, now: Instant) -> Self {
        let mut healthy = health.answered_since(now.checked_sub(DEAD_AFTER).unwrap_or(now));
        healthy.insert(m.id);
        let last = m.last_log_index.unwrap_or(0);
        let caught_up = m
            .replication
            .iter()
            .flatten()
            .filter(|(_, matched)| matched.is_some_and(|i| i.saturating_add(CAUGHT_UP_LAG) >= last))
            .map(|(id, _)| *id)
            .collect();
        Self {
            voters: m.voters.clone(),
            learners: m.learners.clone(),
            healthy,
            caught_up,
            wanted,
        }
    }

    /// Whether the healthy members of `set` are a majority of it.
    fn quorum_in(&self, set: &BTreeSet<u64>) -> bool {
        set.intersection(&self.healthy).count() > set.len() / 2
    }
}

/// The next voter set, if one change brings the cluster closer to `wanted` healthy voters:
/// promote the first healthy, caught-up learner, either to fill a missing seat or in place of a
/// voter that stopped answering (which stays on as a learner). One change at a time; never a
/// change that leaves the old or the new voter set without a healthy majority, since Raft needs
/// both to commit it. `None`: nothing to do, or nothing safe to do.
pub(super) fn next_voters(view: &View) -> Option<BTreeSet<u64>> {
    if !view.quorum_in(&view.voters) {
        return None;
    }
    let candidate = view
        .learners
        .iter()
        .find(|id| view.healthy.contains(id) && view.caught_up.contains(id))?;
    let mut next = view.voters.clone();
    if next.len() < view.wanted {
        next.insert(*candidate);
    } else {
        let dead = view.voters.iter().find(|v| !view.healthy.contains(v))?;
        next.remove(dead);
        next.insert(*candidate);
    }
    view.quorum_in(&next).then_some(next)
}

/// How to take a member out of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Removal {
    /// A voter: these become the voters, and the member leaves.
    Voter(BTreeSet<u64>),
    /// A learner: it leaves; the voters stay.
    Learner,
}

/// How to remove `id`, or why not: it must be a member, and removing a voter must leave a
/// non-empty voter set whose healthy members (like those of the current one) are a majority.
pub(super) fn removal(view: &View, id: u64) -> Result<Removal, String> {
    if view.learners.contains(&id) {
        return Ok(Removal::Learner);
    }
    if !view.voters.contains(&id) {
        return Err(format!("node {id} is not a member"));
    }
    let mut next = view.voters.clone();
    next.remove(&id);
    if next.is_empty() {
        return Err(format!("node {id} is the last voter"));
    }
    if !view.quorum_in(&view.voters) || !view.quorum_in(&next) {
        return Err(format!(
            "removing node {id} would leave too few answering voters to commit"
        ));
    }
    Ok(Removal::Voter(next))
}

/// The leader-side loop: every [`CHECK_EVERY`], while this member leads, applies
/// [`next_voters`]. It judges health only after leading for [`DEAD_AFTER`], since a new leader
/// has not yet heard from everyone. Ends when `stopping` fires or the member is gone.
pub(super) async fn keep_voters(shared: Weak<StoreShared>, stopping: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let m = shared.raft.metrics();
        if m.leader != Some(m.id) {
            leading = None;
            continue;
        }
        let now = Instant::now();
        let since = match leading {
            Some((term, since)) if term == m.term => since,
            _ => leading.insert((m.term, now)).1,
        };
        if now.duration_since(since) < DEAD_AFTER {
            continue;
        }
        // Membership changes cannot overlap; joins and removals take the same lock.
        let _one_at_a_time = shared.join_lock.lock().await;
        let m = shared.raft.metrics();
        let view = View::on_leader(&m, &shared.health, shared.config.voters, Instant::now());
        let Some(next) = next_voters(&view) else {
            continue;
        };
        tracing::info!(voters = ?view.voters, next = ?next, healthy = ?view.healthy, "changing voters");
        if let Err(e) = shared.raft.change_membership_retaining(next).await {
            tracing::warn!(error = %e, "voter change failed; retrying on a later tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn view(voters: &[u64], learners: &[u64], healthy: &[u64], caught_up: &[u64]) -> View {
        View {
            voters: set(voters),
            learners: set(learners),
            healthy: set(healthy),
            caught_up: set(caught_up),
            wanted: 3,
        }
    }

    #[test]
    fn a_full_healthy_cluster_stays_as_it_is() {
        assert_eq!(
            next_voters(&view(&[1, 2, 3], &[4], &[1, 2, 3, 4], &[4])),
            None
        );
        assert_eq!(next_voters(&view(&[1, 2, 3], &[], &[1, 2, 3], &[])), None);
    }

    #[test]
    fn a_dead_voter_is_swapped_for_a_caught_up_learner() {
        let v = view(&[1, 2, 3], &[4, 5], &[1, 2, 4, 5], &[4, 5]);
        assert_eq!(next_voters(&v), Some(set(&[1, 2, 4])));
    }

    #[test]
    fn only_healthy_caught_up_learners_are_promoted() {
        // 4 is dead, 5 lags behind: nobody can take 3's seat.
        assert_eq!(
            next_voters(&view(&[1, 2, 3], &[4, 5], &[1, 2, 5], &[4])),
            None
        );
        assert_eq!(
            next_voters(&view(&[1, 2, 3], &[4, 5], &[1, 2, 5], &[4, 5])),
            Some(set(&[1, 2, 5]))
        );
    }

    #[test]
    fn a_missing_seat_is_filled() {
        let v = view(&[1, 2], &[4], &[1, 2, 4], &[4]);
        assert_eq!(next_voters(&v), Some(set(&[1, 2, 4])));
        let five = View {
            wanted: 5,
            ..view(&[1, 2, 3], &[4, 5], &[1, 2, 3, 4, 5], &[4, 5])
        };
        assert_eq!(next_voters(&five), Some(set(&[1, 2, 3, 4])));
    }

    #[test]
    fn nothing_changes_without_a_quorum() {
        // Two of three voters are dead: no change could commit, so none is proposed.
        assert_eq!(next_voters(&view(&[1, 2, 3], &[4], &[1, 4], &[4])), None);
    }

    #[test]
    fn one_change_at_a_time() {
        // Two dead of five: one is replaced now, the other on a later round.
        let v = View {
            wanted: 5,
            ..view(&[1, 2, 3, 4, 5], &[6, 7], &[1, 2, 3, 6, 7], &[6, 7])
        };
        let next = next_voters(&v).expect("a change");
        assert_eq!(next, set(&[1, 2, 3, 5, 6]));
        let later = View {
            voters: next,
            learners: set(&[4, 7]),
            ..v
        };
        assert_eq!(next_voters(&later), Some(set(&[1, 2, 3, 6, 7])));
    }

    #[test]
    fn removal_keeps_a_quorum() {
        let v = view(&[1, 2, 3], &[4], &[1, 2, 3, 4], &[4]);
        assert_eq!(removal(&v, 4), Ok(Removal::Learner));
        assert_eq!(removal(&v, 3), Ok(Removal::Voter(set(&[1, 2]))));
        assert!(removal(&v, 9).is_err());
        // With 3 dead, removing 2 would leave {1, 3}: one of two answering is no majority.
        let v = view(&[1, 2, 3], &[], &[1, 2], &[]);
        assert!(removal(&v, 2).is_err());
        assert_eq!(removal(&v, 3), Ok(Removal::Voter(set(&[1, 2]))));
        assert!(removal(&view(&[1], &[], &[1], &[]), 1).is_err());
    }

    #[test]
    fn the_leaders_view_marks_laggards_and_silent_members() {
        let health = Health::default();
        health.answered(2);
        health.answered(4);
        let m = NodeMetrics {
            id: 1,
            leader: Some(1),
            term: 3,
            last_log_index: Some(1000),
            last_applied: Some(1000),
            voters: set(&[1, 2, 3]),
            learners: set(&[4, 5]),
            replication: Some([(2, Some(1000)), (3, Some(10)), (4, Some(990)), (5, None)].into()),
            snapshot: None,
            purged: None,
            addrs: std::collections::BTreeMap::new(),
        };
        let v = View::on_leader(&m, &health, 3, Instant::now());
        assert_eq!(v.healthy, set(&[1, 2, 4]));
        assert_eq!(v.caught_up, set(&[2, 4]));
        assert_eq!(next_voters(&v), Some(set(&[1, 2, 4])));
    }
}
