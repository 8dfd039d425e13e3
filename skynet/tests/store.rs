//! The config store on real nodes over QUIC with mutual TLS on loopback: bootstrap, joins,
//! forwarded writes, linearizable reads from every member, watches across members, failover,
//! and a node with a foreign certificate that cannot join.

use std::net::SocketAddr;
use std::time::Duration;

use skynet::{Node, NodeError, RpcConfig, Store, StoreConfig, StoreError};

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(20);

/// Defaults, except that dialing a node that is gone gives up quickly.
fn quick_config() -> RpcConfig {
    RpcConfig {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Nodes sharing one development CA; each member gets its own data directory.
struct Cluster {
    credentials: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        Self {
            credentials: tempfile::tempdir().expect("tempdir"),
            data: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn data_dir(&self, name: &str) -> std::path::PathBuf {
        self.data.path().join(name)
    }

    async fn start(&self, name: &str, store: StoreConfig) -> Result<Node, NodeError> {
        self.start_at(name, store, ([127, 0, 0, 1], 0).into()).await
    }

    async fn start_at(
        &self,
        name: &str,
        store: StoreConfig,
        bind: SocketAddr,
    ) -> Result<Node, NodeError> {
        Node::builder()
            .name(name)
            .bind(bind)
            .development_credentials(self.credentials.path())
            .config(quick_config())
            .store(store.join_timeout(WAIT))
            .start()
            .await
    }

    async fn bootstrap(&self, name: &str) -> Node {
        self.start(name, StoreConfig::bootstrap(self.data_dir(name)))
            .await
            .expect("bootstrap member starts")
    }

    async fn join(&self, name: &str, seeds: Vec<SocketAddr>) -> Node {
        self.start(name, StoreConfig::join(self.data_dir(name), seeds))
            .await
            .expect("member joins")
    }
}

/// A node that keeps no replica and reaches the store through `seeds`.
async fn client(cluster: &Cluster, name: &str, seeds: Vec<SocketAddr>) -> Node {
    Node::builder()
        .name(name)
        .development_credentials(cluster.credentials.path())
        .config(quick_config())
        .store(StoreConfig::client(seeds))
        .start()
        .await
        .expect("client node starts")
}

fn store(node: &Node) -> Store {
    node.store().expect("the node has a store")
}

async fn value(store: &Store, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(store.get(key).await?.map(|kv| kv.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_forward_writes_watch_and_fail_over() -> TestResult {
    let cluster = Cluster::new();
    let a = cluster.bootstrap("a").await;
    let b = cluster.join("b", vec![a.local_addr()]).await;
    // Joining through a member that is not the leader: the join is forwarded.
    let c = cluster.join("c", vec![b.local_addr()]).await;
    let nodes = [a.clone(), b.clone(), c.clone()];
    let stores: Vec<Store> = nodes.iter().map(store).collect();

    // Ids are distinct, and every member comes to see three voters.
    let ids: std::collections::BTreeSet<u64> = stores.iter().filter_map(Store::id).collect();
    assert_eq!(ids.len(), 3);
    for s in &stores {
        let status = s.wait_for(WAIT, |st| st.voters == ids).await?;
        assert!(status.leader.is_some());
    }

    // A watch on one follower, before a write made through the other follower, which forwards
    // it to the leader.
    let leader = stores[0].status().and_then(|s| s.leader).expect("a leader");
    let followers: Vec<&Store> = stores.iter().filter(|s| s.id() != Some(leader)).collect();
    let [writer, watcher] = followers[..] else {
        panic!("two followers expected, got {}", followers.len());
    };
    let mut watch = watcher.watch("cfg/", 0);
    let revision = writer.put("cfg/x", "1").await?;
    assert!(revision > 0);

    // Visible to a linearizable read on every member.
    for s in &stores {
        assert_eq!(value(s, "cfg/x").await?.as_deref(), Some(&b"1"[..]));
    }

    // The watch on another member sees it.
    let events = tokio::time::timeout(WAIT, watch.next()).await??;
    assert_eq!(events[0].key, "cfg/x");
    assert_eq!(events[0].value, b"1");
    assert_eq!(events[0].revision, revision);

    // Compare-and-set: a stale revision loses, the current one wins.
    assert!(!stores[1].compare_and_set("cfg/x", 0, "2").await?);
    assert!(stores[2].compare_and_set("cfg/x", revision, "2").await?);
    let (kvs, _) = stores[0].range("cfg/").await?;
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, b"2");

    // Lose the leader: the other two elect one and accept writes.
    let (gone, rest): (Vec<_>, Vec<_>) = nodes
        .iter()
        .zip(&stores)
        .partition(|(_, s)| s.id() == Some(leader));
    let (gone_node, _) = gone[0];
    gone_node.shutdown().await;
    for (_, s) in &rest {
        s.wait_for(WAIT, |st| st.leader.is_some_and(|l| l != leader))
            .await?;
    }
    rest[0].1.put("cfg/y", "after failover").await?;
    for (_, s) in &rest {
        assert_eq!(
            value(s, "cfg/y").await?.as_deref(),
            Some(&b"after failover"[..])
        );
    }
    // The watch on the surviving follower kept going across the leader change: the CAS, then
    // the write made after the failover.
    let mut keys = Vec::new();
    while keys.last().map(String::as_str) != Some("cfg/y") {
        let events = tokio::time::timeout(WAIT, watch.next()).await??;
        keys.extend(events.into_iter().map(|e| e.key));
    }
    assert_eq!(keys, ["cfg/x", "cfg/y"]);

    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarts_from_its_data_dir_and_catches_up() -> TestResult {
    let cluster = Cluster::new();
    let a = cluster.bootstrap("a").await;
    let b = cluster.join("b", vec![a.local_addr()]).await;
    let c = cluster.join("c", vec![a.local_addr()]).await;
    let (c_id, c_addr) = (store(&c).id(), c.local_addr());
    c.shutdown().await;
    drop(c);

    // The two others still form a quorum.
    let revision = store(&b).put("cfg/while-away", "x").await?;

    // Same data directory and address: same id, no new join, and it catches up from the log.
    let c = cluster
        .start_at(
            "c",
            StoreConfig::join(cluster.data_dir("c"), vec![a.local_addr()]),
            c_addr,
        )
        .await?;
    let sc = store(&c);
    assert_eq!(sc.id(), c_id);
    assert_eq!(sc.status().expect("a member").voters.len(), 3);
    let mut watch = sc.watch("cfg/", 0);
    let events = tokio::time::timeout(WAIT, watch.next()).await??;
    assert_eq!(events[0].key, "cfg/while-away");
    assert_eq!(events[0].revision, revision);
    assert_eq!(
        value(&sc, "cfg/while-away").await?.as_deref(),
        Some(&b"x"[..])
    );

    for node in [c, b, a] {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_kept_alive_from_any_member_and_revoked() -> TestResult {
    let cluster = Cluster::new();
    let a = cluster.bootstrap("a").await;
    let b = cluster.join("b", vec![a.local_addr()]).await;
    let sb = store(&b);
    let lease = sb.lease_grant(Duration::from_secs(30)).await?;
    sb.put_with_lease("svc/b", "here", lease).await?;
    assert!(sb.lease_keep_alive(lease).await? > Duration::ZERO);
    sb.lease_revoke(lease).await?;
    assert_eq!(value(&store(&a), "svc/b").await?, None);
    assert_eq!(sb.delete("svc/none").await?, 0);
    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_another_ca_cannot_join() -> TestResult {
    let cluster = Cluster::new();
    let a = cluster.bootstrap("a").await;

    let other_ca = tempfile::tempdir()?;
    let result = Node::builder()
        .name("intruder")
        .development_credentials(other_ca.path())
        .config(quick_config())
        .store(
            StoreConfig::join(cluster.data_dir("intruder"), vec![a.local_addr()])
                .join_timeout(Duration::from_secs(2)),
        )
        .start()
        .await;
    match result {
        Err(NodeError::Store(StoreError::Unreachable(_))) => {}
        other => panic!("the intruder must not join: {other:?}"),
    }
    // The cluster did not change.
    assert_eq!(store(&a).status().expect("a member").voters.len(), 1);
    a.shutdown().await;
    Ok(())
}

#[test]
fn store_config_is_validated() {
    let seed: SocketAddr = ([127, 0, 0, 1], 7000).into();
    assert!(StoreConfig::bootstrap("d").validate().is_ok());
    assert!(StoreConfig::join("d", vec![seed]).validate().is_ok());
    assert!(StoreConfig::join("d", vec![]).validate().is_err());
    assert!(StoreConfig::bootstrap("").validate().is_err());
    assert!(StoreConfig::bootstrap("d").voters(2).validate().is_err());
    assert!(
        StoreConfig::bootstrap("d")
            .timeout(Duration::ZERO)
            .validate()
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_node_uses_the_store_and_its_watch_survives_losing_a_member() -> TestResult {
    let cluster = Cluster::new();
    let a = cluster.bootstrap("a").await;
    let b = cluster.join("b", vec![a.local_addr()]).await;
    let c = cluster.join("c", vec![a.local_addr()]).await;
    let members = [a.clone(), b.clone(), c.clone()];
    store(&a).wait_for(WAIT, |st| st.voters.len() == 3).await?;

    // Seeds in an order that starts with a follower: requests are redirected to the leader.
    let app = client(
        &cluster,
        "app",
        vec![b.local_addr(), c.local_addr(), a.local_addr()],
    )
    .await;
    let s = store(&app);
    assert_eq!(s.id(), None);
    assert!(s.status().is_none());
    assert!(matches!(
        s.get_local("cfg/x"),
        Err(StoreError::NotMember(_))
    ));

    let mut watch = s.watch("cfg/", 0);
    let first = s.put("cfg/x", "1").await?;
    assert_eq!(value(&s, "cfg/x").await?.as_deref(), Some(&b"1"[..]));
    assert!(!s.compare_and_set("cfg/x", 0, "stale").await?);
    assert!(s.compare_and_set("cfg/x", first, "2").await?);
    let lease = s.lease_grant(Duration::from_secs(30)).await?;
    s.put_with_lease("cfg/leased", "v", lease).await?;
    assert!(s.lease_keep_alive(lease).await? > Duration::ZERO);
    s.lease_revoke(lease).await?;
    assert_eq!(value(&s, "cfg/leased").await?, None);

    // The watch sees the first four changes, then waits in a poll of the member that answered
    // the client last (the leader) while that member stops.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let events = tokio::time::timeout(WAIT, watch.next()).await??;
        seen.extend(events.into_iter().map(|e| (e.key, e.revision)));
    }
    let waiting = tokio::spawn(async move {
        let mut more = Vec::new();
        while more.last().map(|(k, _): &(String, u64)| k.as_str()) != Some("cfg/y") {
            let events = tokio::time::timeout(WAIT, watch.next()).await??;
            more.extend(events.into_iter().map(|e| (e.key, e.revision)));
        }
        Ok::<_, anyhow::Error>(more)
    });

    // Stop the leader: requests and the watch move on to the others.
    let leader = store(&a)
        .status()
        .and_then(|st| st.leader)
        .expect("a leader");
    let gone = members
        .iter()
        .find(|m| store(m).id() == Some(leader))
        .expect("the leader is a member");
    gone.shutdown().await;
    s.put("cfg/y", "after").await?;
    let (kvs, _) = s.range("cfg/").await?;
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["cfg/x", "cfg/y"]);

    // Every change, in order, once: put x, CAS x, put leased, delete leased (revoke), put y.
    seen.extend(waiting.await??);
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["cfg/x", "cfg/x", "cfg/leased", "cfg/leased", "cfg/y"]
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "revisions ascend: {seen:?}"
    );
    assert_eq!(seen[0].1, first);

    app.shutdown().await;
    for m in &members {
        m.shutdown().await;
    }
    Ok(())
}
