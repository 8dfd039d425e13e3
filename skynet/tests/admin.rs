//! The admin HTTP port of real nodes: counts of real calls over QUIC and on the same-process
//! fast path, read back over real HTTP as `/debug/vars` JSON and `/metrics` Prometheus text.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::{Value, json};
use skynet::stats::Outcome;
use skynet::{CallError, Context, Node, ServiceDef, ServiceDefBuilder, ServiceError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

type TestResult = anyhow::Result<()>;

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// `calc`: `ok` answers, `fail` returns a service error, `panic` panics, `slow` reports that it
/// started and waits for `release`, `stuck` never finishes.
fn calc(started: mpsc::UnboundedSender<()>, release: Arc<Notify>) -> ServiceDefBuilder {
    ServiceDef::builder("calc", "1.0.0")
        .method("ok", |_: Context, n: u64| async move {
            Ok::<_, ServiceError>(n + 1)
        })
        .method("fail", |_: Context, n: u64| async move {
            Err::<u64, _>(ServiceError::new(format!("no {n}")))
        })
        .method("panic", |_: Context, n: u64| async move {
            if n > 0 {
                panic!("asked to panic");
            }
            Ok::<u64, ServiceError>(n)
        })
        .method("slow", move |_: Context, n: u64| {
            let started = started.clone();
            let release = release.clone();
            async move {
                let released = release.notified();
                let _ = started.send(());
                released.await;
                Ok::<_, ServiceError>(n)
            }
        })
        .method("stuck", |_: Context, (): ()| async move {
            std::future::pending::<()>().await;
            Ok::<(), ServiceError>(())
        })
}

/// One HTTP/1.1 exchange on a fresh connection; returns status, head and body.
async fn http(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, head.to_owned(), body.to_owned()))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String, String)> {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: skynet\r\nConnection: close\r\n\r\n"),
    )
    .await
}

async fn vars(addr: SocketAddr) -> anyhow::Result<Value> {
    let (status, head, body) = get(addr, "/debug/vars").await?;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    Ok(serde_json::from_str(&body)?)
}

/// A Prometheus sample: metric name and its labels, sorted.
type Sample = (String, BTreeMap<String, String>);

/// Parses the text format: `# HELP` / `# TYPE` lines into `types`, samples into a map.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, BTreeMap<Sample, f64>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name text");
            helps.insert(name.to_owned(), ());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (name, labels, value) = match line.split_once('{') {
            Some((name, rest)) => {
                let (labels, value) = parse_labels(rest);
                (name, labels, value)
            }
            None => {
                let (name, value) = line.split_once(' ').expect("name value");
                (name, BTreeMap::new(), value)
            }
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "{name} has no TYPE line before it"
        );
        assert!(
            helps.contains_key(family),
            "{name} has no HELP line before it"
        );
        let value: f64 = value.trim().parse().expect("a number");
        assert!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "duplicate {line}"
        );
    }
    (types, samples)
}

/// Parses `a="x",b="y\"z"} value` into labels and the value text.
fn parse_labels(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        rest = rest.strip_prefix(',').unwrap_or(rest);
        let (name, after) = rest.split_once("=\"").expect("label=\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escaped char").1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = &after[end + 1..];
    }
}

fn sample(name: &str, labels: &[(&str, &str)]) -> Sample {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_vars_and_metrics_count_real_calls() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let server = Node::builder()
        .name("server")
        .development_credentials(dir.path())
        .service(calc(started_tx, release.clone()))
        .admin(LOOPBACK)
        .start()
        .await?;
    let caller = Node::builder()
        .name("caller")
        .development_credentials(dir.path())
        .start()
        .await?;
    let admin = server.admin_addr().expect("an admin port");
    assert_ne!(admin.port(), 0);
    assert_eq!(caller.admin_addr(), None);
    let remote = caller.client("calc").at(server.local_addr());
    let local = server.client("calc");

    // N = 7 successes: 5 over QUIC, 2 on the same-process fast path.
    for n in 0..5u64 {
        assert_eq!(remote.call::<_, u64, ServiceError>("ok", n).await?, n + 1);
    }
    for n in 0..2u64 {
        assert_eq!(local.call::<_, u64, ServiceError>("ok", n).await?, n + 1);
    }
    // M = 7 failures of four kinds: 3 service errors (2 remote, 1 local), 2 panics (one
    // each way), a bad request that reached `ok` (JSON of the wrong type), and a same-process
    // call whose deadline passed.
    for n in 0..2u64 {
        let err = remote
            .call::<_, u64, ServiceError>("fail", n)
            .await
            .expect_err("fails");
        assert!(matches!(err, CallError::Service(_)), "{err}");
    }
    let err = local
        .call::<_, u64, ServiceError>("fail", 9u64)
        .await
        .expect_err("fails");
    assert!(matches!(err, CallError::Service(_)), "{err}");
    for client in [&remote, &local] {
        let err = client
            .call::<_, u64, ServiceError>("panic", 1u64)
            .await
            .expect_err("panics");
        assert!(matches!(err, CallError::Internal(_)), "{err}");
    }
    let err = remote
        .call_json("ok", &json!("not a number"))
        .await
        .expect_err("bad");
    assert!(matches!(err, CallError::Rejected { .. }), "{err}");
    let err = local
        .clone()
        .with_deadline(Duration::from_millis(20))
        .call::<_, (), ServiceError>("stuck", ())
        .await
        .expect_err("deadline");
    assert!(matches!(err, CallError::DeadlineExceeded(_)), "{err}");
    // A same-process call dropped after its first poll is cancelled: neither kind.
    assert!(
        local
            .call::<_, (), ServiceError>("stuck", ())
            .now_or_never()
            .is_none()
    );
    // A call to a method that does not exist reaches no method: counted nowhere.
    let err = remote
        .call::<_, u64, ServiceError>("nope", 1u64)
        .await
        .expect_err("404");
    assert!(matches!(err, CallError::NotFound { .. }), "{err}");

    // One slow call in flight, over QUIC.
    let slow = tokio::spawn({
        let remote = remote.clone();
        async move { remote.call::<_, u64, ServiceError>("slow", 42u64).await }
    });
    started.recv().await.expect("the slow handler starts");

    let v = vars(admin).await?;
    let expect = [
        ("calc.ok-processed", 7),
        ("calc.ok-errors", 1),
        ("calc.ok-inflight", 0),
        ("calc.fail-processed", 0),
        ("calc.fail-errors", 3),
        ("calc.panic-errors", 2),
        ("calc.stuck-errors", 1),
        ("calc.stuck-cancelled", 1),
        ("calc.stuck-inflight", 0),
        ("calc.slow-processed", 0),
        ("calc.slow-inflight", 1),
    ];
    for (key, count) in expect {
        assert_eq!(v[key], json!(count), "{key} in {v:#}");
    }
    assert_eq!(v["calc.ok-latency"]["count"], 8);
    assert!(
        v["calc.ok-latency"]["p99_seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0)
    );
    assert_eq!(v["calc.slow-latency"]["count"], 0);
    assert_eq!(v["calc.slow-latency"]["p50_seconds"], Value::Null);
    assert_eq!(v["node"], "server");
    let argv: Vec<String> = std::env::args().collect();
    assert_eq!(v["cmdline"], json!(argv));
    let memstats = &v["memstats"];
    if cfg!(target_os = "linux") {
        let resident = memstats["resident_bytes"].as_u64().expect("resident bytes");
        let virtual_size = memstats["virtual_bytes"].as_u64().expect("virtual bytes");
        assert!(resident > 0 && virtual_size >= resident, "{memstats}");
    }
    assert!(
        memstats["uptime_seconds"]
            .as_f64()
            .is_some_and(|s| s >= 0.0)
    );

    let (status, head, body) = get(admin, "/metrics").await?;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
    );
    let (types, samples) = parse_prometheus(&body);
    assert_eq!(types["skynet_calls_total"], "counter");
    assert_eq!(types["skynet_calls_in_flight"], "gauge");
    assert_eq!(types["skynet_call_duration_seconds"], "histogram");
    let calls = |method: &str, outcome: &str| {
        samples[&sample(
            "skynet_calls_total",
            &[
                ("service", "calc"),
                ("method", method),
                ("outcome", outcome),
            ],
        )]
    };
    assert_eq!(calls("ok", "ok"), 7.0);
    assert_eq!(calls("ok", "bad_request"), 1.0);
    assert_eq!(calls("fail", "service_error"), 3.0);
    assert_eq!(calls("panic", "internal"), 2.0);
    assert_eq!(calls("stuck", "deadline_exceeded"), 1.0);
    assert_eq!(calls("stuck", "cancelled"), 1.0);
    assert_eq!(calls("slow", "ok"), 0.0);
    let in_flight = |method: &str| {
        samples[&sample(
            "skynet_calls_in_flight",
            &[("service", "calc"), ("method", method)],
        )]
    };
    assert_eq!(in_flight("slow"), 1.0);
    assert_eq!(in_flight("ok"), 0.0);
    let ok = [("service", "calc"), ("method", "ok")];
    assert_eq!(
        samples[&sample("skynet_call_duration_seconds_count", &ok)],
        8.0
    );
    let inf = sample(
        "skynet_call_duration_seconds_bucket",
        &[("service", "calc"), ("method", "ok"), ("le", "+Inf")],
    );
    assert_eq!(samples[&inf], 8.0);
    assert!(samples[&sample("skynet_call_duration_seconds_sum", &ok)] > 0.0);
    // Buckets are cumulative and end at the count.
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|((name, labels), _)| {
            name == "skynet_call_duration_seconds_bucket" && labels["method"] == "ok"
        })
        .map(|((_, labels), &count)| (labels["le"].parse().expect("le"), count))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");

    // The slow call finishes: it moves from in flight to processed.
    release.notify_one();
    assert_eq!(slow.await??, 42);
    let v = vars(admin).await?;
    assert_eq!(v["calc.slow-processed"], 1);
    assert_eq!(v["calc.slow-inflight"], 0);

    // The typed API agrees.
    let stats = server.stats();
    let ok = stats.method("calc", "ok").expect("calc.ok");
    assert_eq!((ok.processed(), ok.errors(), ok.in_flight), (7, 1, 0));
    assert_eq!(ok.count(Outcome::BadRequest), 1);
    let stuck = stats.method("calc", "stuck").expect("calc.stuck");
    assert_eq!(stuck.count(Outcome::DeadlineExceeded), 1);
    assert_eq!(stuck.count(Outcome::Cancelled), 1);
    assert!(stats.method("calc", "nope").is_none());
    // The caller hosts nothing and counted nothing.
    assert!(caller.stats().methods.is_empty());

    caller.shutdown().await;
    server.shutdown().await;
    // The admin port stops with the node.
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "admin port still open"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_huge_heads_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (started, _) = mpsc::unbounded_channel();
    let node = Node::builder()
        .development_credentials(dir.path())
        .service(calc(started, Arc::new(Notify::new())))
        .admin(LOOPBACK)
        .start()
        .await?;
    let admin = node.admin_addr().expect("an admin port");

    assert_eq!(get(admin, "/").await?.0, 404);
    assert_eq!(get(admin, "/debug/vars/x").await?.0, 404);
    assert_eq!(get(admin, "/metrics?name=x").await?.0, 200);
    let (status, head, _) = http(
        admin,
        "POST /metrics HTTP/1.1\r\nHost: skynet\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await?;
    assert_eq!(status, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    let (status, _, _) = http(
        admin,
        "DELETE /debug/vars HTTP/1.1\r\nHost: skynet\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(status, 405);
    let (status, _, body) = http(
        admin,
        "HEAD /debug/vars HTTP/1.1\r\nHost: skynet\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!((status, body.as_str()), (200, ""));
    // A request head over the limit is refused without being buffered whole.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: skynet\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let mut stream = TcpStream::connect(admin).await?;
    // The server may close before taking every byte.
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    // The answer is 431, unless the connection was reset under it before it could be read.
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );

    // Keep-alive: two requests on one connection.
    let mut stream = TcpStream::connect(admin).await?;
    let first = "GET /metrics HTTP/1.1\r\nHost: skynet\r\n\r\n";
    let last = "GET /debug/vars HTTP/1.1\r\nHost: skynet\r\nConnection: close\r\n\r\n";
    stream
        .write_all(format!("{first}{last}").as_bytes())
        .await?;
    let mut both = String::new();
    stream.read_to_string(&mut both).await?;
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");

    // The port in use: a second node asking for it fails to start, with a typed error.
    let clash = Node::builder()
        .development_credentials(dir.path())
        .admin(admin)
        .start()
        .await;
    assert!(
        matches!(clash, Err(skynet::NodeError::Admin { addr, .. }) if addr == admin),
        "{clash:?}"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_dropped_by_its_caller_counts_as_cancelled() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let server = Node::builder()
        .development_credentials(dir.path())
        .service(calc(started_tx, Arc::new(Notify::new())))
        .start()
        .await?;
    let caller = Node::builder()
        .development_credentials(dir.path())
        .start()
        .await?;
    let remote = caller.client("calc").at(server.local_addr());
    let slow = tokio::spawn(async move { remote.call::<_, u64, ServiceError>("slow", 1u64).await });
    started.recv().await.expect("the slow handler starts");
    assert_eq!(
        server.stats().method("calc", "slow").map(|m| m.in_flight),
        Some(1)
    );
    // Dropping the call sends a cancel frame; the server aborts the handler's task.
    slow.abort();
    let cancelled = async {
        loop {
            let stats = server.stats();
            let slow = stats.method("calc", "slow").expect("calc.slow");
            if slow.count(Outcome::Cancelled) == 1 {
                return (slow.in_flight, slow.processed(), slow.errors());
            }
            tokio::task::yield_now().await;
        }
    };
    let counts = tokio::time::timeout(Duration::from_secs(10), cancelled).await?;
    assert_eq!(
        counts,
        (0, 0, 0),
        "cancelled is neither processed nor an error"
    );
    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// Polls `/readyz` until it answers `status` with `state`, within 20 s; returns the body.
async fn readyz_until(admin: SocketAddr, status: u16, state: &str) -> anyhow::Result<Value> {
    let wait = async {
        loop {
            let (got, head, body) = get(admin, "/readyz").await?;
            let body: Value = serde_json::from_str(&body)?;
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{head}"
            );
            if got == status && body["state"] == state {
                return anyhow::Ok(body);
            }
            // The state changes with the store's lease timers; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .map_err(|_| anyhow::anyhow!("/readyz never answered {status} {state}"))?
}

/// `/healthz` says a node is alive; `/readyz` says whether it serves: 200 once its services are
/// registered, 503 `unregistered` (with the reason) once its registration lease has gone
/// unrenewed past its TTL because the store is gone, and 503 `stopping` from the start of its
/// shutdown. One check for a supervisor, a load balancer and a Kubernetes probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_alive_and_readyz_says_whether_the_node_serves() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Node::builder()
        .name("store")
        .bind(LOOPBACK)
        .development_credentials(dir.path().join("certs"))
        .store(skynet::StoreConfig::bootstrap(dir.path().join("data")))
        .start()
        .await?;
    let server = Node::builder()
        .name("server")
        .development_credentials(dir.path().join("certs"))
        .admin(LOOPBACK)
        .registration(skynet::registry::RegistrationConfig {
            ttl: Duration::from_millis(600),
            ..Default::default()
        })
        .store(
            skynet::StoreConfig::client(vec![store.local_addr()])
                .timeout(Duration::from_millis(300)),
        )
        .service(calc(mpsc::unbounded_channel().0, Arc::new(Notify::new())))
        .start()
        .await?;
    let admin = server.admin_addr().expect("an admin port");

    let (status, _, body) = get(admin, "/healthz").await?;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body)?["alive"], true);
    let (status, _, body) = get(admin, "/readyz").await?;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body)?),
        (200, json!({"ready": true, "state": "serving"}))
    );

    // The store goes away: once the lease is past its TTL unrenewed, the node no longer serves
    // by name (its records are gone), though it is alive.
    store.shutdown().await;
    let body = readyz_until(admin, 503, "unregistered").await?;
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not renewed")),
        "{body}"
    );
    assert_eq!(get(admin, "/healthz").await?.0, 200);

    // From the start of its shutdown it says so.
    let stopping = tokio::spawn(async move { server.shutdown().await });
    readyz_until(admin, 503, "stopping").await?;
    stopping.await?;
    Ok(())
}
