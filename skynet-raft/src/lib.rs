//! skynet-raft: the embedded, replicated, durable config store of skynet.
//!
//! Every skynet process can be a member: there is no coordinator to install. Members replicate a
//! key-value store with revisions, transactions, leases and watch history through Raft (openraft),
//! keep log and state on disk (redb, fsync'd before anything is acknowledged), and talk to each
//! other through a small byte-level [`Transport`] that skynet implements over its
//! mutually-authenticated QUIC endpoint.
//!
//! # Example
//!
//! A one-member cluster over the in-memory transport:
//!
//! ```
//! use std::collections::BTreeMap;
//! use skynet_raft::state::{Command, Op};
//! use skynet_raft::{MemTransport, RaftConfig, RaftNode};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let net = MemTransport::new();
//! let node = RaftNode::start(1, dir.path().join("raft.redb"), &RaftConfig::default(), net.clone())
//!     .await?;
//! net.register(1, node.rpc_handler());
//! node.initialize(BTreeMap::from([(1, "127.0.0.1:7000".to_string())])).await?;
//! node.wait_for_leader(std::time::Duration::from_secs(5), |_| true).await?;
//!
//! let mut watch = node.watch("routes/", 0);
//! node.write(Command::Op(Op::Put {
//!     key: "routes/hello".into(),
//!     value: b"greeter".to_vec(),
//!     lease: None,
//!     prev_kv: false,
//! }))
//! .await?;
//! let value = node
//!     .linearizable_read(|kv| kv.get("routes/hello").map(|e| e.value.clone()))
//!     .await?;
//! assert_eq!(value.as_deref(), Some(&b"greeter"[..]));
//! assert_eq!(watch.next().await?[0].key, "routes/hello");
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! Logic stays apart from I/O:
//!
//! - [`state`]: the key-value state machine (revisions, transactions, leases, watch history). Pure
//!   and deterministic; no openraft types.
//! - [`lease`]: the leader's lease clock. Pure; time comes in as an argument.
//! - `storage` (private): durable openraft log storage and state machine on one redb file.
//! - `network` (items re-exported here): the [`Transport`] trait, the openraft adapter over it, the
//!   receiving [`RpcHandler`], and [`MemTransport`] for tests.
//! - `node` (items re-exported here): [`RaftNode`], the member API: start, initialize, write,
//!   linearizable and local reads, watches, lease keep-alives, membership, compaction, metrics.
//! - `codec` (private): the single place that picks the byte format.
//!
//! openraft types never appear in the public API, so moving to openraft 0.10 stays inside the crate.

mod codec;
pub mod lease;
mod network;
mod node;
pub mod state;
mod storage;

pub use network::{
    BadRequest, MemTransport, NodeId, RECOMMENDED_LOG_DIRECTIVES, RpcHandler, RpcKind, Transport,
    TransportError,
};
pub use node::{NodeMetrics, RaftConfig, RaftNode, RaftNodeError, Watcher};
