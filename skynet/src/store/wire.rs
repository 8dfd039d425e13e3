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
///
/// On the wire it is a [`WireRefusal`]: a kind code and fields every version reads, never a
/// serde enum (whose variant index a decoder without that variant refuses). So a [`StoreError`]
/// variant added later reaches a node of an earlier version as a refusal it can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(into = "WireRefusal", from = "WireRefusal")]
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

/// The wire form of a [`Refusal`] (see docs/protocol.md, "The config store's refusals"): what
/// kind of refusal, with its text and the few values some kinds carry. A kind this node does not
/// know decodes to [`StoreError::Remote`] with the text, so an unknown kind is a final answer
/// that says what the other node said, never a reply that fails to decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WireRefusal {
    /// Which refusal: one of the `kind` constants below. Never reused for another meaning.
    kind: u16,
    /// The refusal's text: its message for the kinds that carry one, else its display.
    text: String,
    /// [`kind::NOT_LEADER`]: where the leader is, if known.
    leader_addr: Option<String>,
    /// [`kind::TOO_LARGE`]: the size and the limit; [`kind::COMPACTED`]: the revision.
    values: Vec<u64>,
}

/// The refusal kinds. Codes are never reused; a new kind takes a new code.
mod kind {
    /// [`super::Refusal::NotLeader`].
    pub(super) const NOT_LEADER: u16 = 1;
    /// [`super::Refusal::NotReady`].
    pub(super) const NOT_READY: u16 = 2;
    /// [`super::Refusal::Unreachable`] (made by the caller; encodable all the same).
    pub(super) const UNREACHABLE: u16 = 3;
    // 100 and up: a final answer, `Refusal::Failed`, one code per `StoreError` variant.
    pub(super) const CONFIG: u16 = 100;
    pub(super) const STORE_UNREACHABLE: u16 = 101;
    pub(super) const TIMEOUT: u16 = 102;
    pub(super) const TOO_LARGE: u16 = 103;
    pub(super) const REJECTED: u16 = 104;
    pub(super) const COMPACTED: u16 = 105;
    pub(super) const LEASE: u16 = 106;
    pub(super) const MEMBERSHIP: u16 = 107;
    pub(super) const STORAGE: u16 = 108;
    pub(super) const STOPPED: u16 = 109;
    pub(super) const INDETERMINATE: u16 = 110;
    pub(super) const REMOTE: u16 = 111;
    pub(super) const NOT_MEMBER: u16 = 112;
}

impl WireRefusal {
    fn text(kind: u16, text: String) -> Self {
        Self {
            kind,
            text,
            leader_addr: None,
            values: Vec::new(),
        }
    }
}

impl From<Refusal> for WireRefusal {
    fn from(refusal: Refusal) -> Self {
        let failed = match refusal {
            Refusal::NotLeader { leader_addr } => {
                return Self {
                    leader_addr,
                    ..Self::text(kind::NOT_LEADER, String::new())
                };
            }
            Refusal::NotReady(text) => return Self::text(kind::NOT_READY, text),
            Refusal::Unreachable(text) => return Self::text(kind::UNREACHABLE, text),
            Refusal::Failed(e) => e,
        };
        // Exhaustive on purpose: a new `StoreError` variant needs a code of its own here.
        match failed {
            StoreError::Config(t) => Self::text(kind::CONFIG, t),
            StoreError::Unreachable(t) => Self::text(kind::STORE_UNREACHABLE, t),
            StoreError::Timeout(t) => Self::text(kind::TIMEOUT, t),
            e @ StoreError::TooLarge { size, limit } => Self {
                values: [size, limit]
                    .map(|v| u64::try_from(v).unwrap_or(u64::MAX))
                    .to_vec(),
                ..Self::text(kind::TOO_LARGE, e.to_string())
            },
            StoreError::Rejected(t) => Self::text(kind::REJECTED, t),
            e @ StoreError::Compacted(revision) => Self {
                values: vec![revision],
                ..Self::text(kind::COMPACTED, e.to_string())
            },
            StoreError::Lease(t) => Self::text(kind::LEASE, t),
            StoreError::Membership(t) => Self::text(kind::MEMBERSHIP, t),
            StoreError::Storage(t) => Self::text(kind::STORAGE, t),
            StoreError::Stopped(t) => Self::text(kind::STOPPED, t),
            StoreError::Indeterminate(t) => Self::text(kind::INDETERMINATE, t),
            StoreError::Remote(t) => Self::text(kind::REMOTE, t),
            StoreError::NotMember(t) => Self::text(kind::NOT_MEMBER, t),
        }
    }
}

impl From<WireRefusal> for Refusal {
    fn from(w: WireRefusal) -> Self {
        let size = |i: usize| w.values.get(i).and_then(|v| usize::try_from(*v).ok());
        let failed = match w.kind {
            kind::NOT_LEADER => {
                return Refusal::NotLeader {
                    leader_addr: w.leader_addr,
                };
            }
            kind::NOT_READY => return Refusal::NotReady(w.text),
            kind::UNREACHABLE => return Refusal::Unreachable(w.text),
            kind::CONFIG => StoreError::Config(w.text),
            kind::STORE_UNREACHABLE => StoreError::Unreachable(w.text),
            kind::TIMEOUT => StoreError::Timeout(w.text),
            kind::TOO_LARGE => match (size(0), size(1)) {
                (Some(size), Some(limit)) => StoreError::TooLarge { size, limit },
                _ => StoreError::Remote(w.text),
            },
            kind::REJECTED => StoreError::Rejected(w.text),
            kind::COMPACTED => match w.values.first() {
                Some(revision) => StoreError::Compacted(*revision),
                None => StoreError::Remote(w.text),
            },
            kind::LEASE => StoreError::Lease(w.text),
            kind::MEMBERSHIP => StoreError::Membership(w.text),
            kind::STORAGE => StoreError::Storage(w.text),
            kind::STOPPED => StoreError::Stopped(w.text),
            kind::INDETERMINATE => StoreError::Indeterminate(w.text),
            kind::REMOTE => StoreError::Remote(w.text),
            kind::NOT_MEMBER => StoreError::NotMember(w.text),
            // A kind from a later version: a final answer that keeps what the member said.
            unknown => StoreError::Remote(format!(
                "a member refused with kind {unknown}, unknown to this node: {}",
                w.text
            )),
        };
        Refusal::Failed(failed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, Encoding};

    fn every_refusal() -> Vec<Refusal> {
        let t = || "why".to_owned();
        let mut all = vec![
            Refusal::NotLeader {
                leader_addr: Some("127.0.0.1:7000".into()),
            },
            Refusal::NotLeader { leader_addr: None },
            Refusal::NotReady(t()),
            Refusal::Unreachable(t()),
        ];
        all.extend(
            [
                StoreError::Config(t()),
                StoreError::Unreachable(t()),
                StoreError::Timeout(t()),
                StoreError::TooLarge {
                    size: 2 << 20,
                    limit: 1 << 20,
                },
                StoreError::Rejected(t()),
                StoreError::Compacted(42),
                StoreError::Lease(t()),
                StoreError::Membership(t()),
                StoreError::Storage(t()),
                StoreError::Stopped(t()),
                StoreError::Indeterminate(t()),
                StoreError::Remote(t()),
                StoreError::NotMember(t()),
            ]
            .map(Refusal::Failed),
        );
        all
    }

    #[test]
    fn every_refusal_crosses_the_wire_unchanged_in_both_encodings() {
        for refusal in every_refusal() {
            for encoding in [Encoding::Bincode, Encoding::Json] {
                let bytes = codec::encode(encoding, &refusal).expect("encodes");
                let back: Refusal = codec::decode(encoding, &bytes).expect("decodes");
                assert_eq!(back, refusal, "{encoding:?}");
            }
        }
        // Every kind has a code of its own.
        let mut kinds: Vec<u16> = every_refusal()
            .into_iter()
            .map(|r| WireRefusal::from(r).kind)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), every_refusal().len() - 1);
    }

    #[test]
    fn a_kind_from_a_later_version_decodes_to_a_final_answer_with_its_text() {
        // What a node that knows one more kind of refusal would send.
        let later = WireRefusal {
            kind: 999,
            text: "a refusal this node has never heard of".into(),
            leader_addr: None,
            values: vec![7],
        };
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let bytes = codec::encode(encoding, &later).expect("encodes");
            let refusal: Refusal = codec::decode(encoding, &bytes).expect("decodes");
            let Refusal::Failed(StoreError::Remote(text)) = refusal else {
                panic!("{refusal:?}");
            };
            assert!(text.contains("kind 999"), "{text}");
            assert!(
                text.contains("a refusal this node has never heard of"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_known_kind_without_its_values_keeps_its_text() {
        let bare = WireRefusal {
            kind: kind::TOO_LARGE,
            text: "too large".into(),
            leader_addr: None,
            values: Vec::new(),
        };
        let bytes = codec::encode(Encoding::Bincode, &bare).expect("encodes");
        let refusal: Refusal = codec::decode(Encoding::Bincode, &bytes).expect("decodes");
        assert_eq!(
            refusal,
            Refusal::Failed(StoreError::Remote("too large".into()))
        );
    }
}
