//! [`RaftNode`]: one member of the replicated config store, with skynet-raft's own API.
//!
//! This is the only place that drives openraft's `Raft` handle. Everything it returns is this crate's
//! own type ([`Outcome`], [`NodeMetrics`], [`RaftNodeError`]), so moving to openraft 0.10 changes this
//! module, `storage` and `network`, and no caller.
//!
//! Reads come in two names on purpose: [`RaftNode::linearizable_read`] confirms leadership with a
//! quorum first (ReadIndex) and sees every write acknowledged before it started;
//! [`RaftNode::local_read`] reads this member's applied state and may be stale.
//!
//! Each member runs a small lease task. While the member leads, it keeps the [`LeaseClock`] in step
//! with the replicated leases, gives them all a fresh TTL when it takes over (it cannot know which
//! keep-alives its predecessor saw), and proposes one `LeaseExpire` command per tick for the leases
//! whose deadline passed. [`RaftNode::keep_alive`] only touches that clock: keep-alives never reach
//! the log (see [`crate::lease`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState};

use crate::lease::{KeepAliveError, LeaseClock};
use crate::network::{LeaderContact, NetworkFactory, NodeId, RpcHandler, Transport};
use crate::state::{
    Command, CommandError, Compacted, DEFAULT_HISTORY_REVISIONS, Event, KvState, LeaseId, Outcome,
    Revision,
};
use crate::storage::{self, NodeAddr, SmData, TypeConfig};

pub(crate) mod election;
mod propose;

use propose::{BatchLimits, Proposer};

/// Timing and retention settings of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats. Must be well above the peer round trip plus the time
    /// to append a batch: openraft 0.9 times out each append-entries request after this long.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// How many revisions of watch history the state machine keeps (see [`KvState::events_since`]).
    pub history_revisions: u64,
    /// Largest command accepted, by its keys and values ([`RaftNodeError::TooLarge`] beyond): every
    /// entry has to cross to the followers within one heartbeat interval.
    pub max_command_bytes: usize,
    /// Group commit: most writes that share one log entry (and so one fsync per member).
    pub batch_max_commands: usize,
    /// Group commit: a batch stops growing once its writes take about this many bytes.
    pub batch_max_bytes: usize,
    /// Group commit: most batches proposed and not yet applied; writes arriving meanwhile wait
    /// and form the next batch.
    pub batches_in_flight: usize,
}

impl Default for RaftConfig {
    /// Heartbeat 30 ms, election timeouts of 100–200 ms, tuned for a LAN.
    ///
    /// A follower of a leader it has heard from waits openraft's leader lease (the maximum
    /// election timeout) plus its own randomized timeout before it stands, and openraft checks
    /// every 1.5 heartbeats: a dead leader is replaced after about 300–450 ms. openraft 0.9 also
    /// gives up on an append-entries request after one heartbeat interval, so requests are kept
    /// small enough to cross a LAN well within it (see `Transport::max_request_len`).
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(30),
            election_timeout_min: Duration::from_millis(100),
            election_timeout_max: Duration::from_millis(200),
            history_revisions: DEFAULT_HISTORY_REVISIONS,
            max_command_bytes: 1 << 20,
            batch_max_commands: 256,
            batch_max_bytes: 256 << 10,
            batches_in_flight: 2,
        }
    }
}

impl RaftConfig {
    fn to_openraft(&self) -> Result<Config, RaftNodeError> {
        if self.max_command_bytes == 0
            || self.batch_max_commands == 0
            || self.batch_max_bytes == 0
            || self.batches_in_flight == 0
        {
            return Err(RaftNodeError::Config {
                reason: "max_command_bytes, batch_max_commands, batch_max_bytes and \
                         batches_in_flight must be positive"
                    .into(),
            });
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            cluster_name: "skynet".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            ..Config::default()
        }
        .validate()
        .map_err(|e| RaftNodeError::Config {
            reason: e.to_string(),
        })
    }
}

/// Errors of the [`RaftNode`] API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RaftNodeError {
    /// This member is not the leader; send the request to `leader` (if known) instead.
    #[error("not the leader (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        /// The current leader, if this member knows it.
        leader: Option<NodeId>,
        /// The leader's address, if known.
        leader_addr: Option<String>,
    },
    /// The command is larger than [`RaftConfig::max_command_bytes`]; it was not proposed.
    #[error("command of about {size} bytes is over the {limit} byte limit")]
    TooLarge {
        /// The command's size (its keys and values).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The command was applied in order but rejected by the state machine; nothing changed.
    #[error("command rejected: {0}")]
    Rejected(#[from] CommandError),
    /// A watcher fell behind the kept history; resync from a fresh read.
    #[error(transparent)]
    Compacted(#[from] Compacted),
    /// A keep-alive was refused: the lease is unknown or already expired.
    #[error(transparent)]
    KeepAlive(#[from] KeepAliveError),
    /// The leader could not reach a quorum to confirm a linearizable read.
    #[error("no quorum: {reason}")]
    NoQuorum {
        /// Details.
        reason: String,
    },
    /// A membership change was refused (one is in progress, unknown learner, empty set).
    #[error("membership change refused: {reason}")]
    Membership {
        /// Details.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid config: {reason}")]
    Config {
        /// Details.
        reason: String,
    },
    /// Opening the on-disk store failed.
    #[error("storage: {reason}")]
    Storage {
        /// Details.
        reason: String,
    },
    /// The member has stopped (shut down, or a fatal storage error).
    #[error("raft stopped: {reason}")]
    Stopped {
        /// Details.
        reason: String,
    },
    /// A wait gave up.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
}

impl RaftNodeError {
    fn not_leader(f: &ForwardToLeader<NodeId, NodeAddr>) -> Self {
        RaftNodeError::NotLeader {
            leader: f.leader_id,
            leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
        }
    }

    fn stopped(e: impl std::fmt::Display) -> Self {
        RaftNodeError::Stopped {
            reason: e.to_string(),
        }
    }

    fn from_write(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Self::not_leader(&f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                RaftNodeError::Membership {
                    reason: e.to_string(),
                }
            }
            RaftError::Fatal(f) => Self::stopped(f),
        }
    }
}

/// A member's view of the cluster, from openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMetrics {
    /// This member.
    pub id: NodeId,
    /// The leader this member currently follows (or is).
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// Index of the last entry in this member's log.
    pub last_log_index: Option<u64>,
    /// Index of the last applied log entry.
    pub last_applied: Option<u64>,
    /// Voting members of the effective configuration.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members (learners) of the effective configuration.
    pub learners: BTreeSet<NodeId>,
    /// On the leader only: for every other member, the index of the last log entry it is known to
    /// hold (`None` inside: nothing confirmed yet). How far behind a learner is, before promoting it.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
    /// Last log index covered by this member's current snapshot.
    pub snapshot: Option<u64>,
    /// Last log index purged from this member's log.
    pub purged: Option<u64>,
    /// The address of every member of the effective configuration, voter or learner.
    pub addrs: BTreeMap<NodeId, String>,
}

impl NodeMetrics {
    fn from_openraft(m: &openraft::RaftMetrics<NodeId, NodeAddr>) -> Self {
        NodeMetrics {
            id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters: m.membership_config.membership().voter_ids().collect(),
            learners: m.membership_config.membership().learner_ids().collect(),
            replication: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, matched)| (*id, matched.map(|l| l.index)))
                    .collect()
            }),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            addrs: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }
}

/// One running member of the config store.
pub struct RaftNode {
    id: NodeId,
    raft: Raft<TypeConfig>,
    data: Arc<RwLock<SmData>>,
    revision: tokio::sync::watch::Receiver<Revision>,
    leases: Arc<Mutex<LeaderLeases>>,
    lease_task: tokio::task::JoinHandle<()>,
    /// Switches openraft's elections on only when a majority hears no leader (pre-vote).
    election_gate: tokio::task::JoinHandle<()>,
    /// When a leader was last heard, shared with every [`RpcHandler`].
    contact: Arc<LeaderContact>,
    /// openraft's leader lease, for the handlers' pre-vote answers.
    leader_lease: Duration,
    proposer: Proposer,
    max_command_bytes: usize,
}

/// A watch on a key prefix: yields every change after a revision, in order, with no gap.
///
/// It reads this member's applied history, so it works on any member and survives leader changes.
/// If it falls further behind than the kept history, [`Watcher::next`] fails with
/// [`RaftNodeError::Compacted`]: read the range again and watch from that read's revision.
pub struct Watcher {
    prefix: String,
    after: Revision,
    data: Arc<RwLock<SmData>>,
    revision: tokio::sync::watch::Receiver<Revision>,
}

impl Watcher {
    /// The last revision this watcher has delivered (or started after).
    pub fn revision(&self) -> Revision {
        self.after
    }

    /// Waits for the next changes under the prefix and returns them (at least one), oldest first.
    pub async fn next(&mut self) -> Result<Vec<Event>, RaftNodeError> {
        loop {
            // Mark the current value seen before reading, so a change that lands after the read
            // still wakes the wait below.
            self.revision.borrow_and_update();
            {
                let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
                let events = data.kv.events_since(self.after, &self.prefix)?;
                if let Some(last) = events.last() {
                    self.after = last.revision;
                    return Ok(events);
                }
                // Nothing under the prefix up to here: skip ahead so the next scan starts later.
                self.after = self.after.max(data.kv.revision());
            }
            self.revision
                .changed()
                .await
                .map_err(|_| RaftNodeError::stopped("the state machine is gone"))?;
        }
    }
}

/// The lease clock and the term in which this member last took it over as leader.
#[derive(Default)]
struct LeaderLeases {
    clock: LeaseClock,
    term: Option<u64>,
}

impl LeaderLeases {
    /// Brings the clock in step with the replicated leases; on a new term, gives all a fresh TTL.
    fn sync(&mut self, term: u64, data: &RwLock<SmData>, now: Instant) {
        {
            let data = data.read().unwrap_or_else(PoisonError::into_inner);
            let live = data
                .kv
                .leases()
                .map(|(id, l)| (id, Duration::from_millis(l.ttl_ms)));
            self.clock.sync(live, now);
        }
        if self.term != Some(term) {
            self.term = Some(term);
            self.clock.reset_all(now);
        }
    }
}

/// Whether the member is leader, per its metrics, and in which term.
fn leading_term(raft: &Raft<TypeConfig>, id: NodeId) -> Option<u64> {
    let m = raft.metrics();
    let m = m.borrow();
    (m.state == ServerState::Leader && m.current_leader == Some(id)).then_some(m.current_term)
}

/// The lease task: every tick, while leading, expire overdue leases through the log.
async fn run_leases(
    id: NodeId,
    raft: Raft<TypeConfig>,
    data: Arc<RwLock<SmData>>,
    leases: Arc<Mutex<LeaderLeases>>,
    tick: Duration,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let expired = {
            let mut l = leases.lock().unwrap_or_else(PoisonError::into_inner);
            match leading_term(&raft, id) {
                Some(term) => {
                    let now = Instant::now();
                    l.sync(term, &data, now);
                    l.clock.expired(now)
                }
                None => {
                    // Forget everything: the next time this member leads it starts afresh.
                    *l = LeaderLeases::default();
                    continue;
                }
            }
        };
        if expired.is_empty() {
            continue;
        }
        let cmd = vec![Command::LeaseExpire {
            ids: expired.clone(),
        }];
        if let Err(e) = raft.client_write(cmd).await {
            tracing::debug!(error = %e, ?expired, "lease expiry not committed; retrying next tick");
            let mut l = leases.lock().unwrap_or_else(PoisonError::into_inner);
            l.clock.retry_expiry(&expired);
        }
    }
}

impl RaftNode {
    /// Opens (or creates) the store at `path` and starts the member. A restarted member resumes from
    /// its disk and needs no further call; a brand-new cluster needs [`Self::initialize`] once.
    ///
    /// Connect [`Self::rpc_handler`] to the transport's receiving side so peers can reach it.
    pub async fn start<T: Transport>(
        id: NodeId,
        path: impl AsRef<Path>,
        config: &RaftConfig,
        transport: T,
    ) -> Result<Self, RaftNodeError> {
        let raft_config = Arc::new(config.to_openraft()?);
        let (log, sm) =
            storage::open(path, KvState::new(config.history_revisions)).map_err(|e| {
                RaftNodeError::Storage {
                    reason: e.to_string(),
                }
            })?;
        let data = sm.data();
        let revision = sm.subscribe();
        let transport = Arc::new(transport);
        let timing = election::Timing {
            tick: config.heartbeat_interval,
            // openraft's lease is its maximum election timeout.
            lease: config.election_timeout_max,
            election_min: config.election_timeout_min,
            election_max: config.election_timeout_max,
        };
        let raft = Raft::new(
            id,
            raft_config,
            NetworkFactory::new(transport.clone()),
            log,
            sm,
        )
        .await
        .map_err(RaftNodeError::stopped)?;
        // Off until the gate has heard from a majority that no leader is about; see `election`.
        raft.runtime_config().elect(false);
        let contact = Arc::new(LeaderContact::new());
        let election_gate = tokio::spawn(election::run(
            id,
            raft.clone(),
            transport,
            contact.clone(),
            timing,
        ));
        let leases = Arc::new(Mutex::new(LeaderLeases::default()));
        let lease_task = tokio::spawn(run_leases(
            id,
            raft.clone(),
            data.clone(),
            leases.clone(),
            config.heartbeat_interval,
        ));
        let proposer = Proposer::start(
            raft.clone(),
            BatchLimits {
                commands: config.batch_max_commands,
                bytes: config.batch_max_bytes,
                in_flight: config.batches_in_flight,
            },
        );
        Ok(Self {
            id,
            raft,
            data,
            revision,
            leases,
            lease_task,
            election_gate,
            contact,
            leader_lease: timing.lease,
            proposer,
            max_command_bytes: config.max_command_bytes,
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The handler for requests from peers, to plug into the transport's server side.
    pub fn rpc_handler(&self) -> RpcHandler {
        RpcHandler::new(self.raft.clone(), self.contact.clone(), self.leader_lease)
    }

    /// Bootstraps a new cluster with `members` (id → address) as voters. Call it on one member, once
    /// in the cluster's life; on an already initialized member it does nothing.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), RaftNodeError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(RaftNodeError::stopped)?
        {
            return Ok(());
        }
        let members: BTreeMap<NodeId, NodeAddr> = members
            .into_iter()
            .map(|(id, addr)| (id, NodeAddr { addr }))
            .collect();
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => RaftNodeError::Membership {
                reason: e.to_string(),
            },
            RaftError::Fatal(f) => RaftNodeError::stopped(f),
        })
    }

    /// Proposes a command and waits until it is committed and applied. Writes that arrive together
    /// share one log entry (group commit; see the `propose` module). Fails with
    /// [`RaftNodeError::NotLeader`] on a follower (forwarding is the caller's job for now).
    pub async fn write(&self, cmd: Command) -> Result<Outcome, RaftNodeError> {
        let size = cmd.size_hint();
        if size > self.max_command_bytes {
            return Err(RaftNodeError::TooLarge {
                size,
                limit: self.max_command_bytes,
            });
        }
        self.proposer.propose(cmd).await
    }

    /// Keeps a lease alive for another TTL and returns that TTL. Only the leader holds lease
    /// deadlines, so a follower answers [`RaftNodeError::NotLeader`]; nothing is written to the log.
    pub fn keep_alive(&self, lease: LeaseId) -> Result<Duration, RaftNodeError> {
        let Some(term) = leading_term(&self.raft, self.id) else {
            let m = self.raft.metrics();
            let m = m.borrow();
            let leader = m.current_leader;
            let leader_addr = leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            });
            return Err(RaftNodeError::NotLeader {
                leader,
                leader_addr,
            });
        };
        let now = Instant::now();
        let mut l = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        // A grant applied since the last tick is picked up here.
        l.sync(term, &self.data, now);
        let deadline = l.clock.keep_alive(lease, now)?;
        Ok(deadline.saturating_duration_since(now))
    }

    /// Runs `read` on the state after confirming with a quorum that this member is still the leader
    /// and has applied everything committed before the call.
    pub async fn linearizable_read<R>(
        &self,
        read: impl FnOnce(&KvState) -> R,
    ) -> Result<R, RaftNodeError> {
        self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
                RaftNodeError::not_leader(&f)
            }
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                RaftNodeError::NoQuorum {
                    reason: q.to_string(),
                }
            }
            RaftError::Fatal(f) => RaftNodeError::stopped(f),
        })?;
        Ok(self.local_read(read))
    }

    /// Runs `read` on this member's applied state, without asking anyone: fast, possibly stale.
    pub fn local_read<R>(&self, read: impl FnOnce(&KvState) -> R) -> R {
        let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
        read(&data.kv)
    }

    /// Watches keys starting with `prefix` for changes after revision `after` (0 = from the start of
    /// the kept history; usually the revision of a preceding read).
    pub fn watch(&self, prefix: impl Into<String>, after: Revision) -> Watcher {
        Watcher {
            prefix: prefix.into(),
            after,
            data: self.data.clone(),
            revision: self.revision.clone(),
        }
    }

    /// Adds a non-voting member and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), RaftNodeError> {
        self.raft
            .add_learner(id, NodeAddr { addr }, true)
            .await
            .map_err(RaftNodeError::from_write)?;
        Ok(())
    }

    /// Makes `voters` the voting members (learners must have been added first); members dropped from
    /// the set are removed entirely.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), RaftNodeError> {
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(RaftNodeError::from_write)?;
        Ok(())
    }

    /// Like [`Self::change_membership`], but voters dropped from the set stay on as learners: a
    /// demoted member keeps receiving the log and can be promoted again.
    pub async fn change_membership_retaining(
        &self,
        voters: BTreeSet<NodeId>,
    ) -> Result<(), RaftNodeError> {
        self.raft
            .change_membership(voters, true)
            .await
            .map_err(RaftNodeError::from_write)?;
        Ok(())
    }

    /// Removes learners from the membership (a voter must be dropped from the voters first).
    pub async fn remove_learners(&self, ids: BTreeSet<NodeId>) -> Result<(), RaftNodeError> {
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(RaftNodeError::from_write)?;
        Ok(())
    }

    /// The leader this member knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The address the cluster's membership records for this member, if it is a member. Read
    /// from Raft's own state, so it is right from the start: the metrics are published a
    /// moment after the member starts.
    pub async fn recorded_addr(&self) -> Result<Option<String>, RaftNodeError> {
        let id = self.id;
        self.raft
            .with_raft_state(move |state| {
                state
                    .membership_state
                    .effective()
                    .get_node(&id)
                    .map(|node| node.addr.clone())
            })
            .await
            .map_err(RaftNodeError::stopped)
    }

    /// The address of the leader this member follows (or is), if it knows one.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// A snapshot of this member's view of the cluster.
    pub fn metrics(&self) -> NodeMetrics {
        NodeMetrics::from_openraft(&self.raft.metrics().borrow())
    }

    /// Waits until this member knows a leader that satisfies `accept`, and returns it.
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
        accept: impl Fn(NodeId) -> bool + Send + Sync,
    ) -> Result<NodeId, RaftNodeError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some_and(&accept),
                "an acceptable leader",
            )
            .await
            .map_err(|e| RaftNodeError::Timeout {
                what: e.to_string(),
            })?;
        m.current_leader.ok_or_else(|| RaftNodeError::Timeout {
            what: "a leader".into(),
        })
    }

    /// Waits until this member's view of the cluster satisfies `accept`, and returns that view.
    /// `what` names the awaited condition in the timeout error.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&NodeMetrics) -> bool + Send + Sync,
    ) -> Result<NodeMetrics, RaftNodeError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| accept(&NodeMetrics::from_openraft(m)), what)
            .await
            .map_err(|e| RaftNodeError::Timeout {
                what: e.to_string(),
            })?;
        Ok(NodeMetrics::from_openraft(&m))
    }

    /// Builds a snapshot of everything applied so far and purges the log it covers, bounding disk
    /// use and restart time. Returns the snapshot's last log index (0 if nothing was applied yet).
    /// Purging may lag while a replication stream still reads those entries; a lagging follower then
    /// catches up from the snapshot.
    pub async fn compact(&self, timeout: Duration) -> Result<u64, RaftNodeError> {
        let applied = self.raft.metrics().borrow().last_applied;
        let Some(applied) = applied else {
            return Ok(0);
        };
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(RaftNodeError::stopped)?;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
                "a snapshot covering the applied log",
            )
            .await
            .map_err(|e| RaftNodeError::Timeout {
                what: e.to_string(),
            })?;
        let upto = m.snapshot.map_or(0, |s| s.index);
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(RaftNodeError::stopped)?;
        Ok(upto)
    }

    /// Stops the member. Its disk state stays; [`Self::start`] on the same path resumes it.
    pub async fn shutdown(&self) -> Result<(), RaftNodeError> {
        self.lease_task.abort();
        self.election_gate.abort();
        self.proposer.stop();
        self.raft.shutdown().await.map_err(RaftNodeError::stopped)
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        self.lease_task.abort();
        self.election_gate.abort();
    }
}
