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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Whether `service` is one of the config store's own, served by a member until it stops.
pub(crate) fn is_store_service(service: &str) -> bool {
    service == RAFT_SERVICE || service == STORE_SERVICE
}
const EXECUTE: &str = "execute";
const WATCH: &str = "watch";
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
/// Longest a member holds a watch poll open when nothing changes.
const MAX_WATCH_WAIT: Duration = Duration::from_secs(30);
/// How long a client's watch poll waits before asking again (below `MAX_WATCH_WAIT`). It
/// also bounds, with the half-second margin of the poll's deadline, how long a watch sits on a
/// member that died silently, unless the client's other requests notice first. An idle watch
/// costs one small request a second.
const WATCH_WAIT: Duration = Duration::from_secs(1);
/// A watch reply stops adding events past this many bytes (at a revision boundary), far below
/// the frame limit: a watcher that is far behind catches up in several replies.
const MAX_WATCH_BATCH_BYTES: usize = 1 << 20;

/// How a node takes part in the config store. Validated when the node starts.
///
/// A node is either a **member** (it keeps a replica on disk and takes part in Raft, as a voter
/// or a learner) or a **client** (it keeps nothing and reaches the store through the members).
///
/// ```
/// let first = skynet::StoreConfig::bootstrap("/var/lib/skynet/a");
/// let seed: std::net::SocketAddr = "10.0.0.1:7000".parse().expect("an address");
/// let other = skynet::StoreConfig::join("/var/lib/skynet/b", vec![seed]).voters(5);
/// let app = skynet::StoreConfig::client(vec![seed]);
/// assert!(first.validate().is_ok() && other.validate().is_ok() && app.validate().is_ok());
/// assert!(skynet::StoreConfig::client(Vec::new()).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `None` for a client.
    data_dir: Option<PathBuf>,
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
        Self::new(Some(data_dir.into()), true, Vec::new())
    }

    /// A member that joins through any of `seeds` (addresses of existing members).
    pub fn join(data_dir: impl Into<PathBuf>, seeds: Vec<SocketAddr>) -> Self {
        Self::new(Some(data_dir.into()), false, seeds)
    }

    /// A client: the node keeps no replica and sends every request to the members at `seeds`
    /// (and to the leaders they name). Watches long-poll a member. This is how most processes
    /// of a large cluster use the store.
    pub fn client(seeds: Vec<SocketAddr>) -> Self {
        Self::new(None, false, seeds)
    }

    fn new(data_dir: Option<PathBuf>, bootstrap: bool, seeds: Vec<SocketAddr>) -> Self {
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

    /// The directory holding this member's id and Raft data; `None` for a client.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Whether this is a client (no replica) rather than a member.
    pub fn is_client(&self) -> bool {
        self.data_dir.is_none()
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), StoreError> {
        let fail = |m: &str| Err(StoreError::Config(m.to_owned()));
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return fail("the data directory is empty");
        }
        if self.bootstrap && !self.seeds.is_empty() {
            return fail("a bootstrapping member takes no seeds");
        }
        if !self.bootstrap && self.seeds.is_empty() {
            return fail("a joining member or a client needs at least one seed");
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
    /// ([`StoreConfig::client`]).
    #[error("this node is a store client, not a member: {0}")]
    NotMember(String),
}

impl StoreError {
    fn from_raft(e: RaftNodeError) -> Self {
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
enum Reply {
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

/// A long poll for changes under a prefix after a revision, served by any member from its own
/// applied history.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WatchPoll {
    prefix: String,
    after: Revision,
    wait_ms: u64,
}

/// The answer to a [`WatchPoll`]: the changes found (oldest first, possibly none when the wait
/// ran out) and the revision up to which the member looked, where the next poll may start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WatchBatch {
    events: Vec<Event>,
    scanned: Revision,
}

/// Cuts `events` after about [`MAX_WATCH_BATCH_BYTES`], never inside one revision (a poll
/// resumes strictly after the last revision it received).
fn cap_batch(events: &mut Vec<Event>) {
    let mut bytes = 0;
    let mut keep = events.len();
    for (i, e) in events.iter().enumerate() {
        if bytes > MAX_WATCH_BATCH_BYTES && e.revision != events[i - 1].revision {
            keep = i;
            break;
        }
        bytes += e.key.len() + e.value.len() + e.prev.as_ref().map_or(0, |p| p.value.len()) + 64;
    }
    events.truncate(keep);
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
    /// Cancelled when the member stops, so that long polls end at once rather than holding up
    /// the node's drain, and the voter-keeping loop ends.
    stopping: tokio_util::sync::CancellationToken,
}

/// Filled right after the node starts; the hosted services refuse requests until then.
pub(crate) type StoreCell = Arc<OnceLock<Arc<StoreShared>>>;

impl StoreShared {
    /// Answers a watch poll from this member's applied history.
    async fn poll_watch(&self, poll: WatchPoll) -> Result<WatchBatch, Refusal> {
        let wait = Duration::from_millis(poll.wait_ms).min(MAX_WATCH_WAIT);
        let mut watcher = self.raft.watch(poll.prefix, poll.after);
        let next = tokio::select! {
            next = tokio::time::timeout(wait, watcher.next()) => next,
            () = self.stopping.cancelled() => {
                return Err(Refusal::NotReady("the member is stopping".into()));
            }
        };
        match next {
            Ok(Ok(mut events)) => {
                cap_batch(&mut events);
                let scanned = events.last().map_or(watcher.revision(), |e| e.revision);
                Ok(WatchBatch { events, scanned })
            }
            Ok(Err(e)) => Err(Refusal::from_raft(e)),
            Err(_) => Ok(WatchBatch {
                events: Vec::new(),
                scanned: watcher.revision(),
            }),
        }
    }

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
            Request::Leader => Ok(Reply::Leader(raft.leader_addr())),
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
    let started = |cell: &StoreCell| {
        cell.get()
            .cloned()
            .ok_or_else(|| Refusal::NotReady("the config store is not started yet".into()))
    };
    let (execute_cell, watch_cell) = (cell.clone(), cell.clone());
    let store = ServiceDef::builder(STORE_SERVICE, "0.1.0")
        .method(EXECUTE, move |_: Context, req: Request| {
            let shared = started(&execute_cell);
            async move { shared?.execute_local(req).await }
        })
        .idempotent_method(WATCH, move |_: Context, poll: WatchPoll| {
            let shared = started(&watch_cell);
            async move { shared?.poll_watch(poll).await }
        });
    Ok(vec![raft.build()?, store.build()?])
}

// ===== Transport =====

/// Raft traffic over the node's endpoint: each message is a call to `skynet.raft`.
struct QuicTransport {
    node: WeakNode,
    health: Arc<Health>,
    /// The frame limit less room for the call's envelope (a longer request would be refused),
    /// at most [`RAFT_MAX_REQUEST`].
    max_request_len: usize,
}

/// What a call's envelope around a Raft message takes at most (service and method names, ids).
const RAFT_ENVELOPE_ALLOWANCE: usize = 4 << 10;
/// Longest Raft request sent. openraft 0.9 gives an append-entries request one heartbeat
/// interval (30 ms by default), so a catching-up member gets its entries in pieces that cross a
/// LAN well within it. One largest command plus one full batch fits.
const RAFT_MAX_REQUEST: usize = 2 << 20;

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

    fn max_request_len(&self) -> usize {
        self.max_request_len
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
    let Some(data_dir) = config.data_dir.clone() else {
        return Err(StoreError::Config(
            "a client has no Raft member to start".into(),
        ));
    };
    let id = node_id(&data_dir)?;
    let health = Arc::new(Health::default());
    let transport = QuicTransport {
        node: node.downgrade(),
        health: health.clone(),
        max_request_len: node
            .config()
            .max_frame_size
            .saturating_sub(RAFT_ENVELOPE_ALLOWANCE)
            .min(RAFT_MAX_REQUEST),
    };
    let raft = RaftNode::start(
        id,
        data_dir.join(RAFT_FILE),
        &RaftConfig::default(),
        transport,
    )
    .await
    .map_err(StoreError::from_raft)?;
    // A member the cluster knows under another address would be cut off here: nobody sends to
    // this one, and it would campaign without end and, once heard, depose a healthy leader.
    // It refuses to start before its first election timeout, saying why.
    let addr = node.local_addr().to_string();
    let recorded = raft.recorded_addr().await.map_err(StoreError::from_raft)?;
    if let Some(recorded) = recorded.filter(|r| *r != addr) {
        let _ = raft.shutdown().await;
        return Err(StoreError::Membership(format!(
            "this member (id {id}) is in the cluster's membership at {recorded}, but started at \
             {addr}: the other members would never reach it here. Start it at {recorded} \
             again, or remove it from the cluster (Store::remove_member) and let it join anew \
             with an empty data directory"
        )));
    }
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
    let store = Store::member(shared.clone(), node.clone());
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

/// Ends this member's pending watch polls at once (their clients move to other members), so
/// that they do not hold up the node's drain.
pub(crate) fn stop_polls(cell: &StoreCell) {
    if let Some(shared) = cell.get() {
        shared.stopping.cancel();
    }
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

/// A client node's way to the store: the seeds, and the member that answered last.
pub(crate) struct ClientShared {
    config: StoreConfig,
    /// The members the store named (beyond the seeds), refreshed by [`learn_members`]: a
    /// client whose seeds are gone still finds the cluster through them.
    learned: std::sync::Mutex<Vec<SocketAddr>>,
    /// The member that answered the last request (the leader, for requests only it serves):
    /// tried first. Cleared when it fails.
    preferred: std::sync::Mutex<Option<SocketAddr>>,
    /// Where this client starts in the seed list, so that clients spread over the members.
    start: usize,
    /// Members that stopped answering, and since when: skipped for [`SUSPECT_FOR`].
    suspects: std::sync::Mutex<HashMap<SocketAddr, Instant>>,
}

impl ClientShared {
    pub(crate) fn new(config: StoreConfig) -> Arc<Self> {
        let start = usize::try_from(random_u64() % config.seeds.len().max(1) as u64).unwrap_or(0);
        Arc::new(Self {
            config,
            learned: std::sync::Mutex::default(),
            preferred: std::sync::Mutex::new(None),
            start,
            suspects: std::sync::Mutex::default(),
        })
    }

    /// Marks `addr` as not answering: requests avoid it for a while, and a watch poll waiting
    /// on it moves elsewhere.
    fn suspect(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(addr, Instant::now());
        if self.preferred() == Some(addr) {
            self.set_preferred(None);
        }
    }

    /// `addr` answered: whatever it was suspected of, it is up (a restarted member, say).
    fn cleared(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&addr);
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let mut suspects = self
            .suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match suspects.get(&addr) {
            Some(since) if since.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// Resolves once `addr` is suspected (by any request of this client).
    async fn until_suspect(&self, addr: SocketAddr) {
        while !self.is_suspect(addr) {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    fn preferred(&self) -> Option<SocketAddr> {
        *self
            .preferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_preferred(&self, addr: Option<SocketAddr>) {
        *self
            .preferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addr;
    }

    /// The members to ask: the seeds, then the members the store named that are not seeds.
    fn candidates(&self) -> Vec<SocketAddr> {
        let learned = self
            .learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = self.config.seeds.clone();
        all.extend(learned.iter().filter(|a| !self.config.seeds.contains(a)));
        all
    }

    /// Takes the members a member named as the ones to fall back on.
    fn learn(&self, status: &StoreStatus) {
        let members: Vec<SocketAddr> = status
            .addrs
            .values()
            .filter_map(|addr| addr.parse().ok())
            .collect();
        if !members.is_empty() {
            *self
                .learned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = members;
        }
    }

    /// Whether attempt `round` completed a pass over every member to ask.
    fn asked_every_seed(&self, round: usize) -> bool {
        (round + 1).is_multiple_of(self.candidates().len().max(1))
    }

    /// The member to try first in attempt `round`: the preferred one, then the seeds and the
    /// members learned from the store in turn, skipping suspects unless every one is.
    fn target(&self, round: usize) -> SocketAddr {
        if round == 0
            && let Some(addr) = self.preferred()
        {
            return addr;
        }
        let candidates = self.candidates();
        let nth = |i: usize| candidates[(self.start + round + i) % candidates.len()];
        (0..candidates.len())
            .map(nth)
            .find(|addr| !self.is_suspect(*addr))
            .unwrap_or_else(|| nth(0))
    }
}

/// The error of a request whose every attempt failed: the most telling failure, with the
/// members asked and for how long.
/// The one text for a member that did not answer a request in the time it had.
fn no_answer(member: SocketAddr, within: Duration) -> String {
    format!("{member} gave no answer within {within:?}")
}

fn attempts_failed(
    cause: Option<StoreError>,
    asked: &[SocketAddr],
    timeout: Duration,
) -> StoreError {
    let asked = match asked {
        [] => String::new(),
        addrs => format!(
            "; asked {}",
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    match cause {
        Some(StoreError::Unreachable(reason)) => {
            StoreError::Unreachable(format!("{reason} (for {timeout:?}{asked})"))
        }
        Some(StoreError::Timeout(reason)) => {
            StoreError::Timeout(format!("{reason} (for {timeout:?}{asked})"))
        }
        Some(other) => other,
        None => StoreError::Timeout(format!("no attempt within {timeout:?}")),
    }
}

/// How often a store client asks for the cluster's members.
const MEMBERS_REFRESH: Duration = Duration::from_secs(5);

/// Keeps a store client's list of members current until `stop`: at once, then every
/// [`MEMBERS_REFRESH`] (sooner after a failure), it asks a member for the members it knows, so
/// that a client started with one seed still finds the cluster when that seed dies.
pub(crate) fn learn_members(store: Store, stop: tokio_util::sync::CancellationToken) {
    let Backend::Client(client) = &store.backend else {
        return;
    };
    let client = client.clone();
    tokio::spawn(async move {
        let mut round = 0;
        loop {
            let target = client.target(round);
            let pause = match store
                .remote(target, Request::Status, store.config().timeout)
                .await
            {
                Ok(Reply::Status(status)) => {
                    client.learn(&status);
                    MEMBERS_REFRESH
                }
                _ => {
                    round += 1;
                    MEMBERS_REFRESH / 5
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

/// Where a [`Store`] sends its requests.
#[derive(Clone)]
enum Backend {
    /// This node keeps a replica and takes part in Raft.
    Member(Arc<StoreShared>),
    /// This node keeps nothing and asks the members.
    Client(Arc<ClientShared>),
}

/// This node's handle on the replicated config store, from [`Node::store`]. Cheap to clone.
///
/// Every node can hold one, member or client ([`StoreConfig::client`]), with the same API:
/// writes, linearizable reads and keep-alives go to the leader (forwarded by whichever member is
/// asked first); watches read a member's applied history (this node's own on a member; a
/// long poll of a member on a client, resumed on another member if that one fails, without
/// gaps). Only [`Store::id`], [`Store::status`], [`Store::wait_for`] and [`Store::get_local`]
/// need a replica.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    node: Node,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Store");
        match &self.backend {
            Backend::Member(shared) => d.field("member", &shared.raft.id()),
            Backend::Client(client) => d.field("seeds", &client.config.seeds),
        };
        d.finish_non_exhaustive()
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
    /// Index of the last log entry this member has applied: how far it has caught up.
    pub last_applied: Option<u64>,
    /// Where every member (voter or learner) is reached, as this member knows it.
    pub addrs: BTreeMap<u64, String>,
}

impl StoreStatus {
    fn from_metrics(m: &skynet_raft::NodeMetrics) -> Self {
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

/// How long a forwarded request waits before the caller starts asking whether the member it
/// waits on still leads. A member killed without a word leaves its QUIC connection open until
/// the idle timeout, so silence alone says little; another member naming a different leader
/// does.
const PROBE_AFTER: Duration = Duration::from_millis(100);
/// Between two such questions, and the deadline of each.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long a client avoids a member that stopped answering.
const SUSPECT_FOR: Duration = Duration::from_secs(2);
/// A client's pause after every seed was tried without an answer.
const CLIENT_RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Store {
    /// The node this handle belongs to.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    pub(crate) fn member(shared: Arc<StoreShared>, node: Node) -> Self {
        Self {
            backend: Backend::Member(shared),
            node,
        }
    }

    pub(crate) fn client(client: Arc<ClientShared>, node: Node) -> Self {
        Self {
            backend: Backend::Client(client),
            node,
        }
    }

    fn config(&self) -> &StoreConfig {
        match &self.backend {
            Backend::Member(shared) => &shared.config,
            Backend::Client(client) => &client.config,
        }
    }

    fn replica(&self, what: &str) -> Result<&Arc<StoreShared>, StoreError> {
        match &self.backend {
            Backend::Member(shared) => Ok(shared),
            Backend::Client(_) => Err(StoreError::NotMember(format!("{what} needs a replica"))),
        }
    }

    /// Runs `req` on the leader, retrying while there is no leader or it is unreachable, until
    /// `timeout`. A member tries itself first; a client tries the member that answered last,
    /// then its seeds in turn.
    async fn execute(&self, req: Request, timeout: Duration) -> Result<Reply, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut round = 0;
        // What the attempts met, for the error if none succeeds: the members asked, and the
        // most telling failure (an attempt that only ran out of the time left says less than
        // the connection failures before it).
        let mut asked: Vec<SocketAddr> = Vec::new();
        let mut cause: Option<StoreError> = None;
        loop {
            let first = match &self.backend {
                Backend::Member(_) => None,
                Backend::Client(client) => Some(client.target(round)),
            };
            if let Some(addr) = first.filter(|a| !asked.contains(a)) {
                asked.push(addr);
            }
            let last = match self.follow(first, &req, deadline).await {
                Ok(reply) => return Ok(reply),
                Err(Refusal::Failed(e)) => return Err(e),
                Err(Refusal::NotLeader { .. }) => StoreError::Timeout("no leader elected".into()),
                Err(Refusal::NotReady(reason)) => StoreError::Timeout(reason),
                Err(Refusal::Unreachable(reason)) => StoreError::Unreachable(reason),
            };
            if cause.is_none() || !matches!(last, StoreError::Timeout(_)) {
                cause = Some(last);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(attempts_failed(cause, &asked, timeout));
            }
            self.pause(round, remaining.min(LEADER_POLL)).await;
            round += 1;
        }
    }

    /// Waits before the next attempt: a member until it knows of a leader, a client briefly
    /// once it has asked every seed.
    async fn pause(&self, round: usize, wait: Duration) {
        match &self.backend {
            Backend::Member(shared) => {
                if shared.raft.wait_for_leader(wait, |_| true).await.is_ok() {
                    // A leader is known but may not have answered yet; do not spin.
                    tokio::time::sleep(wait.min(CLIENT_RETRY_PAUSE)).await;
                }
            }
            Backend::Client(client) => {
                if client.asked_every_seed(round) {
                    tokio::time::sleep(wait.min(CLIENT_RETRY_PAUSE)).await;
                }
            }
        }
    }

    /// One attempt: asks `first` (`None`: this node's own member) and follows its redirects.
    async fn follow(
        &self,
        first: Option<SocketAddr>,
        req: &Request,
        deadline: Instant,
    ) -> Result<Reply, Refusal> {
        let own = self.node.local_addr();
        let is_member = matches!(self.backend, Backend::Member(_));
        let mut target = first;
        for _ in 0..MAX_HOPS {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let asked = target.unwrap_or(own);
                return Err(Refusal::NotReady(format!(
                    "the deadline passed before {asked} was asked"
                )));
            }
            let result = match (target, &self.backend) {
                (None, Backend::Member(shared)) => {
                    tokio::time::timeout(remaining, shared.execute_local(req.clone()))
                        .await
                        .unwrap_or_else(|_| Err(Refusal::NotReady(no_answer(own, remaining))))
                }
                (Some(addr), _) => self.remote(addr, req.clone(), remaining).await,
                (None, Backend::Client(_)) => {
                    return Err(Refusal::Unreachable("no member to ask".into()));
                }
            };
            match result {
                Ok(reply) => {
                    if let Backend::Client(client) = &self.backend {
                        client.set_preferred(target);
                        if let Some(addr) = target {
                            client.cleared(addr);
                        }
                    }
                    return Ok(reply);
                }
                Err(Refusal::NotLeader {
                    leader_addr: Some(addr),
                }) => match addr.parse::<SocketAddr>() {
                    Ok(addr) if self.is_suspect(addr) && !self.leads(addr).await => {
                        // Named by a member that has not noticed yet that it is gone.
                        return Err(Refusal::NotLeader { leader_addr: None });
                    }
                    Ok(addr) => target = Some(addr).filter(|a| !(is_member && *a == own)),
                    Err(e) => {
                        return Err(Refusal::Failed(StoreError::Remote(format!(
                            "leader address {addr:?}: {e}"
                        ))));
                    }
                },
                Err(e) => {
                    if let Backend::Client(client) = &self.backend
                        && client.preferred() == target
                    {
                        client.set_preferred(None);
                    }
                    return Err(e);
                }
            }
        }
        Err(Refusal::NotReady("too many redirects".into()))
    }

    async fn remote(
        &self,
        addr: SocketAddr,
        req: Request,
        remaining: Duration,
    ) -> Result<Reply, Refusal> {
        // A write that reached a member which then stopped may or may not have been proposed;
        // anything else is safe to send again to the next leader.
        let is_write = matches!(req, Request::Write(_) | Request::Remove { .. });
        // A join legitimately waits for the whole catch-up of the new member; a status is the
        // asked member's own answer, whoever leads.
        let watch_leader = !matches!(
            req,
            Request::Join { .. } | Request::Leader | Request::Status
        );
        let lost = |reason: String| {
            if is_write {
                Refusal::Failed(StoreError::Indeterminate(reason))
            } else {
                Refusal::Unreachable(reason)
            }
        };
        let client = self
            .node
            .client(STORE_SERVICE)
            .at(addr)
            .with_deadline(remaining);
        let call = client.call::<Request, Reply, Refusal>(EXECUTE, req);
        let outcome = tokio::select! {
            // An answer that is already there wins over giving up on the member.
            biased;
            outcome = call => outcome,
            () = self.leader_moved(addr), if watch_leader => {
                tracing::debug!(member = %addr, "store request abandoned: another member leads");
                self.suspect(addr);
                let reason = format!("{addr} stopped answering; another member leads");
                // With no live connection to the member the request is still waiting for one
                // (a call on a connection that broke has ended already): it was never sent,
                // and may go to the next leader like anything else.
                return Err(if self.node.inner().peers.is_connected(addr) {
                    lost(reason)
                } else {
                    Refusal::Unreachable(reason)
                });
            }
        };
        if let Err(e) = &outcome {
            tracing::debug!(member = %addr, error = %e, "store request failed");
        }
        outcome.map_err(|e| match e {
            CallError::Service(Refusal::Failed(StoreError::Stopped(reason))) => {
                lost(format!("the leader stopped: {reason}"))
            }
            CallError::Service(refusal) => refusal,
            e @ (CallError::Unreachable { .. } | CallError::Unavailable(_)) => {
                self.suspect(addr);
                Refusal::Unreachable(e.to_string())
            }
            CallError::DeadlineExceeded(d) => {
                Refusal::Failed(StoreError::Timeout(no_answer(addr, d)))
            }
            // A member that refused the handshake (or whose certificate this node refused)
            // refuses it again: that is the answer, not a reason to retry until the timeout.
            e @ CallError::HandshakeRefused { .. } => {
                Refusal::Failed(StoreError::Unreachable(e.to_string()))
            }
            CallError::ConnectionLost { reason, .. } => {
                self.suspect(addr);
                lost(reason)
            }
            e => Refusal::Failed(StoreError::Remote(e.to_string())),
        })
    }

    fn suspect(&self, addr: SocketAddr) {
        if let Backend::Client(client) = &self.backend {
            client.suspect(addr);
        }
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        match &self.backend {
            Backend::Client(client) => client.is_suspect(addr),
            Backend::Member(_) => false,
        }
    }

    /// Resolves once a member other than `addr` is known to lead: `addr`, which a request is
    /// waiting on, no longer does (or is gone). A member reads its own Raft metrics; a client
    /// asks its other seeds.
    async fn leader_moved(&self, addr: SocketAddr) {
        tokio::time::sleep(PROBE_AFTER).await;
        let waited_on = addr.to_string();
        loop {
            let named = match &self.backend {
                Backend::Member(shared) => shared.raft.leader_addr(),
                Backend::Client(client) => self.ask_for_leader(client, addr).await,
            };
            if named.is_some_and(|leader| leader != waited_on) {
                return;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Whether the suspected member `addr` is up and says it leads: it may have been restarted
    /// since it was suspected, and won an election. Asked with a short deadline, so a member
    /// that is really gone costs little; an answer clears the suspicion.
    async fn leads(&self, addr: SocketAddr) -> bool {
        let Backend::Client(client) = &self.backend else {
            return false;
        };
        let reply = self
            .node
            .client(STORE_SERVICE)
            .at(addr)
            .with_deadline(PROBE_INTERVAL)
            .call::<Request, Reply, Refusal>(EXECUTE, Request::Leader)
            .await;
        match reply {
            Ok(Reply::Leader(leader)) => {
                client.cleared(addr);
                leader == Some(addr.to_string())
            }
            _ => false,
        }
    }

    /// Asks the seeds other than `busy`, one after another, whom they follow.
    async fn ask_for_leader(&self, client: &ClientShared, busy: SocketAddr) -> Option<String> {
        for seed in client.config.seeds.iter().filter(|s| **s != busy) {
            let reply = self
                .node
                .client(STORE_SERVICE)
                .at(*seed)
                .with_deadline(PROBE_INTERVAL)
                .call::<Request, Reply, Refusal>(EXECUTE, Request::Leader)
                .await;
            if let Ok(Reply::Leader(Some(leader))) = reply {
                return Some(leader);
            }
        }
        None
    }

    /// Asks each seed in turn to admit this member, until one does or the join timeout passes.
    async fn join(&self, id: u64, addr: String) -> Result<(), StoreError> {
        let config = self.config();
        let deadline = Instant::now() + config.join_timeout;
        let req = Request::Join { id, addr };
        let mut last = StoreError::Unreachable("no seed answered".into());
        loop {
            for seed in &config.seeds {
                match self.follow(Some(*seed), &req, deadline).await {
                    Ok(_) => return Ok(()),
                    // The join timeout ran out in the middle of an attempt: what the attempts
                    // before it met (a seed that cannot be reached, say) is the better answer.
                    Err(Refusal::Failed(StoreError::Timeout(_)))
                        if matches!(last, StoreError::Unreachable(_))
                            && Instant::now() >= deadline =>
                    {
                        return Err(last);
                    }
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

    async fn write(&self, cmd: Command) -> Result<Outcome, StoreError> {
        match self
            .execute(Request::Write(cmd), self.config().timeout)
            .await?
        {
            Reply::Written(outcome) => Ok(outcome),
            other => Err(unexpected(&other)),
        }
    }

    /// This member's id (stable across restarts: kept in the data directory); `None` on a
    /// client.
    pub fn id(&self) -> Option<u64> {
        self.replica("an id").ok().map(|shared| shared.raft.id())
    }

    /// This member's current view of the cluster; `None` on a client.
    pub fn status(&self) -> Option<StoreStatus> {
        let shared = self.replica("a status").ok()?;
        Some(StoreStatus::from_metrics(&shared.raft.metrics()))
    }

    /// The members this handle asks, in the order it tries them: on a member, itself; on a
    /// client, its seeds, then the members the store named (learned at start and every few
    /// seconds), so that a client whose seeds are gone still reaches the cluster.
    pub fn known_members(&self) -> Vec<SocketAddr> {
        match &self.backend {
            Backend::Member(_) => vec![self.node.local_addr()],
            Backend::Client(client) => client.candidates(),
        }
    }

    /// Asks the member at `member` for its own view of the cluster: its id, the leader it
    /// follows, the voters and learners. Any node with the cluster credentials may ask.
    pub async fn member_status(&self, member: SocketAddr) -> Result<StoreStatus, StoreError> {
        match self
            .remote(member, Request::Status, self.config().timeout)
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
            .execute(Request::Remove { id }, self.config().timeout)
            .await?
        {
            Reply::Removed => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits until this member's view of the cluster satisfies `accept`, and returns it.
    /// Fails with [`StoreError::NotMember`] on a client.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        accept: impl Fn(&StoreStatus) -> bool + Send + Sync,
    ) -> Result<StoreStatus, StoreError> {
        self.replica("waiting for a status")?
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
            .execute(Request::Get(key.into()), self.config().timeout)
            .await?
        {
            Reply::Value(kv) => Ok(kv),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `key` from this member's applied state without asking anyone: fast, possibly
    /// stale. Fails with [`StoreError::NotMember`] on a client, which has no state to read.
    pub fn get_local(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .replica("a local read")?
            .raft
            .local_read(|kv| kv.get(key).cloned()))
    }

    /// Reads every key starting with `prefix`, linearizably, in key order, with the revision the
    /// read saw (watch from it to follow later changes).
    pub async fn range(
        &self,
        prefix: impl Into<String>,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        match self
            .execute(Request::Range(prefix.into()), self.config().timeout)
            .await?
        {
            Reply::Range(kvs, revision) => Ok((kvs, revision)),
            other => Err(unexpected(&other)),
        }
    }

    /// Watches keys starting with `prefix` for changes after `after` (0: from the start of the
    /// kept history). A member reads its own applied history; a client long-polls a member and
    /// moves to another one if that fails, resuming after the last revision it received.
    pub fn watch(&self, prefix: impl Into<String>, after: Revision) -> StoreWatch {
        let inner = match &self.backend {
            Backend::Member(shared) => WatchInner::Member(shared.raft.watch(prefix, after)),
            Backend::Client(client) => WatchInner::Client(ClientWatch {
                client: client.clone(),
                node: self.node.clone(),
                prefix: prefix.into(),
                after,
                round: 0,
            }),
        };
        StoreWatch { inner }
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
            .execute(Request::KeepAlive(lease), self.config().timeout)
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
    inner: WatchInner,
}

enum WatchInner {
    Member(skynet_raft::Watcher),
    Client(ClientWatch),
}

/// A client's watch: long polls of one member at a time.
struct ClientWatch {
    client: Arc<ClientShared>,
    node: Node,
    prefix: String,
    after: Revision,
    /// Which seed to poll (advances when a member fails).
    round: usize,
}

impl ClientWatch {
    async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        let give_up = self.client.config.timeout;
        let mut failing_since: Option<Instant> = None;
        loop {
            let target = self.client.target(self.round);
            let poll = WatchPoll {
                prefix: self.prefix.clone(),
                after: self.after,
                wait_ms: u64::try_from(WATCH_WAIT.as_millis()).unwrap_or(u64::MAX),
            };
            let client = self
                .node
                .client(STORE_SERVICE)
                .at(target)
                .with_deadline(WATCH_WAIT + Duration::from_millis(500));
            let call = client.call::<WatchPoll, WatchBatch, Refusal>(WATCH, poll);
            // A poll moves on when a request of this client suspects its member meanwhile, but
            // a poll sent to a member already suspected (every member is) waits for its answer:
            // abandoning it at once would only spin.
            let watch_suspicion = !self.client.is_suspect(target);
            let mut abandoned = false;
            let reply = tokio::select! {
                reply = call => reply,
                () = self.client.until_suspect(target), if watch_suspicion => {
                    abandoned = true;
                    Err(CallError::Unavailable(format!("{target} stopped answering")))
                }
            };
            match reply {
                Ok(batch) => {
                    failing_since = None;
                    self.client.cleared(target);
                    // Members agree on the history, so any member's later revision is a safe
                    // place to resume from.
                    self.after = self.after.max(batch.scanned);
                    if !batch.events.is_empty() {
                        return Ok(batch.events);
                    }
                }
                Err(CallError::Service(Refusal::Failed(e))) => return Err(e),
                Err(e) => {
                    tracing::debug!(member = %target, error = %e, "watch poll failed; trying another member");
                    // Only a failure of the member itself makes it suspect. A poll given up
                    // because the member was suspected already must not renew the suspicion:
                    // the watch would keep every member it ever moved away from suspected.
                    if !abandoned && !matches!(e, CallError::Service(_)) {
                        self.client.suspect(target);
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= give_up {
                        return Err(StoreError::Unreachable(format!(
                            "no member answered a watch poll for {give_up:?}: {e}"
                        )));
                    }
                    if self.client.asked_every_seed(self.round) {
                        tokio::time::sleep(CLIENT_RETRY_PAUSE).await;
                    }
                    self.round += 1;
                }
            }
        }
    }
}

impl std::fmt::Debug for StoreWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWatch")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl StoreWatch {
    /// The last revision delivered (or started after).
    pub fn revision(&self) -> Revision {
        match &self.inner {
            WatchInner::Member(w) => w.revision(),
            WatchInner::Client(w) => w.after,
        }
    }

    /// Waits for the next changes (at least one), oldest first. Fails with
    /// [`StoreError::Compacted`] if the watch fell behind the kept history, and on a client with
    /// [`StoreError::Unreachable`] when no member answered for the store's timeout; either way
    /// a new watch can resume from [`StoreWatch::revision`] (after a fresh read, if compacted).
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        match &mut self.inner {
            WatchInner::Member(w) => w.next().await.map_err(StoreError::from_raft),
            WatchInner::Client(w) => w.next().await,
        }
    }
}
