//! [`StoreError`], the store's one error type, and how Raft's errors map onto it.

use serde::{Deserialize, Serialize};
use skynet_raft::RaftNodeError;

use super::Revision;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The configuration is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// No member could be reached (for a join: no seed), or one refused the TLS handshake (a
    /// certificate from another cluster's CA: the text says which, and this fails at once).
    #[error("store unreachable: {0}")]
    Unreachable(String),
    /// No leader was found, or the request did not finish, within the deadline. A write that
    /// timed out may still be applied later.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The write is larger than the store takes (its keys and values over 1 MiB); nothing changed.
    #[error("too large: {size} bytes over the {limit} byte limit")]
    TooLarge {
        /// The write's size (its keys and values).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The command was rejected by the state machine (unknown lease, ...); nothing changed.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A watcher fell behind the kept history; read again and watch from that read's revision.
    #[error("watch history compacted up to revision {0}")]
    Compacted(Revision),
    /// A keep-alive named a lease that is unknown or already expired.
    #[error("lease: {0}")]
    Lease(String),
    /// A membership change was refused.
    #[error("membership: {0}")]
    Membership(String),
    /// The data directory or the on-disk store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The local member has stopped.
    #[error("store stopped: {0}")]
    Stopped(String),
    /// The request may or may not have been applied (the connection broke after sending it).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// Another failure of a call between members.
    #[error("store call failed: {0}")]
    Remote(String),
    /// The operation needs a replica, and this node is a client of the store
    /// ([`StoreConfig::client`](crate::StoreConfig::client)).
    #[error("this node is a store client, not a member: {0}")]
    NotMember(String),
}

impl StoreError {
    pub(super) fn from_raft(e: RaftNodeError) -> Self {
        match e {
            RaftNodeError::Rejected(e) => StoreError::Rejected(e.to_string()),
            RaftNodeError::TooLarge { size, limit } => StoreError::TooLarge { size, limit },
            RaftNodeError::Compacted(c) => StoreError::Compacted(c.compacted_revision),
            RaftNodeError::KeepAlive(e) => StoreError::Lease(e.to_string()),
            RaftNodeError::Membership { reason } => StoreError::Membership(reason),
            RaftNodeError::Config { reason } => StoreError::Config(reason),
            RaftNodeError::Storage { reason } => StoreError::Storage(reason),
            RaftNodeError::Stopped { reason } => StoreError::Stopped(reason),
            RaftNodeError::Timeout { what } => StoreError::Timeout(what),
            other => StoreError::Remote(other.to_string()),
        }
    }
}
