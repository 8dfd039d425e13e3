//! Calls between real nodes over QUIC with mutual TLS on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skynet::{
    CallError, Context, Node, RejectReason, RpcConfig, ServiceDef, ServiceDefBuilder, ServiceError,
};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};

type TestResult = anyhow::Result<()>;

/// Defaults, except that dialing a node that is gone gives up quickly.
fn quick_config() -> RpcConfig {
    RpcConfig {
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Nodes that share one development CA in a temporary directory.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn node(&self, name: &str, services: Vec<ServiceDefBuilder>) -> Node {
        self.node_with(name, services, quick_config()).await
    }

    async fn node_with(
        &self,
        name: &str,
        services: Vec<ServiceDefBuilder>,
        config: RpcConfig,
    ) -> Node {
        let mut builder = Node::builder()
            .name(name)
            .development_credentials(self.dir.path())
            .config(config);
        for service in services {
            builder = builder.service(service);
        }
        builder.start().await.expect("node starts")
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Echo {
    text: String,
    remote: bool,
}

fn echo_service() -> ServiceDefBuilder {
    ServiceDef::builder("echo", "1.0.0")
        .idempotent_method("say", |ctx: Context, text: String| async move {
            Ok::<_, ServiceError>(Echo {
                text,
                remote: ctx.is_remote(),
            })
        })
        .method("fail", |_: Context, text: String| async move {
            Err::<Echo, _>(ServiceError::new(text).with_code("refused"))
        })
        .method("panic", |_: Context, text: String| async move {
            if !text.is_empty() {
                panic!("asked to panic: {text}");
            }
            Ok::<String, ServiceError>(text)
        })
        .method("bytes", |_: Context, data: Vec<u8>| async move {
            Ok::<_, ServiceError>(data.len())
        })
}

async fn say(client: &skynet::ServiceClient, text: &str) -> Result<Echo, CallError> {
    client.call("say", text.to_owned()).await
}

#[tokio::test]
async fn round_trip_between_two_nodes() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("echo").at(server.local_addr());
    let reply = say(&client, "hello").await?;
    assert_eq!(
        reply,
        Echo {
            text: "hello".into(),
            remote: true
        }
    );

    let err = client
        .call::<_, Echo, ServiceError>("fail", "no".to_owned())
        .await
        .expect_err("service error");
    match err {
        CallError::Service(e) => {
            assert_eq!((e.message(), e.code()), ("no", Some("refused")));
        }
        other => panic!("expected a service error, got {other:?}"),
    }
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn same_process_call_skips_the_network() -> TestResult {
    let cluster = Cluster::new();
    let node = cluster.node("solo", vec![echo_service()]).await;
    let reply = say(&node.client("echo"), "local").await?;
    assert!(!reply.remote, "a same-process call must not go over QUIC");
    // Addressing our own address is also local.
    let reply = say(&node.client("echo").at(node.local_addr()), "self").await?;
    assert!(!reply.remote);
    // Local calls keep remote semantics for errors.
    let err = node
        .client("echo")
        .call::<_, String, ServiceError>("panic", "boom".to_owned())
        .await
        .expect_err("panic");
    assert!(
        matches!(err, CallError::Internal(ref m) if m.contains("boom")),
        "{err}"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("echo").at(server.local_addr());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let client = client.clone();
        tasks.spawn(async move { (i, say(&client, &i.to_string()).await) });
    }
    let mut ok = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, reply) = joined?;
        assert_eq!(reply?.text, i.to_string());
        ok += 1;
    }
    assert_eq!(ok, 1000);
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// Calls alone, calls that overlap, and calls dropped while their big reply is still arriving,
/// over and over on one connection. A lone call reads its own reply; once calls overlap the
/// connection's reader task reads for them and gives reading back when they are done; a reader
/// that goes away in the middle of a frame leaves the rest of it to the next. Every call that
/// is not dropped must get its own reply. Two workers, so that callers and the reader task
/// also poll the stream at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_passes_between_lone_overlapping_and_dropped_calls() -> TestResult {
    /// Replies of this size take many reads, so some calls are dropped in the middle of one.
    const BIG: usize = 256 << 10;
    let cluster = Cluster::new();
    let fill = ServiceDef::builder("fill", "1.0.0")
        .method("bytes", |_: Context, (byte, len): (u8, usize)| async move {
            Ok::<_, ServiceError>(vec![byte; len])
        });
    let server = cluster.node("server", vec![echo_service(), fill]).await;
    let caller = cluster.node("caller", vec![]).await;
    let echo = caller.client("echo").at(server.local_addr());
    let fill = caller.client("fill").at(server.local_addr());
    let big = |byte: u8| {
        let fill = fill.clone();
        async move {
            let reply: Vec<u8> = fill
                .call::<_, _, ServiceError>("bytes", (byte, BIG))
                .await?;
            let wrong = reply.iter().position(|&b| b != byte);
            anyhow::ensure!(
                reply.len() == BIG && wrong.is_none(),
                "asked for {BIG} bytes of {byte}, got {} bytes, first wrong at {wrong:?}: {:?}",
                reply.len(),
                wrong.map(|at| &reply[at..(at + 16).min(reply.len())])
            );
            Ok(())
        }
    };
    for round in 0..12u8 {
        for i in 0..3 {
            let text = format!("lone {round}.{i}");
            assert_eq!(say(&echo, &text).await?.text, text);
        }
        // Dropped after a while that ends before, during or after its big reply.
        let wait = Duration::from_micros(100 * u64::from(round));
        let _ = tokio::time::timeout(wait, big(round)).await;
        big(round.wrapping_add(100)).await?;

        let mut calls = tokio::task::JoinSet::new();
        for i in 0..100 {
            let echo = echo.clone();
            calls.spawn(async move {
                let text = format!("overlap {round}.{i}");
                anyhow::ensure!(say(&echo, &text).await?.text == text);
                Ok(())
            });
        }
        for byte in [1, 2] {
            calls.spawn(big(byte));
        }
        let dropped = tokio::spawn(big(3));
        dropped.abort();
        while let Some(done) = calls.join_next().await {
            done??;
        }
    }
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// A service whose handler waits forever and reports when it starts and when it is dropped.
fn stuck_service(
    started: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
) -> ServiceDefBuilder {
    struct OnDrop(mpsc::UnboundedSender<()>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    ServiceDef::builder("stuck", "1.0.0").method("wait", move |_: Context, _: ()| {
        let started = started.clone();
        let guard = OnDrop(dropped.clone());
        async move {
            let _guard = guard;
            let _ = started.send(());
            std::future::pending::<()>().await;
            Ok::<(), ServiceError>(())
        }
    })
}

#[tokio::test]
async fn deadline_exceeded_cancels_the_handler() -> TestResult {
    let cluster = Cluster::new();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let server = cluster
        .node("server", vec![stuck_service(started_tx, dropped_tx)])
        .await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller
        .client("stuck")
        .at(server.local_addr())
        .with_deadline(Duration::from_millis(200));
    // Dial first (a method the service lacks answers at once): the 200 ms are for the call,
    // not for a handshake on a busy machine, which could use them all before the handler
    // starts and leave nothing to cancel.
    let missing = client.call::<_, (), ServiceError>("missing", ()).await;
    assert!(
        matches!(missing, Err(CallError::NotFound { .. })),
        "{missing:?}"
    );
    let err = client
        .call::<_, (), ServiceError>("wait", ())
        .await
        .expect_err("must time out");
    assert!(
        matches!(err, CallError::DeadlineExceeded(d) if d == Duration::from_millis(200)),
        "{err}"
    );
    let bound = Duration::from_secs(30);
    tokio::time::timeout(bound, started.recv())
        .await?
        .expect("handler ran");
    tokio::time::timeout(bound, dropped.recv())
        .await?
        .expect("handler was cancelled on the server");
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn dropping_the_caller_cancels_the_handler_on_the_server() -> TestResult {
    let cluster = Cluster::new();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let server = cluster
        .node("server", vec![stuck_service(started_tx, dropped_tx)])
        .await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("stuck").at(server.local_addr());
    let call = tokio::spawn(async move { client.call::<_, (), ServiceError>("wait", ()).await });
    started.recv().await.expect("handler started");
    call.abort();
    dropped.recv().await.expect("server dropped the handler");
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn oversized_requests_are_rejected_and_the_connection_keeps_working() -> TestResult {
    let cluster = Cluster::new();
    let server_config = RpcConfig {
        max_frame_size: 64 << 10,
        ..Default::default()
    };
    let server = cluster
        .node_with("server", vec![echo_service()], server_config)
        .await;
    // Two callers: one sends big requests on their own stream (the default), the other on
    // the shared call stream, so both of the server's paths are exercised.
    let own_stream = cluster.node("caller-a", vec![]).await;
    let shared_stream = cluster
        .node_with(
            "caller-b",
            vec![],
            RpcConfig {
                large_message: 1 << 20,
                ..quick_config()
            },
        )
        .await;
    for caller in [&own_stream, &shared_stream] {
        let client = caller.client("echo").at(server.local_addr());
        let err = client
            .call::<_, usize, ServiceError>("bytes", vec![7u8; 100 << 10])
            .await
            .expect_err("too large");
        assert!(
            matches!(
                err,
                CallError::Rejected {
                    reason: RejectReason::TooLarge,
                    ..
                }
            ),
            "{err}"
        );
        let fits: usize = client
            .call::<_, _, ServiceError>("bytes", vec![7u8; 1000])
            .await?;
        assert_eq!(fits, 1000);
        assert_eq!(say(&client, "still here").await?.text, "still here");
    }
    // The caller's own limit is checked before anything is sent.
    let err = own_stream
        .client("echo")
        .at(server.local_addr())
        .call::<_, usize, ServiceError>("bytes", vec![0u8; 17 << 20])
        .await
        .expect_err("over the caller's limit");
    assert!(
        matches!(
            err,
            CallError::Rejected {
                reason: RejectReason::TooLarge,
                ..
            }
        ),
        "{err}"
    );
    for node in [own_stream, shared_stream, server] {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_peer_from_another_ca_is_refused() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let outsider_cluster = Cluster::new();
    let outsider = outsider_cluster.node("outsider", vec![]).await;
    let err = say(
        &outsider.client("echo").at(server.local_addr()),
        "let me in",
    )
    .await
    .expect_err("handshake must fail");
    assert!(matches!(err, CallError::HandshakeRefused { .. }), "{err}");
    // The server still serves its own cluster.
    let member = cluster.node("member", vec![]).await;
    say(&member.client("echo").at(server.local_addr()), "hi").await?;
    for node in [outsider, member, server] {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error_and_the_node_keeps_serving() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("echo").at(server.local_addr());
    for _ in 0..3 {
        let err = client
            .call::<_, String, ServiceError>("panic", "now".to_owned())
            .await
            .expect_err("panics");
        assert!(
            matches!(err, CallError::Internal(ref m) if m.contains("asked to panic: now")),
            "{err}"
        );
        assert_eq!(say(&client, "alive").await?.text, "alive");
    }
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn json_call_to_a_typed_service() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("echo").at(server.local_addr());
    let reply = client
        .call_json("say", &serde_json::json!("json in"))
        .await?;
    assert_eq!(
        reply,
        serde_json::json!({"text": "json in", "remote": true})
    );
    let err = client
        .call_json("fail", &serde_json::json!("nope"))
        .await
        .expect_err("service error");
    match err {
        CallError::Service(value) => assert_eq!(value["message"], "nope"),
        other => panic!("expected a service error, got {other:?}"),
    }
    let err = client
        .call_json("say", &serde_json::json!({"not": "a string"}))
        .await
        .expect_err("wrong shape");
    assert!(
        matches!(
            err,
            CallError::Rejected {
                reason: RejectReason::BadRequest,
                ..
            }
        ),
        "{err}"
    );
    // A typed client may choose JSON too.
    let typed = say(
        &client.clone().with_encoding(skynet::Encoding::Json),
        "typed json",
    )
    .await?;
    assert_eq!(typed.text, "typed json");
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_service_and_method_are_not_found() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let caller = cluster.node("caller", vec![]).await;
    for (service, method) in [("nope", "say"), ("echo", "nope")] {
        let err = caller
            .client(service)
            .at(server.local_addr())
            .call::<_, Echo, ServiceError>(method, "x".to_owned())
            .await
            .expect_err("not found");
        assert!(matches!(err, CallError::NotFound { .. }), "{err}");
    }
    let err = say(&caller.client("echo"), "no address")
        .await
        .expect_err("nowhere to go");
    assert!(matches!(err, CallError::Unreachable { .. }), "{err}");
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_does_not_hold_up_fast_ones() -> TestResult {
    let cluster = Cluster::new();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let slow = ServiceDef::builder("slow", "1.0.0").method("wait", move |_: Context, _: ()| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok::<_, ServiceError>("released".to_owned())
        }
    });
    let server = cluster.node("server", vec![echo_service(), slow]).await;
    let caller = cluster.node("caller", vec![]).await;
    let slow_client = caller.client("slow").at(server.local_addr());
    let slow_call = tokio::spawn(async move {
        slow_client
            .call::<_, String, ServiceError>("wait", ())
            .await
    });
    let fast = caller.client("echo").at(server.local_addr());
    for i in 0..200 {
        say(&fast, &i.to_string()).await?;
    }
    assert!(!slow_call.is_finished(), "the slow call is still waiting");
    release.notify_waiters();
    assert_eq!(slow_call.await??, "released");
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_accepted_call() -> TestResult {
    let cluster = Cluster::new();
    let running = Arc::new(AtomicUsize::new(0));
    let all_running = Arc::new(Notify::new());
    const CALLS: usize = 50;
    let (counter, notify) = (running.clone(), all_running.clone());
    let work = ServiceDef::builder("work", "1.0.0").method("do", move |_: Context, n: u32| {
        let (counter, notify) = (counter.clone(), notify.clone());
        async move {
            if counter.fetch_add(1, Ordering::SeqCst) + 1 == CALLS {
                notify.notify_one();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, ServiceError>(n * 2)
        }
    });
    let server = cluster.node("server", vec![work]).await;
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("work").at(server.local_addr());
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..CALLS as u32 {
        let client = client.clone();
        calls.spawn(async move { (n, client.call::<_, u32, ServiceError>("do", n).await) });
    }
    all_running.notified().await;
    let (done_tx, done_rx) = oneshot::channel();
    let stopping = server.clone();
    tokio::spawn(async move {
        stopping.shutdown().await;
        let _ = done_tx.send(());
    });
    while let Some(joined) = calls.join_next().await {
        let (n, reply) = joined?;
        assert_eq!(reply?, n * 2, "accepted call {n} must complete");
    }
    done_rx.await?;
    let err = client
        .call::<_, u32, ServiceError>("do", 1)
        .await
        .expect_err("the node is gone");
    assert!(
        err.is_safe_to_retry() || matches!(err, CallError::ConnectionLost { .. }),
        "{err}"
    );
    caller.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_port_range_picks_a_free_port() -> TestResult {
    let cluster = Cluster::new();
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let first = Node::builder()
        .name("a")
        .development_credentials(cluster.dir.path())
        .bind_range(ip, 47100..=47140)
        .start()
        .await?;
    let second = Node::builder()
        .name("b")
        .development_credentials(cluster.dir.path())
        .bind(std::net::SocketAddr::new(ip, first.local_addr().port()))
        .start()
        .await;
    assert!(
        matches!(second, Err(skynet::NodeError::Bind { .. })),
        "port is taken"
    );
    let third = Node::builder()
        .name("c")
        .development_credentials(cluster.dir.path())
        .bind_range(ip, first.local_addr().port()..=47140)
        .start()
        .await?;
    assert_ne!(first.local_addr(), third.local_addr());
    first.shutdown().await;
    third.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_lost_connection_is_redialed() -> TestResult {
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let addr = server.local_addr();
    let caller = cluster.node("caller", vec![]).await;
    let client = caller.client("echo").at(addr);
    say(&client, "first").await?;
    server.shutdown().await;
    let err = say(&client, "nobody home")
        .await
        .expect_err("server is down");
    assert!(
        matches!(
            err,
            CallError::Unreachable { .. } | CallError::ConnectionLost { .. }
        ),
        "{err}"
    );
    // A new process on the same address: the caller dials again on its own.
    let restarted = Node::builder()
        .name("server")
        .development_credentials(cluster.dir.path())
        .bind(addr)
        .service(echo_service())
        .start()
        .await?;
    assert_eq!(say(&client, "again").await?.text, "again");
    caller.shutdown().await;
    restarted.shutdown().await;
    Ok(())
}

/// Relays UDP between one client and `server`, holding back every datagram over 1,000 bytes by
/// `hold`: QUIC's handshake packets (padded Initials, certificates) are that large, while calls on
/// an established connection travel in small ones, which pass at once. A peer whose handshakes
/// take long, as one busy with hundreds of them does, and whose calls do not.
async fn slow_handshakes(server: SocketAddr, hold: Duration) -> anyhow::Result<SocketAddr> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(server).await?;
    let addr = front.local_addr()?;
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let relay = move |data: Vec<u8>, to: Option<SocketAddr>, socket: Arc<UdpSocket>| async move {
        if data.len() > 1000 {
            tokio::time::sleep(hold).await;
        }
        let _ = match to {
            Some(to) => socket.send_to(&data, to).await,
            None => socket.send(&data).await,
        };
    };
    let (inbound, outbound) = (front.clone(), back.clone());
    let seen = client.clone();
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok((n, from)) = inbound.recv_from(&mut buf).await {
            *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(from);
            tokio::spawn(relay(buf[..n].to_vec(), None, outbound.clone()));
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tokio::spawn(relay(buf[..n].to_vec(), to, front.clone()));
        }
    });
    Ok(addr)
}

/// A dial outlives the call that started it: a call whose deadline passes while the handshake
/// is under way leaves the dial to finish, and a later call uses the connection. Were the dial
/// the caller's own, every call would start a handshake anew and drop it at its deadline:
/// against a peer whose handshakes take longer than its callers' deadlines, no call would ever
/// get through, and each would add a handshake to the peer's load (200 processes starting at
/// once beside the example cluster all failed so, their store members drowned in handshakes).
#[tokio::test]
async fn a_dial_outlives_a_call_that_gave_up_on_it() -> TestResult {
    const MOST_TIMEOUTS: usize = 20;
    let cluster = Cluster::new();
    let server = cluster.node("server", vec![echo_service()]).await;
    let caller = cluster
        .node_with(
            "caller",
            vec![],
            RpcConfig {
                connect_timeout: Duration::from_secs(10),
                ..quick_config()
            },
        )
        .await;
    // Each handshake flight is held 300 ms, so a dial takes at least 600 ms.
    let proxy = slow_handshakes(server.local_addr(), Duration::from_millis(300)).await?;
    let client = caller
        .client("echo")
        .at(proxy)
        .with_deadline(Duration::from_millis(200));
    let mut timeouts = 0;
    let reply = loop {
        match say(&client, "through").await {
            Ok(reply) => break reply,
            Err(CallError::DeadlineExceeded(_)) if timeouts < MOST_TIMEOUTS => timeouts += 1,
            Err(e) => anyhow::bail!("after {timeouts} calls that ran out of time: {e}"),
        }
    };
    assert_eq!(reply.text, "through");
    assert!(timeouts >= 1, "the handshake was not held back");
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}
