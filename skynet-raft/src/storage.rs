//! Durable openraft storage (storage-v2) on one redb file.
//!
//! Raft's safety rests on a few things being on disk *before* the node says so: a log entry before
//! `append`'s callback fires (the leader counts it towards a quorum), and the vote before `save_vote`
//! returns (otherwise a restarted node could vote twice in one term). Every write transaction here is
//! committed with redb's [`Durability::Immediate`] (fsync) before the callback or the return, which is
//! what "no acknowledged write is lost while a majority keeps its disk" needs.
//!
//! One database holds two tables:
//!
//! - `logs`: log index → encoded openraft entry;
//! - `meta`: `vote`, `committed`, `last_purged` and `snapshot` (the current snapshot's meta and
//!   bytes). Files written by earlier versions may also hold `sm`, a copy of the applied state.
//!
//! The state machine lives in memory (it is the read path) and is **not** written on each apply:
//! every applied entry is already durable in the log, so a restarted member loads its newest
//! snapshot and openraft re-applies the committed log after it (openraft's snapshot policy
//! bounds that tail, 5,000 entries by default). Writing the whole state per batch, as an earlier
//! version did, cost a serialization and an fsync of every key and the watch history on every
//! commit. The committed index is written without an fsync: it only tells a restarting member
//! how much it may re-apply before hearing from the leader, and a stale one is safe.
//!
//! The blocking redb calls run on the calling async task. openraft drives storage from its own task,
//! so this stalls only that task's worker thread for the length of one fsync.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::state::{Command, CommandError, KvState, Outcome, Revision};

/// A member's identity as openraft sees it: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeAddr {
    /// The member's network address (`host:port`).
    pub(crate) addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response {
    /// A blank or membership entry: nothing for a client.
    Empty,
    /// The entry's commands, in order: each applied, or rejected having changed nothing.
    Applied(Vec<Result<Outcome, CommandError>>),
}

openraft::declare_raft_types!(
    /// skynet-raft's openraft type configuration. A normal entry carries a batch of commands
    /// (group commit, see `node`), applied in order as if each had an entry of its own.
    pub(crate) TypeConfig:
        D = Vec<Command>,
        R = Response,
        NodeId = u64,
        Node = NodeAddr,
);

type NodeId = u64;
type StResult<T> = Result<T, StorageError<NodeId>>;

const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_SM: &str = "sm";
const KEY_SNAPSHOT: &str = "snapshot";

/// A failure of the underlying database or codec; openraft sees it as a [`StorageError`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Boxed: redb's error is large and would bloat every `Result` on the hot path.
    #[error("redb: {0}")]
    Redb(Box<redb::Error>),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The applied state: what the state machine persists and what a snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SmData {
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) last_membership: StoredMembership<NodeId, NodeAddr>,
    pub(crate) kv: KvState,
}

/// A snapshot as stored in `meta`: its meta and the encoded [`SmData`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeAddr>,
    data: Vec<u8>,
}

/// Opens (or creates) the store at `path` and returns its two halves.
pub(crate) fn open(
    path: impl AsRef<Path>,
    kv: KvState,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = Arc::new(Database::create(path)?);
    // Create both tables up front: opening a missing table in a read transaction is an error.
    let tx = db.begin_write()?;
    tx.open_table(LOGS)?;
    let sm = {
        let meta = tx.open_table(META)?;
        let snapshot = match meta.get(KEY_SNAPSHOT)? {
            Some(bytes) => {
                let stored = codec::decode::<StoredSnapshot>(bytes.value())?;
                Some(snapshot_state(&stored.meta, &stored.data)?)
            }
            None => None,
        };
        // A file of an earlier version may hold a newer applied state than its snapshot.
        let legacy = match meta.get(KEY_SM)? {
            Some(bytes) => Some(codec::decode::<SmData>(bytes.value())?),
            None => None,
        };
        match (snapshot, legacy) {
            (Some(s), Some(l)) if l.last_applied > s.last_applied => l,
            (Some(s), _) => s,
            (None, Some(l)) => l,
            (None, None) => SmData {
                kv,
                ..SmData::default()
            },
        }
    };
    tx.commit()?;
    let log = LogStore { db: db.clone() };
    let (revision, _) = tokio::sync::watch::channel(sm.kv.revision());
    let sm = StateMachineStore {
        db,
        data: Arc::new(RwLock::new(sm)),
        revision,
    };
    Ok((log, sm))
}

fn write_tx(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut tx = db.begin_write()?;
    // The default in redb 2, set explicitly because correctness depends on it.
    tx.set_durability(Durability::Immediate);
    Ok(tx)
}

/// The state a snapshot holds; its meta is authoritative for what it covers.
fn snapshot_state(
    meta: &SnapshotMeta<NodeId, NodeAddr>,
    bytes: &[u8],
) -> Result<SmData, StoreError> {
    let mut state: SmData = codec::decode(bytes)?;
    state.last_applied = meta.last_log_id;
    state.last_membership = meta.last_membership.clone();
    Ok(state)
}

fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> Result<(), StoreError> {
    put_meta_with(db, key, value, Durability::Immediate)
}

fn put_meta_with<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: Durability,
) -> Result<(), StoreError> {
    let bytes = codec::encode(value)?;
    let mut tx = write_tx(db)?;
    tx.set_durability(durability);
    tx.open_table(META)?.insert(key, bytes.as_slice())?;
    tx.commit()?;
    Ok(())
}

fn get_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let tx = db.begin_read()?;
    let table = tx.open_table(META)?;
    let found = table.get(key)?;
    Ok(match found {
        Some(bytes) => Some(codec::decode(bytes.value())?),
        None => None,
    })
}

// ===== LogStore =====

/// The Raft log, vote and commit index.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOGS)?;
        let mut out = Vec::new();
        for item in table.range(range)? {
            let (_, v) = item?;
            out.push(codec::decode(v.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.db, KEY_LAST_PURGED)?;
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LOGS)?;
        let last = match table.last()? {
            Some((_, v)) => Some(codec::decode::<Entry<TypeConfig>>(v.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<(), StoreError> {
        let tx = write_tx(&self.db)?;
        {
            let mut table = tx.open_table(LOGS)?;
            for entry in entries {
                table.insert(entry.log_id.index, codec::encode(&entry)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes entries with index >= `from`.
    fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        let tx = write_tx(&self.db)?;
        tx.open_table(LOGS)?.retain_in(from.., |_, _| false)?;
        tx.commit()?;
        Ok(())
    }

    /// Records `upto` as purged and deletes entries up to and including it, atomically.
    fn purge_upto(&self, upto: &LogId<NodeId>) -> Result<(), StoreError> {
        let bytes = codec::encode(upto)?;
        let tx = write_tx(&self.db)?;
        tx.open_table(META)?
            .insert(KEY_LAST_PURGED, bytes.as_slice())?;
        tx.open_table(LOGS)?
            .retain_in(..=upto.index, |_, _| false)?;
        tx.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        self.entries(range)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        self.log_state()
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        put_meta(&self.db, KEY_VOTE, vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        get_meta(&self.db, KEY_VOTE).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        // Not fsync'd (see the module docs): the next durable commit carries it to disk.
        put_meta_with(&self.db, KEY_COMMITTED, &committed, Durability::None)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        get_meta::<Option<LogId<NodeId>>>(&self.db, KEY_COMMITTED)
            .map(Option::flatten)
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // The commit above fsyncs: only then may openraft count these entries as stored.
        match self.append_entries(entries) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        self.truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        self.purge_upto(&log_id)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

// ===== StateMachineStore =====

/// The applied key-value state, in memory and written through to disk.
pub(crate) struct StateMachineStore {
    db: Arc<Database>,
    data: Arc<RwLock<SmData>>,
    /// The applied revision, published after each durable apply so watchers wake up.
    revision: tokio::sync::watch::Sender<Revision>,
}

impl StateMachineStore {
    /// A shared handle on the applied state, for local reads.
    pub(crate) fn data(&self) -> Arc<RwLock<SmData>> {
        self.data.clone()
    }

    /// Wakes up on every change of the applied revision.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.revision.subscribe()
    }

    fn publish(&self, revision: Revision) {
        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, StoreError> {
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(cmds) => {
                    Response::Applied(cmds.iter().map(|cmd| data.kv.apply(cmd)).collect())
                }
                EntryPayload::Membership(m) => {
                    data.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::Empty
                }
            });
        }
        // Every applied entry is committed and in this member's durable log: a crash cannot
        // undo what a watcher sees here (a restart re-applies it).
        self.publish(data.kv.revision());
        Ok(out)
    }

    fn install(
        &self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let new = snapshot_state(meta, &bytes)?;
        let snap_bytes = codec::encode(&StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        })?;
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        let tx = write_tx(&self.db)?;
        {
            let mut t = tx.open_table(META)?;
            t.remove(KEY_SM)?;
            t.insert(KEY_SNAPSHOT, snap_bytes.as_slice())?;
        }
        tx.commit()?;
        *data = new;
        self.publish(data.kv.revision());
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        Ok(
            get_meta::<StoredSnapshot>(&self.db, KEY_SNAPSHOT)?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }),
        )
    }
}

/// Builds a snapshot from the state machine's current state.
pub(crate) struct SnapshotBuilder {
    db: Arc<Database>,
    data: Arc<RwLock<SmData>>,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (bytes, meta) = {
            let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
            let snapshot_id = match &data.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => "empty".to_owned(),
            };
            let meta = SnapshotMeta {
                last_log_id: data.last_applied,
                last_membership: data.last_membership.clone(),
                snapshot_id,
            };
            (codec::encode(&*data)?, meta)
        };
        let stored = codec::encode(&StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        })?;
        let tx = write_tx(&self.db)?;
        {
            let mut table = tx.open_table(META)?;
            // The state lock is released during the write, so a snapshot installed meanwhile may
            // already be stored; never replace it with this older one.
            let newer_stored = match table.get(KEY_SNAPSHOT)? {
                Some(old) => {
                    codec::decode::<StoredSnapshot>(old.value())?
                        .meta
                        .last_log_id
                        > meta.last_log_id
                }
                None => false,
            };
            if !newer_stored {
                table.insert(KEY_SNAPSHOT, stored.as_slice())?;
                // This snapshot is at least as new as an earlier version's copy of the state.
                table.remove(KEY_SM)?;
            }
        }
        tx.commit()?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        self.build()
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>)> {
        let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.data.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        self.install(meta, snapshot.into_inner())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests;
