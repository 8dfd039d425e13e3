//! How Raft's errors map onto [`StoreError`], the store's one error type (defined with the
//! crate's other error enums in `error.rs`, below every layer that returns it).

use skynet_raft::RaftNodeError;

use super::StoreError;

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
