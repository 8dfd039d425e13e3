//! A 3-member cluster over the in-memory transport, each member on its own redb file: bootstrap,
//! grow by learners, write, read, lose the leader, elect a new one, keep writing, and bring the old
//! leader back from its disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use skynet_raft::state::{Command, Op};
use skynet_raft::{MemTransport, NodeId, RaftConfig, RaftNode, RaftNodeError};

const WAIT: Duration = Duration::from_secs(10);

fn addr(id: NodeId) -> String {
    format!("node{id}.skynet:7000")
}

async fn start(net: &MemTransport, dir: &Path, id: NodeId) -> RaftNode {
    let node = RaftNode::start(
        id,
        dir.join(format!("node{id}.redb")),
        &RaftConfig::default(),
        net.clone(),
    )
    .await
    .expect("member starts");
    net.register(id, node.rpc_handler());
    node
}

fn put(key: &str, value: &str) -> Command {
    Command::Op(Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: None,
        prev_kv: false,
    })
}

fn local_value(node: &RaftNode, key: &str) -> Option<Vec<u8>> {
    node.local_read(|s| s.get(key).map(|kv| kv.value.clone()))
}

/// Polls a member's local state until `key` holds `value`: replication to followers is asynchronous.
async fn wait_for_value(node: &RaftNode, key: &str, value: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while local_value(node, key).as_deref() != Some(value.as_bytes()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} never saw {key}={value}",
            node.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_write_read_and_fail_over() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&net, dir.path(), id).await);
    }

    // Bootstrap on node 1 alone, then grow through learners (the join path).
    let n1 = &nodes[&1];
    n1.initialize([(1, addr(1))].into()).await?;
    n1.initialize([(1, addr(1))].into()).await?; // idempotent
    assert_eq!(n1.wait_for_leader(WAIT, |l| l == 1).await?, 1);
    n1.add_learner(2, addr(2)).await?;
    n1.change_membership(BTreeSet::from([1, 2])).await?;

    let out = n1.write(put("config/route", "v1")).await?;
    assert_eq!(out.revision, 1);
    n1.write(put("config/early", "x")).await?;

    // Compact, so node 3 can only catch up through a full snapshot over the transport.
    let upto = n1.compact(WAIT).await?;
    assert!(upto >= 1);
    n1.wait_for(WAIT, "the log purged", |m| m.purged >= Some(upto))
        .await?;
    n1.add_learner(3, addr(3)).await?;
    n1.change_membership(BTreeSet::from([1, 2, 3])).await?;
    n1.wait_for(WAIT, "three voters", |m| {
        m.voters == BTreeSet::from([1, 2, 3])
    })
    .await?;
    wait_for_value(&nodes[&3], "config/early", "x").await;
    // The installed snapshot's data is readable a moment before the member's metrics name it.
    nodes[&3]
        .wait_for(WAIT, "node 3 caught up from the snapshot", |m| {
            m.snapshot == Some(upto)
        })
        .await?;
    let got = n1
        .linearizable_read(|s| s.get("config/route").map(|kv| kv.value.clone()))
        .await?;
    assert_eq!(got.as_deref(), Some(&b"v1"[..]));
    for id in [2, 3] {
        wait_for_value(&nodes[&id], "config/route", "v1").await;
    }

    // A follower refuses writes and names the leader.
    match nodes[&2].write(put("x", "y")).await {
        Err(RaftNodeError::NotLeader {
            leader: Some(1),
            leader_addr,
        }) => assert_eq!(leader_addr, Some(addr(1))),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // The leader dies.
    let old = nodes.remove(&1).expect("node 1");
    net.unregister(1);
    old.shutdown().await?;
    drop(old);

    let n2 = &nodes[&2];
    let leader = n2.wait_for_leader(WAIT, |l| l != 1).await?;
    let new_leader = &nodes[&leader];
    let out = new_leader.write(put("config/route", "v2")).await?;
    assert!(out.revision >= 2);
    let got = new_leader
        .linearizable_read(|s| s.get("config/route").map(|kv| kv.value.clone()))
        .await?;
    assert_eq!(got.as_deref(), Some(&b"v2"[..]));

    // The old leader restarts from its disk, rejoins without initialize, and catches up.
    let back = start(&net, dir.path(), 1).await;
    assert_eq!(
        local_value(&back, "config/route").as_deref(),
        Some(&b"v1"[..])
    );
    wait_for_value(&back, "config/route", "v2").await;
    assert_eq!(back.wait_for_leader(WAIT, |l| l == leader).await?, leader);

    back.shutdown().await?;
    for node in nodes.values() {
        node.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn invalid_timing_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = RaftConfig {
        heartbeat_interval: Duration::from_millis(1000),
        ..RaftConfig::default()
    };
    let res = RaftNode::start(1, dir.path().join("n.redb"), &config, MemTransport::new()).await;
    assert!(matches!(res, Err(RaftNodeError::Config { .. })));
}

/// Writes that arrive together share log entries (group commit), yet each is applied on its own:
/// its own revision, its own result, a rejected one next to accepted ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_keep_their_own_results() -> Result<(), RaftNodeError> {
    const WRITES: u64 = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let node = std::sync::Arc::new(start(&net, dir.path(), 1).await);
    node.initialize([(1, addr(1))].into()).await?;
    node.wait_for_leader(WAIT, |l| l == 1).await?;
    let before = node.metrics().last_log_index.unwrap_or(0);

    let mut writes = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let node = node.clone();
        writes.spawn(async move { node.write(put(&format!("k{i}"), "v")).await });
    }
    let rejected = node.write(Command::LeaseRevoke { id: 999 }).await;
    assert_eq!(
        rejected,
        Err(RaftNodeError::Rejected(
            skynet_raft::state::CommandError::LeaseNotFound { id: 999 }
        ))
    );
    let mut revisions = BTreeSet::new();
    while let Some(done) = writes.join_next().await {
        let outcome = done.expect("write task")?;
        assert!(revisions.insert(outcome.revision), "revisions are unique");
    }
    assert_eq!(revisions, (1..=WRITES).collect::<BTreeSet<_>>());
    let entries = node.metrics().last_log_index.unwrap_or(0) - before;
    assert!(
        entries < WRITES,
        "{WRITES} concurrent writes took {entries} log entries: no batching"
    );
    node.shutdown().await
}

/// A member that catches up on many entries gets them in requests the transport can carry: a
/// request over the transport's limit is never sent, openraft sends fewer entries instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_respects_the_transport_request_limit() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new().with_max_request_len(16 << 10);
    let n1 = start(&net, dir.path(), 1).await;
    n1.initialize([(1, addr(1))].into()).await?;
    n1.wait_for_leader(WAIT, |l| l == 1).await?;
    let value = "x".repeat(1024);
    for i in 0..64 {
        n1.write(put(&format!("k{i}"), &value)).await?;
    }
    let n2 = start(&net, dir.path(), 2).await;
    // 64 entries of 1 KiB do not fit one 16 KiB request.
    tokio::time::timeout(WAIT, n1.add_learner(2, addr(2)))
        .await
        .map_err(|_| RaftNodeError::Timeout {
            what: "the learner to catch up".into(),
        })??;
    wait_for_value(&n2, "k63", &value).await;
    n2.shutdown().await?;
    n1.shutdown().await
}

/// A command over `max_command_bytes` is refused before it reaches the log, with its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_is_refused_and_nothing_changes() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let node = start(&net, dir.path(), 1).await;
    node.initialize([(1, addr(1))].into()).await?;
    node.wait_for_leader(WAIT, |l| l == 1).await?;
    let limit = RaftConfig::default().max_command_bytes;
    let big = "x".repeat(limit + 1);
    match node.write(put("big", &big)).await {
        Err(RaftNodeError::TooLarge { size, limit: l }) => {
            assert!(size > limit);
            assert_eq!(l, limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(local_value(&node, "big"), None);
    assert_eq!(node.write(put("small", "v")).await?.revision, 1);
    node.shutdown().await
}
