use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{CommittedLeaderId, Membership, RaftLogReader};
use tempfile::TempDir;

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;
use crate::state::Op;

/// Each suite case gets a fresh directory; the guard keeps it alive until the case ends.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> StResult<(TempDir, LogStore, StateMachineStore)> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open(dir.path().join("raft.redb"), KvState::default())
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> TestResult {
    Suite::test_all(Builder)?;
    Ok(())
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload,
    }
}

fn put(key: &str, value: &str) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(vec![Command::Op(Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: None,
        prev_kv: false,
    })])
}

/// Appends through the public trait, waiting for the flush callback like openraft does.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) -> TestResult {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await?;
    Ok(())
}

#[tokio::test]
async fn reopened_store_has_the_same_log_vote_and_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    let membership = Membership::new(vec![[1u64].into_iter().collect()], None);
    let entries = vec![
        entry(1, 1, EntryPayload::Membership(membership.clone())),
        entry(1, 2, put("a", "1")),
        entry(1, 3, put("b", "2")),
        entry(2, 4, put("a", "3")),
    ];
    let vote = Vote::new_committed(2, 1);
    {
        let (mut log, mut sm) = open(&path, KvState::default())?;
        append(&mut log, entries.clone()).await?;
        log.save_vote(&vote).await?;
        log.save_committed(Some(log_id(2, 1, 4))).await?;
        let replies = sm.apply(entries[..2].to_vec()).await?;
        assert_eq!(replies.len(), 2);
        // A snapshot covers the first two entries; the log before it may go.
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await?;
        log.purge(log_id(1, 1, 1)).await?;
        // Applied but in no snapshot: the state is not written, the log has it.
        let replies = sm.apply(entries[2..3].to_vec()).await?;
        assert!(
            matches!(&replies[0], Response::Applied(o) if matches!(o[..], [Ok(ref o)] if o.revision == 2))
        );
    }
    // Everything is dropped: the file lock is released, as after a process restart.
    let (mut log, mut sm) = open(&path, KvState::default())?;
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(2, 1, 4)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 4)));
    let got = log.try_get_log_entries(0..10).await?;
    assert_eq!(got, entries[1..].to_vec());

    // The state comes back from the snapshot; what was applied after it is re-applied from the
    // log, as openraft does on start for everything up to the committed index.
    let (applied, stored) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id(1, 1, 2)));
    assert_eq!(stored.membership(), &membership);
    {
        let data = sm.data();
        let data = data.read().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(data.kv.revision(), 1);
        assert_eq!(
            data.kv.get("a").map(|kv| kv.value.clone()),
            Some(b"1".to_vec())
        );
        assert_eq!(data.kv.get("b"), None);
    }
    sm.apply(entries[2..].to_vec()).await?;
    let data = sm.data();
    let data = data.read().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(
        data.kv.get("a").map(|kv| kv.value.clone()),
        Some(b"3".to_vec())
    );
    Ok(())
}

#[tokio::test]
async fn snapshot_survives_restart_and_installs_elsewhere() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a.redb"), dir.path().join("b.redb"));
    let meta = {
        let (_log, mut sm) = open(&a, KvState::default())?;
        sm.apply(vec![
            entry(1, 1, put("k", "v")),
            entry(1, 2, put("k2", "v2")),
        ])
        .await?;
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 2)));
        snap.meta
    };
    let (_log, mut sm) = open(&a, KvState::default())?;
    let snap = sm
        .get_current_snapshot()
        .await?
        .expect("snapshot persisted across restart");
    assert_eq!(snap.meta, meta);

    let (_log_b, mut sm_b) = open(&b, KvState::default())?;
    sm_b.install_snapshot(&snap.meta, snap.snapshot).await?;
    assert_eq!(sm_b.applied_state().await?.0, Some(log_id(1, 1, 2)));
    drop(sm_b);
    drop(_log_b);
    let (_log_b, sm_b) = open(&b, KvState::default())?;
    let data = sm_b.data();
    let data = data.read().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(
        data.kv.get("k2").map(|kv| kv.value.clone()),
        Some(b"v2".to_vec())
    );
    assert_eq!(
        data.last_applied,
        Some(LogId::new(CommittedLeaderId::new(1, 1), 2))
    );
    Ok(())
}

#[tokio::test]
async fn rejected_command_is_reported_not_fatal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_log, mut sm) = open(dir.path().join("r.redb"), KvState::default())?;
    let replies = sm
        .apply(vec![entry(
            1,
            1,
            EntryPayload::Normal(vec![Command::LeaseRevoke { id: 9 }]),
        )])
        .await?;
    assert_eq!(
        replies,
        vec![Response::Applied(vec![Err(CommandError::LeaseNotFound {
            id: 9
        })])]
    );
    assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 1, 1)));
    Ok(())
}
