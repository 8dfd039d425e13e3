//! Pre-vote: a member stands for election only when a majority of the voters hear no leader.
//!
//! openraft 0.9 has no pre-vote (0.10 has). Without it, a voter that does not hear the leader
//! (restarted before the leader's retries reach it, or cut off by a partition) stands for
//! election on its own timer and raises its term each time; once it is heard again, its higher
//! term makes the healthy leader step down, and every write waits for another election. So
//! openraft's elections are switched off (`enable_elect`), and a gate task per member switches
//! them on only while an election could be won without deposing anyone: once the member has
//! heard no leader for its election timeout, it asks the other voters whether they hear one
//! ([`PreVote`]), and opens the gate if a majority, itself included, does not. A member that
//! hears a leader again, or whose next question finds one, closes it.
//!
//! A voter grants a pre-vote when it is not the leader and has heard from none for the leader
//! lease: the same rule by which openraft's voters refuse real votes, so a pre-vote that passes
//! is followed by an election that can pass. Bootstrapping is not gated (openraft's `initialize`
//! elects directly), nor is a cluster of one voter.
//!
//! The decisions ([`step`], [`majority`]) are pure and unit-tested; [`run`] does the I/O. The
//! question and the answering side live with the other requests in [`crate::network`].

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};

use crate::codec;
use crate::network::{
    LeaderContact, NodeId, PreVote, PreVoteReply, RpcKind, Transport, WireRequest,
};
use crate::storage::TypeConfig;

/// The timing the gate and the granting side work with, from the member's Raft config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The gate's period: the heartbeat interval.
    pub(crate) tick: Duration,
    /// openraft's leader lease (its maximum election timeout): a voter that heard a leader this
    /// recently refuses votes, and so pre-votes.
    pub(crate) lease: Duration,
    /// The election timeout's range; the silence a member waits out before it asks is the lease
    /// plus a random point in it, so that members left without a leader do not all ask, and
    /// stand, at once.
    pub(crate) election_min: Duration,
    pub(crate) election_max: Duration,
}

impl Timing {
    /// The silence to wait out before asking, drawn afresh after each time a leader was heard.
    fn patience(&self, seed: u64) -> Duration {
        let spread = self.election_max.saturating_sub(self.election_min);
        let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX).max(1);
        let jitter = RandomState::new().hash_one(seed) % spread_ms;
        self.lease + self.election_min + Duration::from_millis(jitter)
    }
}

/// What one tick of the gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Elections off: a leader is heard (or this member leads, or does not vote).
    Close,
    /// Elections on without asking: the only voter needs nobody's word.
    Open,
    /// Silent long enough: ask the other voters, and open only if a majority grants.
    Ask,
}

/// The gate's decision from what the member knows now.
pub(crate) fn step(
    voters: usize,
    is_voter: bool,
    leads: bool,
    silent: Duration,
    patience: Duration,
) -> Step {
    if !is_voter || leads {
        Step::Close
    } else if voters <= 1 {
        Step::Open
    } else if silent < patience {
        Step::Close
    } else {
        Step::Ask
    }
}

/// Whether `granted` of `voters` (the asking member's own included) is a majority.
pub(crate) fn majority(granted: usize, voters: usize) -> bool {
    granted * 2 > voters
}

/// The gate task: every tick, decides whether openraft may stand this member for election.
pub(crate) async fn run<T: Transport>(
    id: NodeId,
    raft: Raft<TypeConfig>,
    transport: Arc<T>,
    contact: Arc<LeaderContact>,
    timing: Timing,
) {
    let mut interval = tokio::time::interval(timing.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draws = 0u64;
    let mut patience = timing.patience(draws);
    let mut open = None;
    loop {
        interval.tick().await;
        let (voters, leads) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voters: Vec<(NodeId, String)> = m
                .membership_config
                .membership()
                .voter_ids()
                .filter_map(|v| {
                    let node = m.membership_config.membership().get_node(&v)?;
                    Some((v, node.addr.clone()))
                })
                .collect();
            (voters, m.state == ServerState::Leader)
        };
        let is_voter = voters.iter().any(|(v, _)| *v == id);
        let silent = contact.silent_for(Instant::now());
        let verdict = match step(voters.len(), is_voter, leads, silent, patience) {
            Step::Close => {
                // The next silence waits a fresh random while.
                draws += 1;
                patience = timing.patience(draws);
                false
            }
            Step::Open => true,
            Step::Ask => {
                let others: Vec<_> = voters.into_iter().filter(|(v, _)| *v != id).collect();
                let granted = 1 + ask(id, &others, &transport, timing.election_min).await;
                majority(granted, others.len() + 1)
            }
        };
        if open != Some(verdict) {
            tracing::debug!(member = id, elections = verdict, "election gate");
            raft.runtime_config().elect(verdict);
            open = Some(verdict);
        }
    }
}

/// Asks `voters` at once whether they would vote; returns how many said yes within `within`.
/// A voter that does not answer (down, cut off, or of a version without pre-vote) says no.
async fn ask<T: Transport>(
    id: NodeId,
    voters: &[(NodeId, String)],
    transport: &Arc<T>,
    within: Duration,
) -> usize {
    let Ok(request) = codec::encode(&WireRequest::PreVote(PreVote { candidate: id })) else {
        return 0;
    };
    let mut asks = tokio::task::JoinSet::new();
    for (voter, addr) in voters {
        let (transport, request, voter, addr) =
            (transport.clone(), request.clone(), *voter, addr.clone());
        asks.spawn(async move {
            let call = transport.call(voter, &addr, RpcKind::Vote, request);
            match tokio::time::timeout(within, call).await {
                Ok(Ok(reply)) => codec::decode::<PreVoteReply>(&reply).unwrap_or(false),
                Ok(Err(e)) => {
                    tracing::debug!(member = id, voter, error = %e, "pre-vote not answered");
                    false
                }
                Err(_) => false,
            }
        });
    }
    let mut granted = 0;
    while let Some(answer) = asks.join_next().await {
        granted += usize::from(answer.unwrap_or(false));
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_millis(300);

    #[test]
    fn a_voter_that_hears_a_leader_keeps_elections_off() {
        let heard = Duration::from_millis(30);
        assert_eq!(step(3, true, false, heard, PATIENCE), Step::Close);
    }

    #[test]
    fn a_silent_voter_asks_before_it_stands() {
        assert_eq!(step(3, true, false, PATIENCE, PATIENCE), Step::Ask);
        assert_eq!(step(5, true, false, PATIENCE * 10, PATIENCE), Step::Ask);
    }

    #[test]
    fn the_only_voter_stands_without_asking_and_a_leader_or_learner_never() {
        assert_eq!(step(1, true, false, Duration::ZERO, PATIENCE), Step::Open);
        assert_eq!(step(3, true, true, PATIENCE * 10, PATIENCE), Step::Close);
        assert_eq!(step(3, false, false, PATIENCE * 10, PATIENCE), Step::Close);
    }

    #[test]
    fn a_majority_counts_the_asking_member() {
        // Three voters: itself and one other; alone it is not enough.
        assert!(majority(2, 3));
        assert!(!majority(1, 3));
        // Four voters (during a change): two of four is not a majority.
        assert!(!majority(2, 4));
        assert!(majority(3, 5));
        assert!(!majority(2, 5));
    }

    #[test]
    fn patience_is_the_lease_plus_a_point_in_the_election_timeout() {
        let timing = Timing {
            tick: Duration::from_millis(30),
            lease: Duration::from_millis(200),
            election_min: Duration::from_millis(100),
            election_max: Duration::from_millis(200),
        };
        for seed in 0..100 {
            let p = timing.patience(seed);
            assert!(
                p >= Duration::from_millis(300) && p < Duration::from_millis(400),
                "{p:?}"
            );
        }
    }

    #[test]
    fn silence_counts_from_start_up_until_a_leader_is_heard() {
        let contact = LeaderContact::new();
        let later = Instant::now() + Duration::from_secs(1);
        assert!(contact.silent_for(later) >= Duration::from_secs(1));
        contact.heard();
        assert!(contact.silent_for(later) < Duration::from_secs(1));
    }
}
