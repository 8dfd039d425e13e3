//! Leases end-to-end: keep-alives hold keys without touching the log, keys vanish once keep-alives
//! stop, and a new leader gives every lease a fresh TTL.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use skynet_raft::lease::KeepAliveError;
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

fn put_with_lease(key: &str, lease: Option<u64>) -> Command {
    Command::Op(Op::Put {
        key: key.into(),
        value: b"up".to_vec(),
        lease,
        prev_kv: false,
    })
}

fn has(node: &RaftNode, key: &str) -> bool {
    node.local_read(|s| s.get(key).is_some())
}

async fn wait_until_gone(node: &RaftNode, key: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while has(node, key) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps `lease` alive on `node` for `total`, one keep-alive per `every`.
async fn keep_alive_for(node: &RaftNode, lease: u64, total: Duration, every: Duration) {
    let end = tokio::time::Instant::now() + total;
    while tokio::time::Instant::now() < end {
        let ttl = node.keep_alive(lease).expect("lease kept alive");
        assert!(ttl > Duration::ZERO);
        tokio::time::sleep(every).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_while_kept_alive_and_vanish_after() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let node = start(&net, dir.path(), 1).await;
    node.initialize(BTreeMap::from([(1, addr(1))])).await?;
    node.wait_for_leader(WAIT, |l| l == 1).await?;

    node.write(Command::LeaseGrant { id: 7, ttl_ms: 800 })
        .await?;
    node.write(put_with_lease("svc/a", Some(7))).await?;
    node.write(put_with_lease("svc/b", None)).await?;
    // Metrics trail the write responses a little: wait until the log is fully applied.
    let deadline = tokio::time::Instant::now() + WAIT;
    let log_len = loop {
        let m = node.metrics();
        if m.last_applied.is_some() && m.last_applied == m.last_log_index {
            break m.last_log_index;
        }
        assert!(tokio::time::Instant::now() < deadline, "log never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // Twice the TTL with keep-alives: the key stays, and no log entry was written for them.
    keep_alive_for(
        &node,
        7,
        Duration::from_millis(1600),
        Duration::from_millis(150),
    )
    .await;
    assert!(has(&node, "svc/a"));
    assert_eq!(
        node.metrics().last_log_index,
        log_len,
        "keep-alives stay off the log"
    );

    wait_until_gone(&node, "svc/a").await;
    assert!(has(&node, "svc/b"), "keys without a lease stay");
    assert_eq!(node.local_read(|s| s.leases().count()), 0);
    assert!(matches!(
        node.keep_alive(7),
        Err(RaftNodeError::KeepAlive(
            KeepAliveError::NotFound { id: 7 } | KeepAliveError::Expired { id: 7 }
        ))
    ));
    assert!(matches!(
        node.keep_alive(99),
        Err(RaftNodeError::KeepAlive(KeepAliveError::NotFound {
            id: 99
        }))
    ));
    node.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_gives_leases_a_fresh_ttl() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = MemTransport::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(&net, dir.path(), id).await);
    }
    let members = (1..=3).map(|id| (id, addr(id))).collect();
    nodes[&1].initialize(members).await?;
    let leader = nodes[&1].wait_for_leader(WAIT, |_| true).await?;

    nodes[&leader]
        .write(Command::LeaseGrant {
            id: 1,
            ttl_ms: 1500,
        })
        .await?;
    nodes[&leader]
        .write(put_with_lease("members/a", Some(1)))
        .await?;
    let follower = *nodes.keys().find(|&&id| id != leader).expect("a follower");
    assert!(matches!(
        nodes[&follower].keep_alive(1),
        Err(RaftNodeError::NotLeader { leader: Some(l), .. }) if l == leader
    ));

    // The leader dies; its keep-alive deadlines die with it.
    let old = nodes.remove(&leader).expect("leader");
    net.unregister(leader);
    old.shutdown().await?;
    drop(old);

    let survivor = nodes.values().next().expect("a survivor");
    let new_leader = survivor.wait_for_leader(WAIT, |l| l != leader).await?;
    let new = &nodes[&new_leader];
    // A linearizable read waits until the new leader has applied everything committed before.
    let present = new
        .linearizable_read(|s| s.get("members/a").is_some())
        .await?;
    assert!(present, "the lease outlives the leader change");
    keep_alive_for(
        new,
        1,
        Duration::from_millis(600),
        Duration::from_millis(150),
    )
    .await;
    assert!(has(new, "members/a"));

    // The owner stops pinging: the new leader expires the lease.
    wait_until_gone(new, "members/a").await;
    for node in nodes.values() {
        node.shutdown().await?;
    }
    Ok(())
}
