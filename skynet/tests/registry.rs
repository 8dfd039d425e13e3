//! The registry on real nodes over QUIC on loopback: registration, the live view, calls by name
//! balanced over instances, unregistering, version requirements, graceful shutdown under load
//! with no failed call, and the typed "no instance" error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skynet::{CallError, Node, RpcConfig, ServiceDef, ServiceError, StoreConfig};

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    credentials: tempfile::TempDir,
    data: tempfile::TempDir,
    seed: Node,
}

impl Cluster {
    /// One store member; every other node is a store client of it.
    async fn new() -> anyhow::Result<Self> {
        let credentials = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let seed = Node::builder()
            .name("seed")
            .development_credentials(credentials.path())
            .store(StoreConfig::bootstrap(data.path().join("seed")))
            .start()
            .await?;
        Ok(Self {
            credentials,
            data,
            seed,
        })
    }

    fn builder(&self, name: &str) -> skynet::NodeBuilder {
        Node::builder()
            .name(name)
            .development_credentials(self.credentials.path())
            .config(RpcConfig {
                connect_timeout: Duration::from_millis(500),
                ..Default::default()
            })
            .store(StoreConfig::client(vec![self.seed.local_addr()]))
    }

    /// A node hosting `echo` 1.2.0: `who` (idempotent) answers the node's name, `put` (not
    /// idempotent) too.
    async fn instance(&self, name: &str) -> anyhow::Result<Node> {
        let (a, b) = (name.to_owned(), name.to_owned());
        let echo = ServiceDef::builder("echo", "1.2.0")
            .idempotent_method("who", move |_, _: ()| {
                let name = a.clone();
                async move { Ok::<_, ServiceError>(name) }
            })
            .method("put", move |_, _: u64| {
                let name = b.clone();
                async move { Ok::<_, ServiceError>(name) }
            });
        Ok(self.builder(name).service(echo).start().await?)
    }

    async fn caller(&self) -> anyhow::Result<Node> {
        Ok(self.builder("caller").start().await?)
    }
}

/// Waits until `caller` sees exactly `n` registered instances of echo.
async fn wait_registered(caller: &Node, n: usize) -> anyhow::Result<()> {
    let registry = caller
        .registry()
        .expect("a node with a store has a registry");
    registry
        .wait_for(WAIT, |s| {
            s.instances("echo").iter().filter(|i| i.registered).count() == n
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("never saw {n} registered instances"))?;
    Ok(())
}

async fn who(caller: &Node) -> Result<String, CallError> {
    caller.client("echo").call("who", ()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_by_name_spread_over_instances_and_follow_registration() -> TestResult {
    let cluster = Cluster::new().await?;
    let nodes = [
        cluster.instance("i1").await?,
        cluster.instance("i2").await?,
        cluster.instance("i3").await?,
    ];
    let caller = cluster.caller().await?;
    wait_registered(&caller, 3).await?;

    // The records say what the instances are.
    let instances = caller.registry().expect("registry").instances("echo");
    let mut addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    addrs.sort();
    let mut expected: Vec<SocketAddr> = nodes.iter().map(Node::local_addr).collect();
    expected.sort();
    assert_eq!(addrs, expected);
    for i in instances.iter() {
        assert_eq!(i.version, semver::Version::new(1, 2, 0));
        assert_eq!(i.methods, ["put", "who"]);
        assert_eq!(i.idempotent, ["who"]);
        assert_eq!(i.region, "unknown");
    }

    // Concurrent calls by name reach every instance: the balancer weighs calls in flight.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let mut names = Vec::new();
                for _ in 0..30 {
                    names.push(who(&caller).await?);
                }
                Ok::<_, CallError>(names)
            })
        })
        .collect();
    let mut served: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for name in task.await?? {
            *served.entry(name).or_default() += 1;
        }
    }
    assert_eq!(served.len(), 3, "every instance served: {served:?}");
    assert!(served.values().all(|&n| n >= 10), "spread: {served:?}");

    // An unregistered instance stays up but takes no new traffic.
    assert!(nodes[0].set_registered("echo", false).await?);
    assert!(!nodes[0].set_registered("nope", false).await?);
    wait_registered(&caller, 2).await?;
    for _ in 0..100 {
        assert_ne!(who(&caller).await?, "i1");
    }
    // Directly addressed, it still answers.
    let direct = caller
        .client("echo")
        .at(nodes[0].local_addr())
        .call::<(), String, ServiceError>("who", ())
        .await?;
    assert_eq!(direct, "i1");
    assert!(nodes[0].set_registered("echo", true).await?);
    wait_registered(&caller, 3).await?;

    // Version requirements.
    let v1: String = caller
        .client("echo")
        .with_version(semver::VersionReq::parse("^1.2")?)
        .call::<(), String, ServiceError>("who", ())
        .await?;
    assert!(v1.starts_with('i'));
    let v2 = caller
        .client("echo")
        .with_version(semver::VersionReq::parse(">=2")?)
        .call::<(), String, ServiceError>("who", ())
        .await;
    match v2 {
        Err(CallError::NoInstance { service, version }) => {
            assert_eq!(service, "echo");
            assert_eq!(version.as_deref(), Some(">=2"));
        }
        other => panic!("expected NoInstance, got {other:?}"),
    }
    let unknown = caller
        .client("nobody-hosts-this")
        .call::<(), String, ServiceError>("who", ())
        .await;
    assert!(
        matches!(unknown, Err(CallError::NoInstance { ref service, .. }) if service == "nobody-hosts-this"),
        "{unknown:?}"
    );

    caller.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
    cluster.seed.shutdown().await;
    drop(cluster.data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_fails_no_call_and_the_last_leaves_no_instance() -> TestResult
{
    let cluster = Cluster::new().await?;
    let i1 = cluster.instance("i1").await?;
    let i2 = cluster.instance("i2").await?;
    let caller = cluster.caller().await?;
    wait_registered(&caller, 2).await?;

    // Steady load of both kinds of call, idempotent or not, from several tasks.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for task in 0..8u64 {
        let (caller, stop) = (caller.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let result: Result<String, CallError> = if task % 2 == 0 {
                    caller.client("echo").call("who", ()).await
                } else {
                    caller.client("echo").call("put", calls).await
                };
                result?;
                calls += 1;
            }
            Ok::<_, CallError>(calls)
        }));
    }
    // Let the load reach both instances, then stop one gracefully in the middle of it.
    tokio::time::timeout(WAIT, async {
        while who(&caller).await? != "i1" {}
        Ok::<_, CallError>(())
    })
    .await??;
    i1.shutdown().await;
    wait_registered(&caller, 1).await?;
    let registry = caller.registry().expect("registry");
    registry
        .wait_for(WAIT, |s| s.instances("echo").len() == 1)
        .await
        .ok_or_else(|| anyhow::anyhow!("i1's record was not removed"))?;
    for _ in 0..50 {
        assert_eq!(who(&caller).await?, "i2");
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in load {
        total += task.await??;
    }
    assert!(total > 0);

    // The last instance goes: callers get the typed error, naming the service.
    i2.shutdown().await;
    registry
        .wait_for(WAIT, |s| s.instances("echo").is_empty())
        .await
        .ok_or_else(|| anyhow::anyhow!("i2's record was not removed"))?;
    let err = who(&caller).await.expect_err("no instance is left");
    assert!(
        matches!(err, CallError::NoInstance { ref service, .. } if service == "echo"),
        "{err:?}"
    );
    assert!(err.to_string().contains("echo"));

    caller.shutdown().await;
    cluster.seed.shutdown().await;
    Ok(())
}

/// Stopping with the config store down: the node refuses new calls at once with the typed
/// `Stopping` error (not an answer, not a timeout), finishes the call it had accepted, and is
/// done within its shutdown grace instead of waiting out the store's timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_store_is_down_refuses_calls_at_once_and_stops_within_its_grace() -> TestResult
{
    let cluster = Cluster::new().await?;
    let grace = Duration::from_secs(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let service = ServiceDef::builder("slow", "1.0.0")
        .method("who", |_, _: ()| async {
            Ok::<_, ServiceError>("svc".to_owned())
        })
        .method("hold", move |_, _: ()| {
            let gate = held.clone();
            async move {
                let _pass = gate.acquire().await;
                Ok::<_, ServiceError>("held".to_owned())
            }
        });
    let node = cluster
        .builder("svc")
        .config(RpcConfig {
            shutdown_grace: grace,
            ..Default::default()
        })
        .service(service)
        .start()
        .await?;
    let caller = cluster.caller().await?;
    let at = |method: &'static str| {
        let client = caller
            .client("slow")
            .at(node.local_addr())
            .with_deadline(WAIT);
        async move { client.call::<(), String, ServiceError>(method, ()).await }
    };
    assert_eq!(at("who").await?, "svc");
    // A call the node has accepted when it starts to stop, which it must finish.
    let accepted = tokio::spawn(at("hold"));

    // The store goes away, then the node stops.
    cluster.seed.shutdown().await;
    let stopping = {
        let node = node.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            node.shutdown().await;
            started.elapsed()
        })
    };
    // Each call answered normally means the shutdown has not begun yet; the first refusal
    // must be the typed one.
    let mut answered = 0;
    let refusal = loop {
        match at("who").await {
            Ok(_) if answered < 10_000 => answered += 1,
            Ok(_) => anyhow::bail!("still answering after {answered} calls"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refusal, CallError::Stopping(_)),
        "a stopping node refused with {refusal:?}"
    );
    assert!(refusal.is_safe_to_retry());

    gate.add_permits(1);
    assert_eq!(accepted.await??, "held", "the accepted call is finished");
    let took = stopping.await?;
    println!("stopped in {took:?} with the store down (grace {grace:?})");
    // The old shutdown waited out two store timeouts of 10 s each.
    assert!(
        took < grace + Duration::from_secs(3),
        "the shutdown took {took:?} with a grace of {grace:?}"
    );
    caller.shutdown().await;
    Ok(())
}

/// Start-up rides out a store that is briefly away: a node whose registration cannot reach the
/// store keeps trying (with backoff, within `RegistrationConfig::start_timeout`) instead of
/// failing at the first error, and starts once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_once_a_store_that_was_away_at_its_start_comes_back() -> TestResult {
    let credentials = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let member = |bind: SocketAddr| {
        Node::builder()
            .name("seed")
            .bind(bind)
            .development_credentials(credentials.path())
            .store(StoreConfig::bootstrap(data.path().join("seed")))
            .start()
    };
    let seed = member(([127, 0, 0, 1], 0).into()).await?;
    let seed_addr = seed.local_addr();
    seed.shutdown().await;

    // Each store request gives up after 300 ms, so a start that does not retry fails at once.
    let echo = ServiceDef::builder("echo", "1.0.0").method("who", |_, _: ()| async {
        Ok::<_, ServiceError>("late".to_owned())
    });
    let mut starting = tokio::spawn(
        Node::builder()
            .name("late")
            .development_credentials(credentials.path())
            .config(RpcConfig {
                connect_timeout: Duration::from_millis(200),
                ..Default::default()
            })
            .store(StoreConfig::client(vec![seed_addr]).timeout(Duration::from_millis(300)))
            .service(echo)
            .start(),
    );
    // Many store timeouts later, the node is still starting, not failed.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut starting)
            .await
            .is_err(),
        "the start ended while the store was away"
    );

    let seed = member(seed_addr).await?;
    let node = tokio::time::timeout(WAIT, starting).await???;
    let caller = Node::builder()
        .name("caller")
        .development_credentials(credentials.path())
        .store(StoreConfig::client(vec![seed_addr]))
        .start()
        .await?;
    caller
        .registry()
        .ok_or_else(|| anyhow::anyhow!("no registry"))?
        .wait_for(WAIT, |s| !s.instances("echo").is_empty())
        .await
        .ok_or_else(|| anyhow::anyhow!("the late node never registered"))?;
    caller.shutdown().await;
    node.shutdown().await;
    seed.shutdown().await;
    Ok(())
}

/// A node whose seeds are all dead: a call by name fails with the cause, the store being
/// unreachable, once the registry's first read has failed, instead of waiting out the call's
/// deadline and saying only that it passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_by_name_without_a_store_names_the_cause_before_its_deadline() -> TestResult {
    let credentials = tempfile::tempdir()?;
    let gone = Node::builder()
        .name("gone")
        .development_credentials(credentials.path())
        .start()
        .await?;
    let dead_seed = gone.local_addr();
    gone.shutdown().await;

    let caller = Node::builder()
        .name("stranded")
        .development_credentials(credentials.path())
        .config(RpcConfig {
            connect_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .store(StoreConfig::client(vec![dead_seed]).timeout(Duration::from_millis(500)))
        .start()
        .await?;
    let deadline = Duration::from_secs(60);
    let client = caller.client("echo").with_deadline(deadline);
    let call = client.call::<(), String, ServiceError>("who", ());
    let error = tokio::time::timeout(WAIT, call)
        .await
        .map_err(|_| anyhow::anyhow!("the call waited for its deadline"))?
        .expect_err("no store, no instance");
    match &error {
        CallError::Unreachable { target, reason } => {
            assert_eq!(target, "echo");
            assert!(
                reason.contains("the registry cannot read the config store"),
                "{reason}"
            );
            // The store's error names the member it asked.
            assert!(reason.contains(&dead_seed.to_string()), "{reason}");
        }
        other => panic!("expected the store's cause, got {other:?}"),
    }
    println!("{error}");
    caller.shutdown().await;
    Ok(())
}
