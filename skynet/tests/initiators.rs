//! The initiators end to end: HTTP (the form and JSON, with every failure status), TCP
//! (newline-delimited JSON, in order, bad lines answered), and the file initiator as a real
//! `skynet initiator file` process killed with SIGKILL mid-file and started again.
//!
//! Every test runs a store member, a node hosting the `greeter` service and a router, and the
//! route `hello` (one hop, `greeter.greet`, retry allowed) on loopback.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use skynet::initiator::RouteCaller;
use skynet::initiator::http::{HttpConfig, HttpInitiator};
use skynet::initiator::tcp::{TcpConfig, TcpInitiator};
use skynet::route::{self, Hop, Route, Router};
use skynet::{Node, ServiceDef, ServiceError, StoreConfig};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

type TestResult = anyhow::Result<()>;

const WAIT: Duration = Duration::from_secs(30);

struct Cluster {
    credentials: tempfile::TempDir,
    _data: tempfile::TempDir,
    nodes: Vec<Node>,
    /// How many greetings the service has made so far.
    greeted: tokio::sync::watch::Receiver<u64>,
    caller: Node,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    /// `with_router: false` starts no router: the worker hosts only the service.
    async fn start_with(with_router: bool) -> anyhow::Result<Self> {
        let credentials = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let store = Node::builder()
            .name("store")
            .development_credentials(credentials.path())
            .store(StoreConfig::bootstrap(data.path().join("store")))
            .start()
            .await?;
        let seeds = vec![store.local_addr()];
        let builder = |name: &str| {
            Node::builder()
                .name(name)
                .development_credentials(credentials.path())
                .store(StoreConfig::client(seeds.clone()))
        };
        let (count, greeted) = tokio::sync::watch::channel(0u64);
        let greeter = ServiceDef::builder("greeter", "1.0.0").idempotent_method(
            "greet",
            move |_, req: Value| {
                count.send_modify(|n| *n += 1);
                async move {
                    let name = req.get("name").and_then(Value::as_str).unwrap_or("nobody");
                    Ok::<_, ServiceError>(json!({ "greeting": format!("Hello {name}") }))
                }
            },
        );
        let router = Router::new();
        let mut worker = builder("worker").service(greeter);
        if with_router {
            worker = worker.service(router.service());
        }
        let worker = worker.start().await?;
        if with_router {
            router.attach(&worker)?;
        }
        let caller = builder("initiator").start().await?;
        let store_handle = caller.store().context("store")?;
        route::put(
            &store_handle,
            &Route::new("hello", vec![Hop::new("greeter", "greet").retry(true)]),
        )
        .await?;
        route::put(
            &store_handle,
            &Route::new("ghost", vec![Hop::new("nobody-hosts-this", "x")]),
        )
        .await?;
        // Wait until the caller can see the service and the router.
        let registry = caller.registry().context("registry")?;
        registry
            .wait_for(WAIT, |s| {
                !s.instances("greeter").is_empty()
                    && (!with_router || !s.instances("skynet.router").is_empty())
            })
            .await
            .context("the worker registered")?;
        if with_router {
            let table = router.table().context("router table")?;
            table
                .wait_for(WAIT, |t| t.get("ghost").is_some())
                .await
                .context("the router sees the routes")?;
        }
        Ok(Self {
            credentials,
            _data: data,
            nodes: vec![store, worker],
            greeted,
            caller,
        })
    }

    fn route_caller(&self) -> RouteCaller {
        RouteCaller::new(&self.caller, Duration::from_secs(10))
    }

    async fn stop(self) {
        self.caller.shutdown().await;
        for node in self.nodes.iter().rev() {
            node.shutdown().await;
        }
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .context("a status line")?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_initiator_serves_the_form_json_and_friendly_failures() -> TestResult {
    let cluster = Cluster::start().await?;
    let http_config = HttpConfig {
        max_body: 4096,
        ..HttpConfig::default()
    };
    let web = HttpInitiator::start(
        cluster.route_caller(),
        ([127, 0, 0, 1], 0).into(),
        http_config,
    )
    .await?;
    let addr = web.addr();

    let (status, page) = http(addr, "GET", "/", b"").await?;
    assert_eq!(status, 200);
    assert!(
        page.contains("<form") && page.contains("name=\"name\""),
        "{page}"
    );

    let (status, page) = http(addr, "GET", "/new?name=World", b"").await?;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<p class=\"result\" id=\"result\">Hello World</p>"),
        "{page}"
    );

    let (status, body) = http(addr, "POST", "/v1/routes/hello", br#"{"name":"JSON"}"#).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?,
        json!({"greeting": "Hello JSON"})
    );

    // Failures, each with its status and a body that says what happened.
    let (status, body) = http(addr, "POST", "/v1/routes/nope", b"{}").await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["error"]["kind"],
        "no_such_route"
    );

    let (status, body) = http(addr, "POST", "/v1/routes/ghost", b"{}").await?;
    assert_eq!(status, 503, "{body}");
    let error = &serde_json::from_str::<Value>(&body)?["error"];
    assert_eq!(error["kind"], "unavailable");
    assert_eq!(error["service"], "nobody-hosts-this");
    assert!(
        error["friendly"]
            .as_str()
            .is_some_and(|f| f.contains("nobody-hosts-this service is not available")),
        "{body}"
    );

    let (status, body) = http(addr, "POST", "/v1/routes/hello", b"{not json").await?;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(addr, "POST", "/v1/routes/hello", &[b' '; 5000]).await?;
    assert_eq!(status, 413);
    let (status, _) = http(addr, "DELETE", "/v1/routes/hello", b"").await?;
    assert_eq!(status, 405);
    let (status, _) = http(addr, "GET", "/elsewhere", b"").await?;
    assert_eq!(status, 404);

    web.shutdown().await;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_initiator_answers_every_line_in_order() -> TestResult {
    let cluster = Cluster::start().await?;
    let config = TcpConfig {
        default_route: Some("hello".into()),
        max_line: 1000,
        ..TcpConfig::default()
    };
    let tcp =
        TcpInitiator::start(cluster.route_caller(), ([127, 0, 0, 1], 0).into(), config).await?;
    let stream = tokio::net::TcpStream::connect(tcp.addr()).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut requests = String::new();
    for i in 0..20 {
        requests.push_str(&format!("{{\"id\":{i},\"input\":{{\"name\":\"n{i}\"}}}}\n"));
    }
    requests.push_str("{not json\n");
    requests.push_str("{\"id\":\"x\",\"route\":\"nope\"}\n");
    requests.push_str(&format!(
        "{{\"id\":\"long\",\"input\":\"{}\"}}\n",
        "y".repeat(2000)
    ));
    requests.push_str("{\"id\":\"last\",\"route\":\"hello\",\"input\":{\"name\":\"end\"}}\n");
    write.write_all(requests.as_bytes()).await?;

    let mut answers = Vec::new();
    for _ in 0..24 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .context("an answer line")?;
        answers.push(serde_json::from_str::<Value>(&line)?);
    }
    for (i, answer) in answers[..20].iter().enumerate() {
        assert_eq!(answer["id"], i);
        assert_eq!(answer["output"]["greeting"], format!("Hello n{i}"));
    }
    assert_eq!(answers[20]["error"]["kind"], "bad_request");
    assert_eq!(answers[21]["id"], "x");
    assert_eq!(answers[21]["error"]["kind"], "no_such_route");
    assert_eq!(answers[22]["error"]["kind"], "bad_request");
    assert_eq!(answers[23]["id"], "last");
    assert_eq!(answers[23]["output"]["greeting"], "Hello end");

    tcp.shutdown().await;
    cluster.stop().await;
    Ok(())
}

/// A `skynet initiator file` process; killed with SIGKILL when dropped.
struct FileRun(Child);

impl FileRun {
    fn start(
        cluster: &Cluster,
        input: &std::path::Path,
        output: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let seed = cluster.nodes[0].local_addr().to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_skynet"))
            .args([
                "--log-level",
                "warn",
                "initiator",
                "file",
                "--join",
                &seed,
                "--route",
                "hello",
            ])
            .args(["--concurrency", "4", "--certs"])
            .arg(cluster.credentials.path())
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skynet initiator file")?;
        Ok(Self(child))
    }

    /// Waits (bounded) for the process to finish and returns its `done ...` line.
    async fn finish(mut self) -> anyhow::Result<String> {
        let stdout = self.0.stdout.take().context("stdout")?;
        let line = tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next()),
        )
        .await
        .context("the file run did not finish in time")??
        .context("the file run printed nothing")??;
        let status = self.0.wait()?;
        anyhow::ensure!(status.success(), "the file run exited with {status}");
        Ok(line)
    }
}

impl Drop for FileRun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_run_killed_mid_file_resumes_without_redoing_finished_lines() -> TestResult {
    let cluster = Cluster::start().await?;
    let dir = tempfile::tempdir()?;
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    const LINES: u64 = 400;
    let mut text = String::new();
    for i in 1..=LINES {
        if i == 7 {
            text.push_str("not a request\n");
        } else {
            text.push_str(&format!(
                "{{\"id\":{i},\"input\":{{\"name\":\"line {i}\"}}}}\n"
            ));
        }
    }
    std::fs::write(&input, text)?;

    // Kill the first run once it has had a quarter of the lines served.
    let first = FileRun::start(&cluster, &input, &output)?;
    let mut greeted = cluster.greeted.clone();
    tokio::time::timeout(WAIT, greeted.wait_for(|n| *n >= LINES / 4)).await??;
    drop(first);
    let served_before_restart = *cluster.greeted.borrow();
    let answered_before: usize = std::fs::read_to_string(&output)?.lines().count();
    assert!(
        answered_before > 0 && (answered_before as u64) < LINES,
        "{answered_before}"
    );

    let done = FileRun::start(&cluster, &input, &output)?.finish().await?;
    assert!(done.starts_with("done answered="), "{done}");

    // Every line answered exactly once, the bad one with an error.
    let mut answers: HashMap<u64, Value> = HashMap::new();
    for line in std::fs::read_to_string(&output)?.lines() {
        let answer: Value = serde_json::from_str(line)?;
        let number = answer["line"].as_u64().context("a line number")?;
        assert!(
            answers.insert(number, answer).is_none(),
            "line {number} answered twice"
        );
    }
    assert_eq!(answers.len() as u64, LINES);
    for i in 1..=LINES {
        let answer = &answers[&i];
        if i == 7 {
            assert_eq!(answer["error"]["kind"], "bad_request");
        } else {
            assert_eq!(
                answer["output"]["greeting"],
                format!("Hello line {i}"),
                "{answer}"
            );
        }
    }
    // Lines answered before the kill were not run again: the second run served only the rest
    // (plus the few that were running when the first was killed, which had no answer yet).
    let served_total = *cluster.greeted.borrow();
    let second_run = served_total - served_before_restart;
    // (Calls the killed run had in flight may still reach the service afterwards: at most its
    // concurrency, 4.)
    let unanswered = LINES - answered_before as u64;
    assert!(
        second_run <= unanswered + 4,
        "the second run served {second_run} lines; only {unanswered} (+4 in flight) were left"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_router_processes_an_initiator_runs_routes_itself() -> TestResult {
    let cluster = Cluster::start_with(false).await?;
    // No router anywhere: the route cannot run.
    let plain = cluster.route_caller();
    let failure = plain
        .run("hello", json!({"name": "x"}))
        .await
        .expect_err("no router");
    assert_eq!(failure.http_status(), 503, "{failure}");

    // An initiator node hosting an unlisted router of its own runs it in-process.
    let router = Router::new();
    let seed = cluster.nodes[0].local_addr();
    let direct = Node::builder()
        .name("direct-initiator")
        .development_credentials(cluster.credentials.path())
        .store(StoreConfig::client(vec![seed]))
        .unlisted_service(router.service())
        .start()
        .await?;
    router.attach(&direct)?;
    router
        .table()
        .context("table")?
        .wait_for(WAIT, |t| t.get("hello").is_some())
        .await
        .context("routes read")?;
    let output = RouteCaller::new(&direct, Duration::from_secs(10))
        .run("hello", json!({"name": "direct"}))
        .await?;
    assert_eq!(output["greeting"], "Hello direct");
    // ...and does not offer it to anyone else.
    let registry = direct.registry().context("registry")?;
    assert!(registry.snapshot().instances("skynet.router").is_empty());
    assert_eq!(registry.snapshot().instances("greeter").len(), 1);

    direct.shutdown().await;
    cluster.stop().await;
    Ok(())
}
