//! The replicated key-value state machine, free of I/O and of openraft types.
//!
//! Everything here is deterministic: a [`KvState`] changes only through [`KvState::apply`], and the
//! same sequence of [`Command`]s produces the same state on every member. That is what makes it a
//! Raft state machine: the log orders the commands, this module gives them meaning. Keeping it
//! sans-IO means the semantics are tested with plain unit tests (including a model-based test against
//! a `BTreeMap`), with no cluster, disk or clock involved.
//!
//! # Revisions
//!
//! The store keeps one global *revision*, like etcd. Every command that changes at least one key bumps
//! it by exactly one, and every change made by that command (all keys of a prefix delete, all ops of a
//! transaction, all keys of an expired lease) carries that same revision. Commands that change no key
//! (a lease grant, a delete of a missing key, a transaction whose branch only reads) leave it alone, so
//! a revision always names one atomic change of the keyspace — the unit a watcher resumes from.
//!
//! Each key records `create_revision` (when it was created, reset by a delete), `mod_revision` (its last
//! change) and `version` (number of puts since creation). A missing key compares as revision 0,
//! version 0 and no value.
//!
//! # Watch history
//!
//! Every change emits an [`Event`]. The last `history_revisions` revisions of events are kept so a
//! watcher that reconnects (possibly to another member, after a leader change) asks
//! [`KvState::events_since`] for everything after the last revision it saw and continues with no gap.
//! Older events are dropped to bound memory; a watcher that fell further behind gets
//! [`Compacted`] and must resync (read the range, then watch from the read's revision).
//!
//! # Leases
//!
//! Leases are granted, revoked and expired through the log, because those change keys. Their
//! *deadlines* are not part of this state: see [`crate::lease`] for why keep-alives stay off the log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// A global revision of the keyspace; 0 means "before the first change".
pub type Revision = u64;

/// The identifier of a lease, chosen by the client that grants it.
pub type LeaseId = u64;

/// Default number of revisions of watch history kept by [`KvState::default`].
pub const DEFAULT_HISTORY_REVISIONS: u64 = 10_000;

/// A stored key with its value and bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// Number of puts since the key was created (1 after the first put).
    pub version: u64,
    /// The lease the key is bound to, if any; the key is deleted when the lease ends.
    pub lease: Option<LeaseId>,
}

/// One write operation, usable alone (as a [`Command`]) or inside a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// Bind the key to this lease (it must exist); `None` detaches it from any lease.
        lease: Option<LeaseId>,
        /// Return the previous key-value, if there was one.
        prev_kv: bool,
    },
    /// Delete one key, or every key starting with `key` when `prefix` is set.
    Delete {
        /// The key, or the prefix.
        key: String,
        /// Treat `key` as a prefix.
        prefix: bool,
        /// Return the deleted key-values.
        prev_kv: bool,
    },
    /// Read one key at the point of the transaction (reads never bump the revision).
    Get {
        /// The key.
        key: String,
    },
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value; a missing key has no value.
    Value(Vec<u8>),
    /// The `mod_revision`; a missing key has 0.
    ModRevision(Revision),
    /// The `version`; a missing key has 0.
    Version(u64),
}

/// How a [`Compare`] compares the key's field with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// The field equals the target.
    Equal,
    /// The field differs from the target.
    NotEqual,
    /// The field is greater than the target.
    Greater,
    /// The field is less than the target.
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key whose field is compared.
    pub key: String,
    /// The comparison.
    pub op: CompareOp,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
}

/// A transaction: if every compare holds, run `success`, otherwise run `failure`; atomically, at one
/// revision.
///
/// The chosen branch is validated before anything changes (a put naming an unknown lease rejects the
/// whole transaction). Its ops then run in order, so two ops on one key both apply (the key's version
/// grows twice) and a later `Get` sees an earlier `Put`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Ops run when every compare holds.
    pub success: Vec<Op>,
    /// Ops run otherwise.
    pub failure: Vec<Op>,
}

/// A command that goes through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A single put or delete (a `Get` is accepted and answered, but reads belong on the read path).
    Op(Op),
    /// A compare-and-set transaction.
    Txn(Txn),
    /// Create a lease. Its deadline lives on the leader (see [`crate::lease`]), not in the log.
    LeaseGrant {
        /// The new lease's id; must not exist yet.
        id: LeaseId,
        /// Time to live, in milliseconds, after each keep-alive.
        ttl_ms: u64,
    },
    /// End a lease on the client's request, deleting its keys.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// End leases whose deadline passed, deleting their keys; proposed by the leader. Unknown ids are
    /// ignored, because a lease may have been revoked while the expiry was in flight.
    LeaseExpire {
        /// The expired leases.
        ids: Vec<LeaseId>,
    },
}

impl Command {
    /// About how many bytes the command takes in the log: what a batch of commands is sized by.
    pub(crate) fn size_hint(&self) -> usize {
        const OVERHEAD: usize = 16;
        OVERHEAD
            + match self {
                Command::Op(op) => op.size_hint(),
                Command::Txn(txn) => {
                    let compares: usize = txn
                        .compares
                        .iter()
                        .map(|c| {
                            c.key.len()
                                + match &c.target {
                                    CompareTarget::Value(v) => v.len(),
                                    _ => 8,
                                }
                        })
                        .sum();
                    let ops = txn.success.iter().chain(&txn.failure).map(Op::size_hint);
                    compares + ops.sum::<usize>()
                }
                Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 16,
                Command::LeaseExpire { ids } => ids.len() * 8,
            }
    }
}

impl Op {
    fn size_hint(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len() + 8,
            Op::Delete { key, .. } | Op::Get { key } => key.len() + 2,
        }
    }
}

/// The result of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    /// A put; `prev` is set when asked for and the key existed.
    Put {
        /// The previous key-value.
        prev: Option<KeyValue>,
    },
    /// A delete.
    Delete {
        /// How many keys were deleted.
        deleted: u64,
        /// The deleted key-values, when asked for.
        prev: Vec<KeyValue>,
    },
    /// A read.
    Get {
        /// The key-value, if the key exists.
        kv: Option<KeyValue>,
    },
}

/// The result of an applied [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The store's revision after the command (unchanged if the command changed no key).
    pub revision: Revision,
    /// For a transaction: whether the compares held. `true` for every other command.
    pub succeeded: bool,
    /// One response per op that ran (empty for lease commands).
    pub responses: Vec<OpResponse>,
    /// Keys deleted because a lease ended (lease revoke and expire only).
    pub lease_deleted: Vec<String>,
}

/// Why a command was rejected. A rejected command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// A put named a lease that does not exist (never granted, revoked or expired).
    #[error("lease {id} not found")]
    LeaseNotFound {
        /// The lease.
        id: LeaseId,
    },
    /// A lease grant reused the id of a live lease.
    #[error("lease {id} already exists")]
    LeaseExists {
        /// The lease.
        id: LeaseId,
    },
    /// A lease grant asked for a zero TTL.
    #[error("lease {id} has a zero ttl")]
    ZeroTtl {
        /// The lease.
        id: LeaseId,
    },
}

/// What kind of change an [`Event`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change of one key, as seen by watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The revision of the command that made the change.
    pub revision: Revision,
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// The key-value before the change, if the key existed.
    pub prev: Option<KeyValue>,
}

/// The watch history no longer holds the asked-for revisions; the watcher must resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("watch history compacted up to revision {compacted_revision}")]
pub struct Compacted {
    /// Events at or below this revision are gone; resume from a read at the current revision.
    pub compacted_revision: Revision,
}

/// A page of a prefix range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePage {
    /// Key-values in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than the limit allowed.
    pub more: bool,
    /// The revision the read saw.
    pub revision: Revision,
}

/// A lease as the state machine knows it: its TTL and the keys bound to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Time to live in milliseconds.
    pub ttl_ms: u64,
    /// Keys bound to the lease.
    pub keys: BTreeSet<String>,
}

/// The whole replicated state: keys, leases, revision and watch history. Serializes for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvState {
    revision: Revision,
    kvs: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, LeaseInfo>,
    history: VecDeque<Event>,
    /// Every event with a revision at or below this one has been dropped from `history`.
    compacted: Revision,
    history_revisions: u64,
}

impl Default for KvState {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY_REVISIONS)
    }
}

impl KvState {
    /// An empty store that keeps events of the last `history_revisions` revisions.
    pub fn new(history_revisions: u64) -> Self {
        Self {
            revision: 0,
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            history_revisions,
        }
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The highest revision whose events were dropped from the watch history.
    pub fn compacted_revision(&self) -> Revision {
        self.compacted
    }

    /// Reads one key.
    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// Reads keys starting with `prefix`, in key order, at most `limit` of them (0 = no limit).
    pub fn range(&self, prefix: &str, limit: usize) -> RangePage {
        let mut iter = self
            .kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone());
        let kvs: Vec<KeyValue> = if limit == 0 {
            iter.by_ref().collect()
        } else {
            iter.by_ref().take(limit).collect()
        };
        let more = iter.next().is_some();
        RangePage {
            kvs,
            more,
            revision: self.revision,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    /// No keys at all.
    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }

    /// Live leases and their TTLs, for a new leader's lease clock.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &LeaseInfo)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Every event with a revision strictly greater than `after` whose key starts with `prefix`, in
    /// order. A watcher passes the last revision it has seen (or the revision of its initial read).
    ///
    /// Fails with [`Compacted`] when some of those events were already dropped.
    pub fn events_since(&self, after: Revision, prefix: &str) -> Result<Vec<Event>, Compacted> {
        if after < self.compacted {
            return Err(Compacted {
                compacted_revision: self.compacted,
            });
        }
        // History is sorted by revision: skip the old part with a binary search.
        let start = self.history.partition_point(|e| e.revision <= after);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect())
    }

    /// Applies one command. A rejected command changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, CommandError> {
        let next = self.revision + 1;
        let mut events = Vec::new();
        let outcome = match cmd {
            Command::Op(op) => {
                self.validate_ops(std::slice::from_ref(op))?;
                let resp = self.apply_op(op, next, &mut events);
                Outcome {
                    revision: 0,
                    succeeded: true,
                    responses: vec![resp],
                    lease_deleted: Vec::new(),
                }
            }
            Command::Txn(txn) => {
                let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
                let ops = if succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                // Validate the whole branch before touching anything, so it applies all or nothing.
                self.validate_ops(ops)?;
                let responses = ops
                    .iter()
                    .map(|op| self.apply_op(op, next, &mut events))
                    .collect();
                Outcome {
                    revision: 0,
                    succeeded,
                    responses,
                    lease_deleted: Vec::new(),
                }
            }
            Command::LeaseGrant { id, ttl_ms } => {
                if self.leases.contains_key(id) {
                    return Err(CommandError::LeaseExists { id: *id });
                }
                if *ttl_ms == 0 {
                    return Err(CommandError::ZeroTtl { id: *id });
                }
                self.leases.insert(
                    *id,
                    LeaseInfo {
                        ttl_ms: *ttl_ms,
                        keys: BTreeSet::new(),
                    },
                );
                Outcome::empty()
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(CommandError::LeaseNotFound { id: *id });
                }
                let lease_deleted = self.end_lease(*id, next, &mut events);
                Outcome {
                    lease_deleted,
                    ..Outcome::empty()
                }
            }
            Command::LeaseExpire { ids } => {
                let mut lease_deleted = Vec::new();
                for id in ids {
                    lease_deleted.extend(self.end_lease(*id, next, &mut events));
                }
                Outcome {
                    lease_deleted,
                    ..Outcome::empty()
                }
            }
        };
        if !events.is_empty() {
            self.revision = next;
            self.history.extend(events);
            self.compact_history();
        }
        Ok(Outcome {
            revision: self.revision,
            ..outcome
        })
    }

    fn validate_ops(&self, ops: &[Op]) -> Result<(), CommandError> {
        for op in ops {
            if let Op::Put {
                lease: Some(id), ..
            } = op
                && !self.leases.contains_key(id)
            {
                return Err(CommandError::LeaseNotFound { id: *id });
            }
        }
        Ok(())
    }

    fn compare_holds(&self, c: &Compare) -> bool {
        let kv = self.kvs.get(&c.key);
        let ordering = match &c.target {
            CompareTarget::Value(v) => match kv {
                Some(kv) => kv.value.cmp(v),
                // No value: equal to nothing, different from everything, neither greater nor less.
                None => return c.op == CompareOp::NotEqual,
            },
            CompareTarget::ModRevision(r) => kv.map_or(0, |kv| kv.mod_revision).cmp(r),
            CompareTarget::Version(v) => kv.map_or(0, |kv| kv.version).cmp(v),
        };
        match c.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Greater => ordering.is_gt(),
            CompareOp::Less => ordering.is_lt(),
        }
    }

    /// Applies a validated op at revision `rev`.
    fn apply_op(&mut self, op: &Op, rev: Revision, events: &mut Vec<Event>) -> OpResponse {
        match op {
            Op::Put {
                key,
                value,
                lease,
                prev_kv,
            } => {
                let prev = self.kvs.get(key).cloned();
                if let Some(old) = prev.as_ref().and_then(|p| p.lease)
                    && let Some(l) = self.leases.get_mut(&old)
                {
                    l.keys.remove(key);
                }
                if let Some(id) = lease
                    && let Some(l) = self.leases.get_mut(id)
                {
                    l.keys.insert(key.clone());
                }
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: *lease,
                };
                self.kvs.insert(key.clone(), kv);
                events.push(Event {
                    revision: rev,
                    kind: EventKind::Put,
                    key: key.clone(),
                    value: value.clone(),
                    prev: prev.clone(),
                });
                OpResponse::Put {
                    prev: if *prev_kv { prev } else { None },
                }
            }
            Op::Delete {
                key,
                prefix,
                prev_kv,
            } => {
                let keys: Vec<String> = if *prefix {
                    self.range(key, 0)
                        .kvs
                        .into_iter()
                        .map(|kv| kv.key)
                        .collect()
                } else if self.kvs.contains_key(key) {
                    vec![key.clone()]
                } else {
                    Vec::new()
                };
                let mut prev = Vec::new();
                for k in &keys {
                    if let Some(old) = self.delete_key(k, rev, events)
                        && *prev_kv
                    {
                        prev.push(old);
                    }
                }
                OpResponse::Delete {
                    deleted: keys.len() as u64,
                    prev,
                }
            }
            Op::Get { key } => OpResponse::Get {
                kv: self.kvs.get(key).cloned(),
            },
        }
    }

    fn delete_key(
        &mut self,
        key: &str,
        rev: Revision,
        events: &mut Vec<Event>,
    ) -> Option<KeyValue> {
        let old = self.kvs.remove(key)?;
        if let Some(id) = old.lease
            && let Some(l) = self.leases.get_mut(&id)
        {
            l.keys.remove(key);
        }
        events.push(Event {
            revision: rev,
            kind: EventKind::Delete,
            key: key.to_owned(),
            value: Vec::new(),
            prev: Some(old.clone()),
        });
        Some(old)
    }

    fn end_lease(&mut self, id: LeaseId, rev: Revision, events: &mut Vec<Event>) -> Vec<String> {
        let Some(lease) = self.leases.remove(&id) else {
            return Vec::new();
        };
        for key in &lease.keys {
            self.delete_key(key, rev, events);
        }
        lease.keys.into_iter().collect()
    }

    fn compact_history(&mut self) {
        let floor = self.revision.saturating_sub(self.history_revisions);
        if floor <= self.compacted {
            return;
        }
        while self.history.front().is_some_and(|e| e.revision <= floor) {
            self.history.pop_front();
        }
        self.compacted = floor;
    }
}

impl Outcome {
    fn empty() -> Self {
        Self {
            revision: 0,
            succeeded: true,
            responses: Vec::new(),
            lease_deleted: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
