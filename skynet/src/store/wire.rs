//! The store service's messages: requests that only the leader serves, their replies, the
//! refusals, and the watch polls any member answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skynet_raft::RaftNodeError;
use skynet_raft::state::Command;

use super::{Event, KeyValue, LeaseId, Outcome, Revision, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Request {
    Write(Command),
    Get(String),
    Range(String),
    KeepAlive(LeaseId),
    Join {
        id: u64,
        addr: String,
    },
    /// Whom this member follows; answered by any member, leader or not.
    Leader,
    /// Takes a member out of the cluster (leader only).
    Remove {
        id: u64,
    },
    /// The answering member's own view of the cluster (any member; never forwarded).
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Reply {
    Written(Outcome),
    Value(Option<KeyValue>),
    Range(Vec<KeyValue>, Revision),
    Ttl(Duration),
    Joined,
    Leader(Option<String>),
    Removed,
    Status(StoreStatus),
}

/// Why the member asked could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub(super) enum Refusal {
    /// Not the leader; try `leader_addr` (unknown while an election runs).
    #[error("not the leader (leader at {leader_addr:?})")]
    NotLeader { leader_addr: Option<String> },
    /// The member is starting or cannot reach a quorum; try again shortly.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The member could not be called (never sent by a member; made by the caller).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A final answer.
    #[error(transparent)]
    Failed(StoreError),
}

impl Refusal {
    pub(super) fn from_raft(e: RaftNodeError) -> Self {
        match e {
            RaftNodeError::NotLeader { leader_addr, .. } => Refusal::NotLeader { leader_addr },
            RaftNodeError::NoQuorum { reason } => Refusal::NotReady(reason),
            // A membership change in progress is finished by the leader shortly.
            RaftNodeError::Membership { reason } => Refusal::NotReady(reason),
            e => Refusal::Failed(StoreError::from_raft(e)),
        }
    }
}

/// A long poll for changes under a prefix after a revision, served by any member from its own
/// applied history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WatchPoll {
    pub(super) prefix: String,
    pub(super) after: Revision,
    pub(super) wait_ms: u64,
}

/// The answer to a [`WatchPoll`]: the changes found (oldest first, possibly none when the wait
/// ran out) and the revision up to which the member looked, where the next poll may start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WatchBatch {
    pub(super) events: Vec<Event>,
    pub(super) scanned: Revision,
}

/// A member's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreStatus {
    /// This member's id.
    pub id: u64,
    /// The leader it follows (or is), if any.
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The voting members.
    pub voters: BTreeSet<u64>,
    /// The non-voting members (learners): joined beyond the voter count, or demoted.
    pub learners: BTreeSet<u64>,
    /// Index of the last log entry this member has applied: how far it has caught up.
    pub last_applied: Option<u64>,
    /// Where every member (voter or learner) is reached, as this member knows it.
    pub addrs: BTreeMap<u64, String>,
}

impl StoreStatus {
    pub(super) fn from_metrics(m: &skynet_raft::NodeMetrics) -> Self {
        Self {
            id: m.id,
            leader: m.leader,
            term: m.term,
            voters: m.voters.clone(),
            learners: m.learners.clone(),
            last_applied: m.last_applied,
            addrs: m.addrs.clone(),
        }
    }
}
