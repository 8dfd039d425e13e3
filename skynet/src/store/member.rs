//! The member side: the state a member shares between its handles and its services, local
//! execution of requests, the two internal services, the Raft transport, and start-up.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use skynet_raft::{RaftConfig, RaftNode, RpcKind, Transport, TransportError};

use super::membership::{self, Health, Removal, View};
use super::wire::{Refusal, Reply, Request, WatchBatch, WatchPoll};
use super::{
    EXECUTE, Event, RAFT_SERVICE, STORE_SERVICE, Store, StoreConfig, StoreError, StoreStatus,
    WATCH, random_u64,
};
use crate::error::CallError;
use crate::rpc::RpcCore;
use crate::service::{Context, ServiceDef, ServiceDefError, ServiceError};

const NODE_ID_FILE: &str = "node-id";
const RAFT_FILE: &str = "raft.redb";

/// Deadline of one Raft message between members (openraft times out appends on its own).
const RAFT_RPC_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of one snapshot transfer.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a member holds a watch poll open when nothing changes.
const MAX_WATCH_WAIT: Duration = Duration::from_secs(30);
/// A watch reply stops adding events past this many bytes (at a revision boundary), far below
/// the frame limit: a watcher that is far behind catches up in several replies.
const MAX_WATCH_BATCH_BYTES: usize = 1 << 20;

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
    pub(super) raft: RaftNode,
    pub(super) config: StoreConfig,
    /// Joins, removals and voter replacements run one at a time on the leader: membership
    /// changes cannot overlap.
    pub(super) join_lock: tokio::sync::Mutex<()>,
    /// When each peer last answered this member's Raft messages (from the transport).
    pub(super) health: Arc<Health>,
    /// Cancelled when the member stops, so that long polls end at once rather than holding up
    /// the node's drain, and the voter-keeping loop ends.
    pub(super) stopping: tokio_util::sync::CancellationToken,
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
    pub(super) async fn execute_local(&self, req: Request) -> Result<Reply, Refusal> {
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
    let mut raft = ServiceDef::builder(RAFT_SERVICE, "0.1.0").serves_until_drained();
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
        .serves_until_drained()
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
    /// Weak: the core hosts the store's services, which hold this transport.
    rpc: std::sync::Weak<RpcCore>,
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
        let Some(rpc) = self.rpc.upgrade() else {
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
        let reply = rpc
            .call_at::<Vec<u8>, Vec<u8>, ServiceError>(RAFT_SERVICE, to, method, request, deadline)
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

/// Starts the Raft member of `node`, fills `cell`, and bootstraps or joins.
pub(crate) async fn start(
    rpc: &Arc<RpcCore>,
    background: &tokio_util::sync::CancellationToken,
    config: StoreConfig,
    cell: &StoreCell,
) -> Result<(), StoreError> {
    if rpc.addr.ip().is_unspecified() {
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
        rpc: Arc::downgrade(rpc),
        health: health.clone(),
        max_request_len: rpc
            .config
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
    let addr = rpc.addr.to_string();
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
    let store = Store::member(shared.clone(), rpc.clone(), background.clone());
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
    tracing::info!(id, addr = %rpc.addr, "config store member started");
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
