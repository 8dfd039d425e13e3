//! A network partition, through a fault-injecting in-memory transport: the isolated leader (a
//! minority of one) cannot commit or serve a linearizable read, the majority elects a new leader
//! and commits, and after the partition heals the minority's write is discarded everywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use skynet_raft::state::{Command, Op};
use skynet_raft::{
    NodeId, RaftConfig, RaftNode, RaftNodeError, RpcHandler, RpcKind, Transport, TransportError,
};

const WAIT: Duration = Duration::from_secs(20);

/// The shared network: every member's handler, and the links that are cut.
#[derive(Default)]
struct Net {
    handlers: Mutex<HashMap<NodeId, RpcHandler>>,
    /// Directed links `(from, to)` that drop every message.
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
}

impl Net {
    /// Cuts every link between `side` and the other members, both ways.
    fn partition(&self, side: &BTreeSet<NodeId>, all: &BTreeSet<NodeId>) {
        let mut cut = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        for a in side {
            for b in all.difference(side) {
                cut.insert((*a, *b));
                cut.insert((*b, *a));
            }
        }
    }

    fn heal(&self) {
        self.cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// One member's end of the network: it knows who is sending, so a cut link can drop it.
struct Link {
    from: NodeId,
    net: Arc<Net>,
}

impl Transport for Link {
    async fn call(
        &self,
        target: NodeId,
        _addr: &str,
        _kind: RpcKind,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let unreachable = |reason: &str| TransportError::Unreachable {
            node: target,
            reason: reason.into(),
        };
        let cut = self
            .net
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(self.from, target));
        if cut {
            return Err(unreachable("partitioned"));
        }
        let handler = self
            .net
            .handlers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .cloned()
            .ok_or_else(|| unreachable("not connected"))?;
        let reply = handler
            .handle(&request)
            .await
            .map_err(|e| TransportError::Failed {
                node: target,
                reason: e.to_string(),
            })?;
        // A reply crossing a link cut while the request was in flight is lost too.
        let cut_back = self
            .net
            .cut
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(target, self.from));
        if cut_back {
            return Err(TransportError::Failed {
                node: target,
                reason: "partitioned".into(),
            });
        }
        Ok(reply)
    }
}

fn addr(id: NodeId) -> String {
    format!("node{id}.skynet:7000")
}

fn put(key: &str, value: &str) -> Command {
    Command::Op(Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: None,
        prev_kv: false,
    })
}

async fn start(net: &Arc<Net>, dir: &Path, id: NodeId) -> RaftNode {
    let link = Link {
        from: id,
        net: net.clone(),
    };
    let node = RaftNode::start(
        id,
        dir.join(format!("node{id}.redb")),
        &RaftConfig::default(),
        link,
    )
    .await
    .expect("member starts");
    net.handlers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, node.rpc_handler());
    node
}

fn local_value(node: &RaftNode, key: &str) -> Option<Vec<u8>> {
    node.local_read(|s| s.get(key).map(|kv| kv.value.clone()))
}

/// Members 1, 2 and 3, all voters, 1 leading, with `k` = `before` written; and their ids.
async fn three_voters(
    net: &Arc<Net>,
    dir: &Path,
) -> Result<(BTreeMap<NodeId, RaftNode>, BTreeSet<NodeId>), RaftNodeError> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(net, dir, id).await);
    }
    let all: BTreeSet<NodeId> = nodes.keys().copied().collect();
    nodes[&1].initialize([(1, addr(1))].into()).await?;
    nodes[&1].wait_for_leader(WAIT, |l| l == 1).await?;
    for id in [2, 3] {
        nodes[&1].add_learner(id, addr(id)).await?;
    }
    nodes[&1].change_membership(all.clone()).await?;
    nodes[&1].write(put("k", "before")).await?;
    Ok((nodes, all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_the_majority_can() -> Result<(), RaftNodeError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let net = Arc::new(Net::default());
    let (mut nodes, all) = three_voters(&net, dir.path()).await?;

    // Isolate the leader: it is a minority of one.
    let old = 1;
    net.partition(&BTreeSet::from([old]), &all);

    // The minority's write cannot commit: it stays pending.
    let minority_write = {
        let node = nodes.remove(&old).expect("the old leader");
        let node = Arc::new(node);
        let writer = node.clone();
        let task = tokio::spawn(async move { writer.write(put("k", "minority")).await });
        (node, task)
    };
    let (old_node, pending) = minority_write;
    // Nor can it confirm a linearizable read.
    match tokio::time::timeout(WAIT, old_node.linearizable_read(|_| ())).await {
        Ok(Err(RaftNodeError::NoQuorum { .. } | RaftNodeError::NotLeader { .. })) => {}
        other => panic!("the minority served a linearizable read: {other:?}"),
    }

    // The majority elects a new leader and commits.
    let new = nodes[&2].wait_for_leader(WAIT, |l| l != old).await?;
    let leader = &nodes[&new];
    leader.write(put("k", "majority")).await?;
    let seen = leader
        .linearizable_read(|s| s.get("k").map(|kv| kv.value.clone()))
        .await?;
    assert_eq!(seen.as_deref(), Some(&b"majority"[..]));
    assert!(
        !pending.is_finished(),
        "the minority's write must not complete while partitioned"
    );
    assert_eq!(local_value(&old_node, "k").as_deref(), Some(&b"before"[..]));

    // Heal: the old leader learns of the new term, its uncommitted entry is replaced, and the
    // write waiting on it is told to go to the leader.
    net.heal();
    match tokio::time::timeout(WAIT, pending).await {
        Ok(Ok(Err(RaftNodeError::NotLeader { .. }))) => {}
        other => panic!("the minority's write should be refused after healing: {other:?}"),
    }
    assert_eq!(old_node.wait_for_leader(WAIT, |l| l == new).await?, new);
    let everyone: Vec<&RaftNode> = nodes.values().chain([&*old_node]).collect();
    let mut watches: Vec<_> = everyone.iter().map(|n| n.watch("k2", 0)).collect();
    leader.write(put("k2", "after")).await?;
    for (node, watch) in everyone.iter().zip(&mut watches) {
        let events = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("every member applies the write after healing")?;
        assert_eq!(events[0].key, "k2");
        // Applied in log order, so the majority's value is there and the minority's is not.
        assert_eq!(local_value(node, "k").as_deref(), Some(&b"majority"[..]));
    }

    old_node.shutdown().await?;
    for node in nodes.values() {
        node.shutdown().await?;
    }
    Ok(())
}

/// A follower cut off from the others hears no leader, but the others do: it asks before it
/// stands (pre-vote), is refused, and so never raises its term. When the partition heals, the
/// leader keeps leading in the same term and the follower catches up. Without the pre-vote, it
/// stands every few hundred milliseconds while cut off, and its higher term deposes the leader
/// the moment it is heard again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_back_does_not_depose_the_leader() -> Result<(), RaftNodeError> {
    /// Long enough for several elections of a follower standing on its own timer (every
    /// 300–400 ms with the default config).
    const CUT_OFF: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let net = Arc::new(Net::default());
    let (nodes, all) = three_voters(&net, dir.path()).await?;
    let term = nodes[&1].metrics().term;

    net.partition(&BTreeSet::from([3]), &all);
    // An observation window, not a wait for an event: what is checked is that the cut-off
    // member does nothing disruptive while the majority goes on writing.
    let deadline = tokio::time::Instant::now() + CUT_OFF;
    let mut writes = 0;
    while tokio::time::Instant::now() < deadline {
        nodes[&1]
            .write(put("k", &format!("during {writes}")))
            .await?;
        writes += 1;
    }
    assert_eq!(
        nodes[&3].metrics().term,
        term,
        "the cut-off member stood for election"
    );

    net.heal();
    let mut watch = nodes[&3].watch("after", 0);
    nodes[&1].write(put("after", "healed")).await?;
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the member catches up after healing")?;
    for node in nodes.values() {
        let m = node.metrics();
        assert_eq!((m.leader, m.term), (Some(1), term), "member {}", m.id);
    }
    assert!(writes > 0);
    for node in nodes.values() {
        node.shutdown().await?;
    }
    Ok(())
}
