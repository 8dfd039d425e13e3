//! How Raft members talk: a byte-level [`Transport`] that skynet implements over QUIC.
//!
//! The transport sees only opaque request and reply bytes plus an [`RpcKind`] hint, never openraft
//! types. That keeps openraft (and its next breaking release) inside this crate: skynet's QUIC layer
//! moves bytes to a node id, the receiving side hands them to [`RpcHandler::handle`], and the reply
//! goes back the same way. The kind lets a transport prioritise heartbeats over a large snapshot, e.g.
//! by sending snapshots on their own stream.
//!
//! [`MemTransport`] is the in-memory implementation used by tests: it calls the target's handler
//! directly, and a node that is not registered is unreachable.
//!
//! # Peers that stop answering
//!
//! This layer, not openraft, reports peers that fail: a warning once a peer's requests have failed
//! for a second, a summary at most every 30 s while they go on, one line when it answers again,
//! and each failed request at debug (see [`outage`]). Two things keep openraft quiet meanwhile:
//!
//! - Each request gets its own deadline just before openraft's, so this layer sees the requests
//!   that get no answer instead of openraft dropping them. Once a peer's requests have failed for
//!   a second, its failures go to openraft as [`Unreachable`], upon which openraft waits
//!   [`RETRY_UNREACHABLE`] before the next request to that peer, instead of one per heartbeat.
//! - openraft still logs each failed request of its own accord (at WARN and ERROR, and whatever
//!   the error kind); [`RECOMMENDED_LOG_DIRECTIVES`] turns those lines off for applications that
//!   add it to their log filter.

use std::collections::HashMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Raft, ServerState, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::storage::{NodeAddr, TypeConfig};

mod outage;

use outage::{Outages, Report};

/// `tracing` filter directives that quiet openraft's own logging of unanswered requests, which
/// this crate reports itself (once per outage, with counts): add them to an application's filter,
/// e.g. `EnvFilter::new(format!("info,{RECOMMENDED_LOG_DIRECTIVES}"))`.
///
/// - `openraft=warn`: openraft's INFO lines are its internal tracing; a member that cannot reach
///   the leader stands for election every few hundred milliseconds and every member it asks logs
///   several INFO lines per request.
/// - `openraft::replication=off`: the replication task logs every failed request at WARN and
///   again at ERROR, and each wait before a retry at WARN. It logs nothing else that openraft does
///   not also report elsewhere (a storage error stops the member, which its core logs).
/// - `openraft::engine::handler::replication_handler=error`: two more WARN lines per failed
///   request.
///
/// Not covered: openraft logs one ERROR (`while requesting vote` or `timeout`) per vote request a
/// member leaves unanswered; those come only during elections and stay visible.
pub const RECOMMENDED_LOG_DIRECTIVES: &str = "openraft=warn,openraft::replication=off,\
     openraft::engine::handler::replication_handler=error";

/// How long openraft waits before the next request to a peer after a request failed as
/// [`Unreachable`]. Short enough that a member that restarts hears from the leader before its
/// first election timeout (the leader lease plus 100–200 ms with the default [`RaftConfig`]), so
/// its return does not cost the cluster an election; long enough that a dead member costs a few
/// requests a second, not one per heartbeat.
///
/// [`RaftConfig`]: crate::RaftConfig
pub(crate) const RETRY_UNREACHABLE: Duration = Duration::from_millis(250);

/// A member's id.
pub type NodeId = u64;

/// What a Raft request is, so a transport can prioritise or route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RpcKind {
    /// Log replication and heartbeats: small, latency-critical.
    AppendEntries,
    /// An election vote request, or the question before one (whether the peer hears a leader).
    Vote,
    /// A full snapshot: possibly large, not latency-critical.
    Snapshot,
}

/// A transport could not deliver a request or get its reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is known to be down or cannot be connected to; Raft backs off before retrying.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The target node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// The request failed in flight (connection lost, stream reset, bad reply); Raft retries.
    #[error("rpc to node {node} failed: {reason}")]
    Failed {
        /// The target node.
        node: NodeId,
        /// Why.
        reason: String,
    },
}

/// Carries Raft requests to other members. skynet implements it over its QUIC endpoint.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to node `target` (reachable at `addr`) and returns the reply bytes, which the
    /// target produced with [`RpcHandler::handle`].
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        kind: RpcKind,
        request: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;

    /// The longest request this transport carries. An append-entries request that would be longer
    /// is not sent: openraft is asked to send fewer entries at a time instead.
    fn max_request_len(&self) -> usize {
        usize::MAX
    }
}

/// A request as it travels between members.
#[derive(Serialize, Deserialize)]
pub(crate) enum WireRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, NodeAddr>,
        data: Vec<u8>,
    },
    /// Whether the receiver would vote, as far as leaders go (see `node/election.rs`). Last,
    /// so that the earlier variants keep their encoding.
    PreVote(PreVote),
}

type AppendReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
type VoteReply = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
type SnapshotReply = Result<SnapshotResponse<NodeId>, Fatal<NodeId>>;

/// The question a member asks the other voters before it stands: do you hear a leader?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVote {
    /// Who asks, for the responder's log.
    pub(crate) candidate: NodeId,
}

/// The answer: `true` if the asked voter would vote, as far as leaders go.
pub(crate) type PreVoteReply = bool;

/// When this member last heard from a leader it accepts: the receiving side stamps it on every
/// append-entries request or snapshot it takes. Starts as "at start-up": a restarted member
/// gives the leader its election timeout to reach it before it asks.
#[derive(Debug)]
pub(crate) struct LeaderContact {
    origin: Instant,
    /// Nanoseconds from `origin` to the last contact.
    last: AtomicU64,
}

impl LeaderContact {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// A leader was heard just now.
    pub(crate) fn heard(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    /// How long no leader has been heard, as of `now`.
    pub(crate) fn silent_for(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// The receiving end: turns request bytes from a peer into reply bytes. Cheap to clone.
#[derive(Clone)]
pub struct RpcHandler {
    raft: Raft<TypeConfig>,
    /// Stamped on every append-entries request or snapshot the member takes from a leader.
    contact: Arc<LeaderContact>,
    /// openraft's leader lease: a member that heard a leader this recently grants no pre-vote.
    lease: Duration,
}

/// A request that could not be decoded; the sender is incompatible or the bytes are corrupt.
#[derive(Debug, thiserror::Error)]
#[error("bad raft request: {0}")]
pub struct BadRequest(#[from] CodecError);

impl RpcHandler {
    pub(crate) fn new(
        raft: Raft<TypeConfig>,
        contact: Arc<LeaderContact>,
        lease: Duration,
    ) -> Self {
        Self {
            raft,
            contact,
            lease,
        }
    }

    /// Handles one request from a peer and returns the reply to send back. Raft-level errors travel
    /// inside the reply; only undecodable input fails here.
    pub async fn handle(&self, request: &[u8]) -> Result<Vec<u8>, BadRequest> {
        let reply = match codec::decode::<WireRequest>(request)? {
            WireRequest::AppendEntries(req) => {
                let reply = self.raft.append_entries(req).await;
                // A request from a leader this member does not refuse: one with a lower term
                // (a deposed leader) gets `HigherVote`.
                if matches!(&reply, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.contact.heard();
                }
                codec::encode::<AppendReply>(&reply)?
            }
            WireRequest::Vote(req) => codec::encode::<VoteReply>(&self.raft.vote(req).await)?,
            WireRequest::Snapshot { vote, meta, data } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                };
                let reply = self.raft.install_full_snapshot(vote, snapshot).await;
                if reply.is_ok() {
                    self.contact.heard();
                }
                codec::encode::<SnapshotReply>(&reply)?
            }
            WireRequest::PreVote(req) => {
                let granted = self.grants_pre_vote();
                tracing::debug!(candidate = req.candidate, granted, "pre-vote");
                codec::encode::<PreVoteReply>(&granted)?
            }
        };
        Ok(reply)
    }

    /// Whether this member would vote, as far as leaders go: it does not lead, and has heard
    /// from no leader for the lease (openraft's own rule for refusing a vote).
    fn grants_pre_vote(&self) -> bool {
        let leads = self.raft.metrics().borrow().state == ServerState::Leader;
        !leads && self.contact.silent_for(Instant::now()) >= self.lease
    }
}

// ===== openraft adapter =====

/// openraft's network factory over a [`Transport`].
pub(crate) struct NetworkFactory<T> {
    transport: Arc<T>,
    /// Shared by every client: openraft makes a new one per replication session and election.
    outages: Arc<Mutex<Outages>>,
}

impl<T> NetworkFactory<T> {
    pub(crate) fn new(transport: Arc<T>) -> Self {
        Self {
            transport,
            outages: Arc::default(),
        }
    }
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            outages: self.outages.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// openraft's view of one peer.
pub(crate) struct PeerClient<T> {
    transport: Arc<T>,
    outages: Arc<Mutex<Outages>>,
    target: NodeId,
    addr: String,
}

/// A failed call, before it is shaped into the error type each openraft method wants.
enum CallError {
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl From<CodecError> for CallError {
    fn from(e: CodecError) -> Self {
        CallError::Network(NetworkError::new(&e))
    }
}

/// The deadline this layer gives a request openraft limits to `option`: 9/10 of openraft's. Close
/// to it, so that a peer that answered in time before still does, and early enough that this
/// deadline passes first (both are timers of the same runtime, of millisecond resolution), so
/// that this layer sees the failure. Not openraft's `soft_ttl` (3/4): a peer answering between
/// the two would fail every request.
fn deadline(option: &RPCOption) -> Duration {
    option.hard_ttl() * 9 / 10
}

impl<T: Transport> PeerClient<T> {
    async fn call<R: serde::de::DeserializeOwned>(
        &self,
        kind: RpcKind,
        req: &WireRequest,
        deadline: Option<Duration>,
    ) -> Result<R, CallError> {
        self.call_encoded(kind, codec::encode(req)?, deadline).await
    }

    /// Sends `bytes`, within `deadline` if given, records the outcome for reporting, and turns a
    /// failure into openraft's terms: a transport that knows the peer is unreachable says so, and
    /// so does a failure of a peer that counts as down, so that openraft backs off; other failures
    /// are network errors, which openraft retries at the next heartbeat (a live follower that
    /// missed a few heartbeats must not be kept waiting, or it stands for election).
    async fn call_encoded<R: serde::de::DeserializeOwned>(
        &self,
        kind: RpcKind,
        bytes: Vec<u8>,
        deadline: Option<Duration>,
    ) -> Result<R, CallError> {
        let call = self.transport.call(self.target, &self.addr, kind, bytes);
        let result = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, call)
                .await
                .unwrap_or_else(|_| {
                    Err(TransportError::Failed {
                        node: self.target,
                        reason: format!("no answer within {deadline:?}"),
                    })
                }),
            None => call.await,
        };
        match result {
            Ok(reply) => {
                self.answered();
                Ok(codec::decode(&reply)?)
            }
            Err(e) => {
                let down = self.failed(kind, &e);
                Err(match e {
                    TransportError::Failed { .. } if !down => {
                        CallError::Network(NetworkError::new(&e))
                    }
                    _ => CallError::Unreachable(Unreachable::new(&e)),
                })
            }
        }
    }

    /// Records an answer; reports the end of a reported outage.
    fn answered(&self) {
        let Some(back) = self.lock_outages().answered(self.target, Instant::now()) else {
            return;
        };
        let (member, addr, failed_attempts) = (self.target, &back.addr, back.failures);
        let down_for = round_ms(back.failed_for);
        if back.reported {
            tracing::info!(member, %addr, ?down_for, failed_attempts, "raft member answers again");
        } else {
            tracing::debug!(member, %addr, ?down_for, failed_attempts, "raft member answers again");
        }
    }

    /// Records a failed request; reports it at debug, and the outage when it calls for a report.
    /// Returns whether the peer counts as down.
    fn failed(&self, kind: RpcKind, error: &TransportError) -> bool {
        let (down, report) = self
            .lock_outages()
            .failed(self.target, &self.addr, Instant::now());
        let member = self.target;
        tracing::debug!(member, addr = %self.addr, rpc = ?kind, %error, "raft request failed");
        match report {
            Report::Quiet => {}
            Report::Unreachable {
                addr,
                failing_for,
                failures,
            } => tracing::warn!(
                member,
                %addr,
                failing_for = ?round_ms(failing_for),
                failed_attempts = failures,
                %error,
                "raft member unreachable; retrying every {RETRY_UNREACHABLE:?}, reporting it again \
                 when it answers",
            ),
            Report::StillUnreachable {
                addr,
                failing_for,
                failures,
                failures_since_report,
            } => tracing::warn!(
                member,
                %addr,
                failing_for = ?round_ms(failing_for),
                failed_attempts = failures,
                since_last_report = failures_since_report,
                last_error = %error,
                "raft member still unreachable",
            ),
        }
        down
    }

    fn lock_outages(&self) -> std::sync::MutexGuard<'_, Outages> {
        self.outages.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
    ) -> RPCError<NodeId, NodeAddr, RaftError<NodeId, E>> {
        match e {
            CallError::Unreachable(e) => RPCError::Unreachable(e),
            CallError::Network(e) => RPCError::Network(e),
        }
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for PeerClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        let bytes = codec::encode(&WireRequest::AppendEntries(rpc))
            .map_err(|e| self.rpc_error(e.into()))?;
        let limit = self.transport.max_request_len();
        if bytes.len() > limit && entries > 1 {
            // openraft retries at once with at most this many entries per request.
            let fitting = entries.saturating_mul(limit) / bytes.len();
            let hint = u64::try_from(fitting.max(1)).unwrap_or(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        let reply: AppendReply = self
            .call_encoded(RpcKind::AppendEntries, bytes, Some(deadline(&option)))
            .await
            .map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        let reply: VoteReply = self
            .call(
                RpcKind::Vote,
                &WireRequest::Vote(rpc),
                Some(deadline(&option)),
            )
            .await
            .map_err(|e| self.rpc_error(e))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let req = WireRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        // openraft puts no timeout on full snapshots; stop when replication to this peer closes.
        let reply: SnapshotReply = tokio::select! {
            r = self.call(RpcKind::Snapshot, &req, None) => match r {
                Ok(reply) => reply,
                Err(CallError::Unreachable(e)) => return Err(StreamingError::Unreachable(e)),
                Err(CallError::Network(e)) => return Err(StreamingError::Network(e)),
            },
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        reply.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// A fixed wait: see [`RETRY_UNREACHABLE`]. openraft drops it after the next answer.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(RETRY_UNREACHABLE))
    }
}

/// `d` to whole milliseconds, for logs.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ===== MemTransport =====

/// An in-memory [`Transport`] for tests: delivers requests by calling the target's handler.
#[derive(Clone)]
pub struct MemTransport {
    handlers: Arc<Mutex<HashMap<NodeId, RpcHandler>>>,
    max_request_len: usize,
}

impl Default for MemTransport {
    fn default() -> Self {
        Self {
            handlers: Arc::default(),
            max_request_len: usize::MAX,
        }
    }
}

impl MemTransport {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same network, refusing requests longer than `len` bytes (as a real transport's frame
    /// limit does).
    pub fn with_max_request_len(mut self, len: usize) -> Self {
        self.max_request_len = len;
        self
    }

    /// Connects node `id`; requests to it reach `handler`.
    pub fn register(&self, id: NodeId, handler: RpcHandler) {
        self.lock().insert(id, handler);
    }

    /// Disconnects node `id`; requests to it fail as unreachable.
    pub fn unregister(&self, id: NodeId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, RpcHandler>> {
        self.handlers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Transport for MemTransport {
    async fn call(
        &self,
        target: NodeId,
        _addr: &str,
        _kind: RpcKind,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        if request.len() > self.max_request_len {
            return Err(TransportError::Failed {
                node: target,
                reason: format!(
                    "request of {} bytes over the {} byte limit",
                    request.len(),
                    self.max_request_len
                ),
            });
        }
        let handler = self.lock().get(&target).cloned();
        let Some(handler) = handler else {
            return Err(TransportError::Unreachable {
                node: target,
                reason: "not connected".into(),
            });
        };
        handler
            .handle(&request)
            .await
            .map_err(|e| TransportError::Failed {
                node: target,
                reason: e.to_string(),
            })
    }

    fn max_request_len(&self) -> usize {
        self.max_request_len
    }
}
