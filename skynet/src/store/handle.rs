//! The [`Store`] handle: its public API, and how a request finds the leader (`execute`,
//! `follow`, `remote`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skynet_raft::state::Command;
use tokio_util::sync::CancellationToken;

use super::client::{CLIENT_RETRY_PAUSE, ClientShared, PROBE_INTERVAL};
use super::member::StoreShared;
use super::seek::{self, Attempts, Redirect, abandoned, call_failed, no_answer, redirect};
use super::watch::{ClientWatch, WatchInner};
use super::wire::{Refusal, Reply, Request};
use super::{
    Compare, CompareOp, CompareTarget, EXECUTE, KeyValue, LeaseId, Op, OpResponse, Outcome,
    Revision, STORE_SERVICE, StoreConfig, StoreError, StoreStatus, StoreWatch, Txn, random_u64,
};
use crate::rpc::RpcCore;

/// How long to wait for a leader between attempts of a forwarded request.
const LEADER_POLL: Duration = Duration::from_millis(250);
/// Most redirects followed by one attempt before asking for a leader again.
const MAX_HOPS: usize = 4;
/// How long a forwarded request waits before the caller starts asking whether the member it
/// waits on still leads. A member killed without a word leaves its QUIC connection open until
/// the idle timeout, so silence alone says little; another member naming a different leader
/// does.
const PROBE_AFTER: Duration = Duration::from_millis(100);

/// Where a [`Store`] sends its requests.
#[derive(Clone)]
pub(super) enum Backend {
    /// This node keeps a replica and takes part in Raft.
    Member(Arc<StoreShared>),
    /// This node keeps nothing and asks the members.
    Client(Arc<ClientShared>),
}

/// This node's handle on the replicated config store, from [`Node::store`](crate::Node::store). Cheap to clone.
///
/// Every node can hold one, member or client ([`StoreConfig::client`]), with the same API:
/// writes, linearizable reads and keep-alives go to the leader (forwarded by whichever member is
/// asked first); watches read a member's applied history (this node's own on a member; a
/// long poll of a member on a client, resumed on another member if that one fails, without
/// gaps). Only [`Store::id`], [`Store::status`], [`Store::wait_for`] and [`Store::get_local`]
/// need a replica.
#[derive(Clone)]
pub struct Store {
    pub(super) backend: Backend,
    pub(super) rpc: Arc<RpcCore>,
    /// The node's background work, which ends at its shutdown.
    background: CancellationToken,
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

impl Store {
    /// The node this handle belongs to.
    pub(crate) fn background(&self) -> &CancellationToken {
        &self.background
    }

    pub(crate) fn member(
        shared: Arc<StoreShared>,
        rpc: Arc<RpcCore>,
        background: CancellationToken,
    ) -> Self {
        Self {
            backend: Backend::Member(shared),
            rpc,
            background,
        }
    }

    pub(crate) fn client(
        client: Arc<ClientShared>,
        rpc: Arc<RpcCore>,
        background: CancellationToken,
    ) -> Self {
        Self {
            backend: Backend::Client(client),
            rpc,
            background,
        }
    }

    pub(super) fn config(&self) -> &StoreConfig {
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
        let mut attempts = Attempts::default();
        loop {
            let first = match &self.backend {
                Backend::Member(_) => None,
                Backend::Client(client) => Some(client.target(round)),
            };
            attempts.asking(first);
            match self.attempt(first, &req, deadline).await {
                Ok(reply) => return Ok(reply),
                Err(refusal) => attempts.failed(refusal)?,
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(attempts.give_up(timeout));
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
    async fn attempt(
        &self,
        first: Option<SocketAddr>,
        req: &Request,
        deadline: Instant,
    ) -> Result<Reply, Refusal> {
        let own = self.rpc.addr;
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
                        client.answered(target);
                    }
                    return Ok(reply);
                }
                Err(Refusal::NotLeader {
                    leader_addr: Some(addr),
                }) => match redirect(&addr, own, is_member, |a| self.is_suspect(a)) {
                    Redirect::Ask(next) => target = next,
                    Redirect::ConfirmFirst(addr) if self.leads(addr).await => target = Some(addr),
                    Redirect::ConfirmFirst(_) => {
                        // Named by a member that has not noticed yet that it is gone.
                        return Err(Refusal::NotLeader { leader_addr: None });
                    }
                    Redirect::Fail(refusal) => return Err(refusal),
                },
                Err(e) => {
                    if let Backend::Client(client) = &self.backend {
                        client.failed(target);
                    }
                    return Err(e);
                }
            }
        }
        Err(Refusal::NotReady("too many redirects".into()))
    }

    pub(super) async fn remote(
        &self,
        addr: SocketAddr,
        req: Request,
        remaining: Duration,
    ) -> Result<Reply, Refusal> {
        let may_apply = seek::may_apply(&req);
        let watch_leader = seek::watches_leader(&req);
        let call = self.rpc.call_at::<Request, Reply, Refusal>(
            STORE_SERVICE,
            addr,
            EXECUTE,
            req,
            remaining,
        );
        let outcome = tokio::select! {
            // An answer that is already there wins over giving up on the member.
            biased;
            outcome = call => outcome,
            () = self.leader_moved(addr), if watch_leader => {
                tracing::debug!(member = %addr, "store request abandoned: another member leads");
                self.suspect(addr);
                let connected = self.rpc.peers.is_connected(addr);
                return Err(abandoned(addr, may_apply, connected));
            }
        };
        outcome.map_err(|e| {
            tracing::debug!(member = %addr, error = %e, "store request failed");
            let failure = call_failed(addr, e, may_apply);
            if failure.suspect {
                self.suspect(addr);
            }
            failure.refusal
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
            .rpc
            .call_at::<Request, Reply, Refusal>(
                STORE_SERVICE,
                addr,
                EXECUTE,
                Request::Leader,
                PROBE_INTERVAL,
            )
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
                .rpc
                .call_at::<Request, Reply, Refusal>(
                    STORE_SERVICE,
                    *seed,
                    EXECUTE,
                    Request::Leader,
                    PROBE_INTERVAL,
                )
                .await;
            if let Ok(Reply::Leader(Some(leader))) = reply {
                return Some(leader);
            }
        }
        None
    }

    /// Asks each seed in turn to admit this member, until one does or the join timeout passes.
    pub(super) async fn join(&self, id: u64, addr: String) -> Result<(), StoreError> {
        let config = self.config();
        let deadline = Instant::now() + config.join_timeout;
        let req = Request::Join { id, addr };
        let mut last = StoreError::Unreachable("no seed answered".into());
        loop {
            for seed in &config.seeds {
                match self.attempt(Some(*seed), &req, deadline).await {
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
            Backend::Member(_) => vec![self.rpc.addr],
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
        Ok(self
            .compare_and_set_revision(key, expected, value)
            .await?
            .is_some())
    }

    /// [`Store::compare_and_set`], returning the revision of the write if it was set.
    pub(crate) async fn compare_and_set_revision(
        &self,
        key: impl Into<String>,
        expected: Revision,
        value: impl Into<Vec<u8>>,
    ) -> Result<Option<Revision>, StoreError> {
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
        Ok(outcome.succeeded.then_some(outcome.revision))
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
                rpc: self.rpc.clone(),
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
