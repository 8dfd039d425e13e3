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
//! Membership (joins, removals, replacing voters that stopped answering) is in [`membership`].
//!
//! openraft types never appear here; the key-value types ([`KeyValue`], [`Event`], [`Txn`], ...)
//! are skynet-raft's plain serde types.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use skynet_raft::state::Command;
use skynet_raft::{RaftConfig, RaftNode, RaftNodeError, RpcKind, Transport, TransportError};

use crate::error::CallError;
use crate::node::{Node, WeakNode};
use crate::service::{Context, ServiceDef, ServiceDefError, ServiceError};

mod membership;
use membership::{Health, Removal, View};

pub use skynet_raft::state::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, LeaseId, Op, OpResponse,
    Outcome, Revision, Txn,
};

/// Name of the internal service carrying Raft traffic.
pub(crate) const RAFT_SERVICE: &str = "skynet.raft";
/// Name of the internal service running leader-only requests.
pub(crate) const STORE_SERVICE: &str = "skynet.store";
const EXECUTE: &str = "execute";
const NODE_ID_FILE: &str = "node-id";
const RAFT_FILE: &str = "raft.redb";

/// Deadline of one Raft message between members (openraft times out appends on its own).
const RAFT_RPC_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of one snapshot transfer.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(60);
/// How long to wait for a leader between attempts of a forwarded request.
const LEADER_POLL: Duration = Duration::from_millis(250);
/// Most redirects followed by one attempt before asking for a leader again.
const MAX_HOPS: usize = 4;

/// How a node takes part in the config store. Validated when the node starts.
///
/// ```
/// let first = skynet::StoreConfig::bootstrap("/var/lib/skynet/a");
/// let seed: std::net::SocketAddr = "10.0.0.1:7000".parse().expect("an address");
/// let other = skynet::StoreConfig::join("/var/lib/skynet/b", vec![seed]).voters(5);
/// assert!(first.validate().is_ok() && other.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    data_dir: PathBuf,
    bootstrap: bool,
    seeds: Vec<SocketAddr>,
    voters: usize,
    timeout: Duration,
    join_timeout: Duration,
}

impl StoreConfig {
    /// The first member of a new cluster: it initializes the cluster with itself as the only
    /// voter. Harmless on restart (an initialized member is left as it is).
    pub fn bootstrap(data_dir: impl Into<PathBuf>) -> Self {
        Self::new(data_dir.into(), true, Vec::new())
    }

    /// A member that joins through any of `seeds` (addresses of existing members).
    pub fn join(data_dir: impl Into<PathBuf>, seeds: Vec<SocketAddr>) -> Self {
        Self::new(data_dir.into(), false, seeds)
    }

    fn new(data_dir: PathBuf, bootstrap: bool, seeds: Vec<SocketAddr>) -> Self {
        Self {
            data_dir,
            bootstrap,
            seeds,
            voters: 3,
            timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
        }
    }

    /// How many voters the cluster grows to as members join: 1, 3 (default) or 5. Read on the
    /// leader when it admits a member.
    pub fn voters(mut self, voters: usize) -> Self {
        self.voters = voters;
        self
    }

    /// How long a store request may take, including finding the leader. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long [`crate::NodeBuilder::start`] keeps trying the seeds. Default 30 s.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// The directory holding this member's id and Raft data.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), StoreError> {
        let fail = |m: &str| Err(StoreError::Config(m.to_owned()));
        if self.data_dir.as_os_str().is_empty() {
            return fail("the data directory is empty");
        }
        if self.bootstrap && !self.seeds.is_empty() {
            return fail("a bootstrapping member takes no seeds");
        }
        if !self.bootstrap && self.seeds.is_empty() {
            return fail("a joining member needs at least one seed");
        }
        if ![1, 3, 5].contains(&self.voters) {
            return fail("voters must be 1, 3 or 5");
        }
        if self.timeout.is_zero() || self.join_timeout.is_zero() {
            return fail("timeouts must be above zero");
        }
        Ok(())
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The configuration is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// No member could be reached (for a join: no seed; often a credential mismatch).
    #[error("store unreachable: {0}")]
    Unreachable(String),
    /// No leader was found, or the request did not finish, within the deadline. A write that
    /// timed out may still be applied later.
    #[error("timed out: {0}")]
    Timeout(String),
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
}

impl StoreError {
    fn from_raft(e: RaftNodeError) -> Self {
        match e {
            RaftNodeError::Rejected(e) => StoreError::Rejected(e.to_string()),
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

// ===== Requests that only the leader serves =====

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Request {
    Write(Command),
    Get(String),
    Range(String),
    KeepAlive(LeaseId),
    Join {
        id: u64,
        addr: String,
    },
    /// Takes a member out of the cluster (leader only).
    Remove {
        id: u64,
    },
    /// The answering member's own view of the cluster (any member; never forwarded).
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Reply {
    Written(Outcome),
    Value(Option<KeyValue>),
    Range(Vec<KeyValue>, Revision),
    Ttl(Duration),
    Joined,
    Removed,
    Status(StoreStatus),
}

/// Why the member asked could not serve a request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
enum Refusal {
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
    fn from_raft(e: RaftNodeError) -> Self {
        match e {
            RaftNodeError::NotLeader { leader_addr, .. } => Refusal::NotLeader { leader_addr },
            RaftNodeError::NoQuorum { reason } => Refusal::NotReady(reason),
            // A membership change in progress is finished by the leader shortly.
            RaftNodeError::Membership { reason } => Refusal::NotReady(reason),
            e => Refusal::Failed(StoreError::from_raft(e)),
        }
    }
}

/// The member's state shared by the [`Store`] handles and the hosted services.
pub(crate) struct StoreShared {
    raft: RaftNode,
    config: StoreConfig,
    /// Joins, removals and voter replacements run one at a time on the leader: membership
    /// changes cannot overlap.
    join_lock: tokio::sync::Mutex<()>,
    /// When each peer last answered this member's Raft messages (from the transport).
    health: Arc<Health>,
    /// Stops the voter-keeping loop at shutdown.
    stopping: tokio_util::sync::CancellationToken,
}

/// Filled right after the node starts; the hosted services refuse requests until then.
pub(crate) type StoreCell = Arc<OnceLock<Arc<StoreShared>>>;

impl StoreShared {
    /// Serves a request on this member, refusing it if this member is not the leader.
    async fn execute_local(&self, req: Request) -> Result<Reply, Refusal> {
        let raft = &self.raft;
        match req {
            Request::Write(cmd) => raft
                .write(cmd)
                .await
                .map(Reply::Written)
                .map_err(Refusal::from_raft),
            Request::Get(key) => raft
                .linearizable_read(|kv| kv.get(&key).cloned())
                .await
                .map(Reply::Value)
                .map_err(Refusal::from_raft),
            Request::Range(prefix) => raft
                .linearizable_read(|kv| {
                    let page = kv.range(&prefix, usize::MAX);
                    Reply::Range(page.kvs, page.revision)
                })
                .await
                .map_err(Refusal::from_raft),
            Request::KeepAlive(id) => raft
                .keep_alive(id)
                .map(Reply::Ttl)
                .map_err(Refusal::from_raft),
            Request::Join { id, addr } => {
                let _one_at_a_time = self.join_lock.lock().await;
                raft.add_learner(id, addr)
                    .await
                    .map_err(Refusal::from_raft)?;
                let voters = raft.metrics().voters;
                if !voters.contains(&id) && voters.len() < self.config.voters {
                    let mut next = voters;
                    next.insert(id);
                    raft.change_membership(next)
                        .await
                        .map_err(Refusal::from_raft)?;
                }
                Ok(Reply::Joined)
            }
            Request::Remove { id } => {
                let _one_at_a_time = self.join_lock.lock().await;
                // Confirms with a quorum that this member leads (or names the leader).
                raft.linearizable_read(|_| ())
                    .await
                    .map_err(Refusal::from_raft)?;
                let view = View::on_leader(
                    &raft.metrics(),
                    &self.health,
                    self.config.voters,
                    Instant::now(),
                );
                let removal = membership::removal(&view, id)
                    .map_err(|reason| Refusal::Failed(StoreError::Membership(reason)))?;
                tracing::info!(id, ?removal, "removing a member");
                match removal {
                    Removal::Voter(next) => raft.change_membership(next).await,
                    Removal::Learner => raft.remove_learners([id].into()).await,
                }
                .map_err(Refusal::from_raft)?;
                Ok(Reply::Removed)
            }
            Request::Status => Ok(Reply::Status(StoreStatus::from_metrics(&raft.metrics()))),
        }
    }
}

fn not_ready() -> ServiceError {
    ServiceError::new("the config store is not started yet").with_code("store_not_ready")
}

/// The two internal services, answering from `cell` once it is filled.
pub(crate) fn services(cell: &StoreCell) -> Result<Vec<ServiceDef>, ServiceDefError> {
    let mut raft = ServiceDef::builder(RAFT_SERVICE, "0.1.0");
    for method in ["append_entries", "vote", "snapshot"] {
        let cell = cell.clone();
        raft = raft.method(method, move |_: Context, req: Vec<u8>| {
            let shared = cell.get().cloned();
            async move {
                let shared = shared.ok_or_else(not_ready)?;
                shared
                    .raft
                    .rpc_handler()
                    .handle(&req)
                    .await
                    .map_err(|e| ServiceError::new(e.to_string()).with_code("bad_request"))
            }
        });
    }
    let cell = cell.clone();
    let store = ServiceDef::builder(STORE_SERVICE, "0.1.0").method(
        EXECUTE,
        move |_: Context, req: Request| {
            let shared = cell.get().cloned();
            async move {
                let Some(shared) = shared else {
                    return Err(Refusal::NotReady(
                        "the config store is not started yet".into(),
                    ));
                };
                shared.execute_local(req).await
            }
        },
    );
    Ok(vec![raft.build()?, store.build()?])
}

// ===== Transport =====

/// Raft traffic over the node's endpoint: each message is a call to `skynet.raft`.
struct QuicTransport {
    node: WeakNode,
    health: Arc<Health>,
}

impl Transport for QuicTransport {
    async fn call(
        &self,
        target: u64,
        addr: &str,
        kind: RpcKind,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            node: target,
            reason,
        };
        let Some(node) = self.node.upgrade() else {
            return Err(unreachable("this node is shut down".into()));
        };
        let to: SocketAddr = addr
            .parse()
            .map_err(|e| unreachable(format!("bad address {addr:?}: {e}")))?;
        let (method, deadline) = match kind {
            RpcKind::Vote => ("vote", RAFT_RPC_DEADLINE),
            RpcKind::Snapshot => ("snapshot", SNAPSHOT_DEADLINE),
            _ => ("append_entries", RAFT_RPC_DEADLINE),
        };
        let reply = node
            .client(RAFT_SERVICE)
            .at(to)
            .with_deadline(deadline)
            .call::<Vec<u8>, Vec<u8>, ServiceError>(method, request)
            .await;
        if reply.is_ok() {
            self.health.answered(target);
        }
        reply.map_err(|e| match e {
            CallError::Unreachable { reason, .. } => unreachable(reason),
            CallError::Unavailable(reason) => unreachable(reason),
            other => TransportError::Failed {
                node: target,
                reason: other.to_string(),
            },
        })
    }
}

// ===== Starting =====

/// Reads this member's id from the data directory, creating a random one on first start.
fn node_id(dir: &Path) -> Result<u64, StoreError> {
    let storage = |e: std::io::Error| StoreError::Storage(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(storage)?;
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|e| StoreError::Storage(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = random_u64();
            let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
            std::fs::write(&tmp, id.to_string()).map_err(storage)?;
            std::fs::rename(&tmp, &path).map_err(storage)?;
            Ok(id)
        }
        Err(e) => Err(storage(e)),
    }
}

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

/// Starts the Raft member of `node`, fills `cell`, and bootstraps or joins.
pub(crate) async fn start(
    node: &Node,
    config: StoreConfig,
    cell: &StoreCell,
) -> Result<(), StoreError> {
    if node.local_addr().ip().is_unspecified() {
        return Err(StoreError::Config(
            "a store member must bind a specific IP: peers dial the address it binds".into(),
        ));
    }
    let id = node_id(&config.data_dir)?;
    let health = Arc::new(Health::default());
    let transport = QuicTransport {
        node: node.downgrade(),
        health: health.clone(),
    };
    let raft = RaftNode::start(
        id,
        config.data_dir.join(RAFT_FILE),
        &RaftConfig::default(),
        transport,
    )
    .await
    .map_err(StoreError::from_raft)?;
    let shared = Arc::new(StoreShared {
        raft,
        config,
        join_lock: tokio::sync::Mutex::new(()),
        health,
        stopping: tokio_util::sync::CancellationToken::new(),
    });
    if cell.set(shared.clone()).is_err() {
        return Err(StoreError::Config("the store was started twice".into()));
    }
    let store = Store {
        shared: shared.clone(),
        node: node.clone(),
    };
    let addr = node.local_addr().to_string();
    if shared.config.bootstrap {
        shared
            .raft
            .initialize([(id, addr)].into())
            .await
            .map_err(StoreError::from_raft)?;
    } else if shared.raft.metrics().voters.is_empty() {
        store.join(id, addr).await?;
    }
    // A restarted member finds its cluster on its own; wait until it follows a leader either way.
    let timeout = shared.config.join_timeout;
    shared
        .raft
        .wait_for_leader(timeout, |_| true)
        .await
        .map_err(StoreError::from_raft)?;
    tokio::spawn(membership::keep_voters(
        Arc::downgrade(&shared),
        shared.stopping.clone(),
    ));
    tracing::info!(id, addr = %node.local_addr(), "config store member started");
    Ok(())
}

/// Stops the Raft member, if this node has one.
pub(crate) async fn shutdown(cell: &StoreCell) {
    let Some(shared) = cell.get() else {
        return;
    };
    shared.stopping.cancel();
    match tokio::time::timeout(Duration::from_secs(5), shared.raft.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "config store did not shut down cleanly"),
        Err(_) => tracing::warn!("config store did not shut down within 5 s"),
    }
}

// ===== The public handle =====

/// This node's handle on the replicated config store, from [`Node::store`]. Cheap to clone.
///
/// Any member serves every call: writes, linearizable reads and keep-alives are forwarded to
/// the leader; [`Store::get_local`] and [`Store::watch`] read this member's applied state.
#[derive(Clone)]
pub struct Store {
    shared: Arc<StoreShared>,
    node: Node,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("id", &self.shared.raft.id())
            .finish_non_exhaustive()
    }
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
}

impl StoreStatus {
    fn from_metrics(m: &skynet_raft::NodeMetrics) -> Self {
        Self {
            id: m.id,
            leader: m.leader,
            term: m.term,
            voters: m.voters.clone(),
            learners: m.learners.clone(),
        }
    }
}

impl Store {
    pub(crate) fn new(shared: Arc<StoreShared>, node: Node) -> Self {
        Self { shared, node }
    }

    /// Runs `req` on the leader: here if this member leads, otherwise forwarded. Retries while
    /// there is no leader or it is unreachable, until the configured timeout.
    async fn execute(&self, req: Request, timeout: Duration) -> Result<Reply, StoreError> {
        let deadline = Instant::now() + timeout;
        let own = self.node.local_addr();
        let mut last = StoreError::Timeout("no leader".into());
        loop {
            let mut target: Option<SocketAddr> = None;
            for _ in 0..MAX_HOPS {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(last);
                }
                let result = match target {
                    None => tokio::time::timeout(remaining, self.shared.execute_local(req.clone()))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Refusal::Failed(StoreError::Timeout(format!(
                                "no answer within {timeout:?}"
                            ))))
                        }),
                    Some(addr) => self.remote(addr, req.clone(), remaining).await,
                };
                match result {
                    Ok(reply) => return Ok(reply),
                    Err(Refusal::Failed(e)) => return Err(e),
                    Err(Refusal::NotLeader {
                        leader_addr: Some(addr),
                    }) => match addr.parse::<SocketAddr>() {
                        Ok(addr) => target = (addr != own).then_some(addr),
                        Err(e) => return Err(StoreError::Remote(format!("leader address: {e}"))),
                    },
                    Err(Refusal::NotLeader { leader_addr: None }) => {
                        last = StoreError::Timeout("no leader elected".into());
                        break;
                    }
                    Err(Refusal::NotReady(reason)) => {
                        last = StoreError::Timeout(reason);
                        break;
                    }
                    Err(Refusal::Unreachable(reason)) => {
                        last = StoreError::Unreachable(reason);
                        break;
                    }
                }
            }
            // No usable leader right now: wait (bounded) for this member to learn of one.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last);
            }
            let wait = remaining.min(LEADER_POLL);
            if self
                .shared
                .raft
                .wait_for_leader(wait, |_| true)
                .await
                .is_ok()
            {
                // A leader is known but may not have answered yet; do not spin.
                tokio::time::sleep(wait.min(Duration::from_millis(50))).await;
            }
        }
    }

    async fn remote(
        &self,
        addr: SocketAddr,
        req: Request,
        remaining: Duration,
    ) -> Result<Reply, Refusal> {
        // A write that reached a member which then stopped may or may not have been proposed;
        // anything else is safe to send again to the next leader.
        let is_write = matches!(req, Request::Write(_));
        self.node
            .client(STORE_SERVICE)
            .at(addr)
            .with_deadline(remaining)
            .call::<Request, Reply, Refusal>(EXECUTE, req)
            .await
            .map_err(|e| match e {
                CallError::Service(Refusal::Failed(StoreError::Stopped(reason))) => {
                    if is_write {
                        Refusal::Failed(StoreError::Indeterminate(format!(
                            "the leader stopped: {reason}"
                        )))
                    } else {
                        Refusal::NotReady(reason)
                    }
                }
                CallError::Service(refusal) => refusal,
                e @ (CallError::Unreachable { .. } | CallError::Unavailable(_)) => {
                    Refusal::Unreachable(e.to_string())
                }
                CallError::DeadlineExceeded(d) => {
                    Refusal::Failed(StoreError::Timeout(format!("forwarded call took {d:?}")))
                }
                CallError::ConnectionLost { reason, .. } => {
                    Refusal::Failed(StoreError::Indeterminate(reason))
                }
                e => Refusal::Failed(StoreError::Remote(e.to_string())),
            })
    }

    /// Asks each seed in turn to admit this member, until one does or the join timeout passes.
    async fn join(&self, id: u64, addr: String) -> Result<(), StoreError> {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.join_timeout;
        let req = Request::Join { id, addr };
        loop {
            let mut last = StoreError::Unreachable("no seed answered".into());
            for seed in &config.seeds {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match self.join_via(*seed, req.clone(), remaining).await {
                    Ok(()) => return Ok(()),
                    Err(Refusal::Failed(e)) => return Err(e),
                    Err(Refusal::Unreachable(reason)) => last = StoreError::Unreachable(reason),
                    Err(Refusal::NotReady(reason)) => last = StoreError::Timeout(reason),
                    Err(Refusal::NotLeader { .. }) => {
                        last = StoreError::Timeout("no leader elected".into());
                    }
                }
            }
            if Instant::now() + LEADER_POLL >= deadline {
                return Err(last);
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    }

    /// One join attempt through `seed`, following its redirects to the leader.
    async fn join_via(
        &self,
        seed: SocketAddr,
        req: Request,
        remaining: Duration,
    ) -> Result<(), Refusal> {
        let mut target = seed;
        for _ in 0..MAX_HOPS {
            match self.remote(target, req.clone(), remaining).await {
                Ok(_) => return Ok(()),
                Err(Refusal::NotLeader {
                    leader_addr: Some(addr),
                }) => {
                    target = addr
                        .parse()
                        .map_err(|e| Refusal::NotReady(format!("leader address: {e}")))?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Refusal::NotReady("too many redirects".into()))
    }

    async fn write(&self, cmd: Command) -> Result<Outcome, StoreError> {
        match self
            .execute(Request::Write(cmd), self.shared.config.timeout)
            .await?
        {
            Reply::Written(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// This member's id (stable across restarts: kept in the data directory).
    pub fn id(&self) -> u64 {
        self.shared.raft.id()
    }

    /// This member's current view of the cluster.
    pub fn status(&self) -> StoreStatus {
        StoreStatus::from_metrics(&self.shared.raft.metrics())
    }

    /// Asks the member at `member` for its own view of the cluster: its id, the leader it
    /// follows, the voters and learners. Any node with the cluster credentials may ask.
    pub async fn member_status(&self, member: SocketAddr) -> Result<StoreStatus, StoreError> {
        match self
            .remote(member, Request::Status, self.shared.config.timeout)
            .await
        {
            Ok(Reply::Status(status)) => Ok(status),
            Ok(other) => Err(unexpected(&other)),
            Err(Refusal::Failed(e)) => Err(e),
            Err(Refusal::Unreachable(reason)) => Err(StoreError::Unreachable(reason)),
            Err(e @ (Refusal::NotReady(_) | Refusal::NotLeader { .. })) => {
                Err(StoreError::Remote(e.to_string()))
            }
        }
    }

    /// Takes member `id` (a voter or a learner) out of the cluster, through the leader. Refused
    /// if it is not a member, or if the voters left would not have an answering majority. The
    /// leader then fills the seat from a caught-up learner, if there is one.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        match self
            .execute(Request::Remove { id }, self.shared.config.timeout)
            .await?
        {
            Reply::Removed => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits until this member's view of the cluster satisfies `accept`, and returns it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        accept: impl Fn(&StoreStatus) -> bool + Send + Sync,
    ) -> Result<StoreStatus, StoreError> {
        self.shared
            .raft
            .wait_for(timeout, "an awaited store status", |m| {
                accept(&StoreStatus::from_metrics(m))
            })
            .await
            .map(|m| StoreStatus::from_metrics(&m))
            .map_err(StoreError::from_raft)
    }

    /// Sets `key` to `value` and returns the new revision.
    pub async fn put(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Revision, StoreError> {
        self.put_op(key.into(), value.into(), None).await
    }

    /// Sets `key` to `value`, bound to `lease`: the key is deleted when the lease ends.
    pub async fn put_with_lease(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        self.put_op(key.into(), value.into(), Some(lease)).await
    }

    async fn put_op(
        &self,
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let cmd = Command::Op(Op::Put {
            key,
            value,
            lease,
            prev_kv: false,
        });
        Ok(self.write(cmd).await?.revision)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: impl Into<String>) -> Result<u64, StoreError> {
        let outcome = self
            .write(Command::Op(Op::Delete {
                key: key.into(),
                prefix: false,
                prev_kv: false,
            }))
            .await?;
        Ok(outcome
            .responses
            .iter()
            .map(|r| match r {
                OpResponse::Delete { deleted, .. } => *deleted,
                _ => 0,
            })
            .sum())
    }

    /// Runs a transaction atomically: `success` if every compare holds, else `failure`.
    pub async fn txn(&self, txn: Txn) -> Result<Outcome, StoreError> {
        self.write(Command::Txn(txn)).await
    }

    /// Sets `key` to `value` only if its `mod_revision` is still `expected` (0: the key must not
    /// exist). Returns whether it was set.
    pub async fn compare_and_set(
        &self,
        key: impl Into<String>,
        expected: Revision,
        value: impl Into<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let key = key.into();
        let outcome = self
            .txn(Txn {
                compares: vec![Compare {
                    key: key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(expected),
                }],
                success: vec![Op::Put {
                    key,
                    value: value.into(),
                    lease: None,
                    prev_kv: false,
                }],
                failure: Vec::new(),
            })
            .await?;
        Ok(outcome.succeeded)
    }

    /// Reads `key`, linearizably: sees every write acknowledged before the call.
    pub async fn get(&self, key: impl Into<String>) -> Result<Option<KeyValue>, StoreError> {
        match self
            .execute(Request::Get(key.into()), self.shared.config.timeout)
            .await?
        {
            Reply::Value(kv) => Ok(kv),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `key` from this member's applied state without asking anyone: fast, possibly stale.
    pub fn get_local(&self, key: &str) -> Option<KeyValue> {
        self.shared.raft.local_read(|kv| kv.get(key).cloned())
    }

    /// Reads every key starting with `prefix`, linearizably, in key order, with the revision the
    /// read saw (watch from it to follow later changes).
    pub async fn range(
        &self,
        prefix: impl Into<String>,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        match self
            .execute(Request::Range(prefix.into()), self.shared.config.timeout)
            .await?
        {
            Reply::Range(kvs, revision) => Ok((kvs, revision)),
            other => Err(unexpected(&other)),
        }
    }

    /// Watches keys starting with `prefix` for changes after `after` (0: from the start of the
    /// kept history). Reads this member's applied history, so it works on any member.
    pub fn watch(&self, prefix: impl Into<String>, after: Revision) -> StoreWatch {
        StoreWatch {
            inner: self.shared.raft.watch(prefix, after),
        }
    }

    /// Grants a new lease with time-to-live `ttl` and returns its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let id = random_u64();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.write(Command::LeaseGrant { id, ttl_ms }).await?;
        Ok(id)
    }

    /// Keeps `lease` alive for another TTL (returned). Never writes to the Raft log.
    pub async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        match self
            .execute(Request::KeepAlive(lease), self.shared.config.timeout)
            .await?
        {
            Reply::Ttl(ttl) => Ok(ttl),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends `lease` now, deleting its keys.
    pub async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(Command::LeaseRevoke { id: lease }).await?;
        Ok(())
    }
}

fn unexpected(reply: &Reply) -> StoreError {
    StoreError::Remote(format!("unexpected reply {reply:?}"))
}

/// A watch on a key prefix from [`Store::watch`]: every later change, in order, with no gap.
pub struct StoreWatch {
    inner: skynet_raft::Watcher,
}

impl std::fmt::Debug for StoreWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWatch")
            .field("revision", &self.inner.revision())
            .finish_non_exhaustive()
    }
}

impl StoreWatch {
    /// The last revision delivered (or started after).
    pub fn revision(&self) -> Revision {
        self.inner.revision()
    }

    /// Waits for the next changes (at least one), oldest first. Fails with
    /// [`StoreError::Compacted`] if the watch fell behind the kept history.
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        self.inner.next().await.map_err(StoreError::from_raft)
    }
}
