//! The embedded config store: a [`skynet_raft`] member riding the node's QUIC endpoint.
//!
//! A node started with [`crate::NodeBuilder::store`] hosts two internal services next to the
//! application's:
//!
//! - `skynet.raft` carries Raft traffic between members: methods `append_entries`, `vote` and
//!   `snapshot`, each taking and returning the opaque bytes of [`skynet_raft::Transport`]. The
//!   receiving side hands them to [`skynet_raft::RpcHandler::handle`]. Because these are ordinary
//!   calls on the node's endpoint, only holders of the cluster credentials (mutual TLS against
//!   the cluster CA) can talk Raft.
//! - `skynet.store` runs requests that only the leader can serve (`execute`: writes, linearizable
//!   reads, lease keep-alives, joins). Any member accepts them through [`Store`] and forwards them
//!   to the leader it knows of.
//!
//! Membership (joins, removals, replacing voters that stopped answering) is in `store/membership.rs`.
//!
//! openraft types never appear here; the key-value types ([`KeyValue`], [`Event`], [`Txn`], ...)
//! are skynet-raft's plain serde types.

mod client;
pub(crate) mod config;
mod error;
pub(crate) mod handle;
mod member;
mod membership;
pub(crate) mod mirror;
mod seek;
mod watch;
mod wire;

use std::hash::{BuildHasher, Hasher};

// `Store`, `StoreConfig` and `StoreError` are reached at the crate root only (one path per
// public type); the crate uses them from here.
pub(crate) use crate::error::StoreError;
pub(crate) use client::ClientShared;
pub(crate) use config::StoreConfig;
pub(crate) use handle::Store;
pub(crate) use handle::learn_members;
pub(crate) use member::{StoreCell, StoreShared, services, shutdown, start, stop_polls};
pub use watch::StoreWatch;
pub use wire::StoreStatus;

pub use skynet_raft::state::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, LeaseId, Op, OpResponse,
    Outcome, Revision, Txn,
};

/// `tracing` filter directives for applications that host a store member: openraft logs every
/// Raft request a member leaves unanswered (several lines each, many a second while a member is
/// down), and these turn that off; the store reports such a member itself, once when it stops
/// answering, at most every 30 s while it stays down, and once when it answers again. Add them
/// to the application's filter, e.g.
/// `EnvFilter::new(format!("info,{}", skynet::store::RECOMMENDED_LOG_FILTER))`. The `skynet`
/// binary applies them next to its `--log-level`. See [`skynet_raft::RECOMMENDED_LOG_DIRECTIVES`].
pub const RECOMMENDED_LOG_FILTER: &str = skynet_raft::RECOMMENDED_LOG_DIRECTIVES;

/// Whether `service` is one of the store's own services, which are not registered: every
/// member hosts them and they are reached by address.
pub(crate) fn is_internal(service: &str) -> bool {
    service == RAFT_SERVICE || service == STORE_SERVICE
}

/// Name of the internal service carrying Raft traffic.
pub(crate) const RAFT_SERVICE: &str = "skynet.raft";
/// Name of the internal service running leader-only requests.
pub(crate) const STORE_SERVICE: &str = "skynet.store";

const EXECUTE: &str = "execute";
const WATCH: &str = "watch";

/// A random u64 from the standard library's randomly keyed hasher, the clock and the process id.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
