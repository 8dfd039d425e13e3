//! Watches: every change under a prefix arrives once, in order, across a leader change; a watcher
//! that fell behind the kept history gets a clear error.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use skynet_raft::state::{Command, EventKind, Op};
use skynet_raft::{MemTransport, NodeId, RaftConfig, RaftNode, RaftNodeError, Watcher};

const WAIT: Duration = Duration::from_secs(10);

fn addr(id: NodeId) -> String {
    format!("node{id}.skynet:7000")
}

async fn start(net: &MemTransport, dir: &Path, id: NodeId, config: &RaftConfig) -> RaftNode {
    let node = RaftNode::start(id, dir.join(format!("node{id}.redb")), config, net.clone())
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

/// Collects events from `w` until `n` arrived.
async fn collect(w: &mut Watcher, n: usize) -> Vec<skynet_raft::state::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("events arrive")
            .expect("watch works");
        assert!(!batch.is_empty());
        out.extend(batch);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_prefix_changes_in_order() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let node = start(&net, dir.path(), 1, &RaftConfig::default()).await;
    node.initialize(BTreeMap::from([(1, addr(1))])).await?;
    node.wait_for_leader(WAIT, |l| l == 1).await?;

    let mut w = node.watch("svc/", 0);
    node.write(put("svc/a", "1")).await?;
    node.write(put("other/x", "1")).await?;
    node.write(put("svc/b", "1")).await?;
    node.write(Command::Op(Op::Delete {
        key: "svc/".into(),
        prefix: true,
        prev_kv: false,
    }))
    .await?;
    let events = collect(&mut w, 4).await;
    let seen: Vec<(u64, EventKind, &str)> = events
        .iter()
        .map(|e| (e.revision, e.kind, e.key.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, EventKind::Put, "svc/a"),
            (3, EventKind::Put, "svc/b"),
            (4, EventKind::Delete, "svc/a"),
            (4, EventKind::Delete, "svc/b"),
        ]
    );
    assert_eq!(w.revision(), 4);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_behind_compaction_gets_a_clear_error() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let config = RaftConfig {
        history_revisions: 2,
        ..RaftConfig::default()
    };
    let node = start(&net, dir.path(), 1, &config).await;
    node.initialize(BTreeMap::from([(1, addr(1))])).await?;
    node.wait_for_leader(WAIT, |l| l == 1).await?;
    for i in 0..5 {
        node.write(put("k", &i.to_string())).await?;
    }
    let mut w = node.watch("", 0);
    match w.next().await {
        Err(RaftNodeError::Compacted(c)) => assert_eq!(c.compacted_revision, 3),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // Resync: read, then watch from the read's revision.
    let rev = node.linearizable_read(|s| s.revision()).await?;
    let mut w = node.watch("", rev);
    node.write(put("k", "again")).await?;
    let events = collect(&mut w, 1).await;
    assert_eq!(events[0].revision, rev + 1);
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_a_follower_has_no_gap_across_a_leader_change() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let config = RaftConfig::default();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&net, dir.path(), id, &config).await);
    }
    nodes[&1]
        .initialize((1..=3).map(|id| (id, addr(id))).collect())
        .await?;
    let leader = nodes[&1].wait_for_leader(WAIT, |_| true).await?;
    let watcher_node = *nodes.keys().find(|&&id| id != leader).expect("follower");
    let mut w = nodes[&watcher_node].watch("cfg/", 0);

    for i in 1..=5 {
        nodes[&leader].write(put("cfg/k", &i.to_string())).await?;
    }
    let old = nodes.remove(&leader).expect("leader");
    net.unregister(leader);
    old.shutdown().await?;
    drop(old);

    let new_leader = nodes[&watcher_node]
        .wait_for_leader(WAIT, |l| l != leader)
        .await?;
    for i in 6..=10 {
        nodes[&new_leader]
            .write(put("cfg/k", &i.to_string()))
            .await?;
    }
    let events = collect(&mut w, 10).await;
    let values: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .collect();
    let want: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(values, want);
    let revs: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revs, (1..=10).collect::<Vec<u64>>());
    for node in nodes.values() {
        node.shutdown().await?;
    }
    Ok(())
}
