//! HTTP initiator → router → a 3-hop route → response, against one direct call of the same
//! service, in one process on loopback.
//!
//! ```not_rust
//! cargo bench -p skynet-benches --bench route
//! ```
//!
//! One config store member, one node hosting the `step` service (it appends a letter to a
//! string), one router node, and a caller node with an HTTP initiator. Measured with closed-loop
//! clients at 1 and 16 in flight: `POST /v1/routes/three` over keep-alive HTTP/1.1 connections
//! (each call runs `step.append` three times through the router), and a typed call by name of
//! `step.append` from the caller. Settings: `SKYNET_BENCH_SECS` (default 2),
//! `SKYNET_BENCH_ROUNDS` (default 3).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use skynet::initiator::RouteCaller;
use skynet::initiator::http::{HttpConfig, HttpInitiator};
use skynet::route::{self, Hop, Route, Router};
use skynet::{Node, ServiceDef, ServiceError, StoreConfig};
use skynet_benches::{Call, Sample, closed_loop, env_or, median};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

const COMMAND: &str = "cargo bench -p skynet-benches --bench route";
const IN_FLIGHT: [usize; 2] = [1, 16];
const WARMUP: Duration = Duration::from_millis(500);

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

/// A keep-alive HTTP/1.1 connection posting to the route.
struct HttpCaller {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    request: Vec<u8>,
}

impl HttpCaller {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let body = br#""""#;
        let mut request = format!(
            "POST /v1/routes/three HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Ok(Self {
            reader: tokio::io::BufReader::new(read),
            writer,
            request,
        })
    }

    async fn post(&mut self) -> Result<()> {
        self.writer.write_all(&self.request).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        ensure!(line.starts_with("HTTP/1.1 200"), "status line {line:?}");
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0u8; length.context("content-length")?];
        self.reader.read_exact(&mut body).await?;
        ensure!(
            body.starts_with(b"\"abc\""),
            "body {:?}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

impl Call for HttpCaller {
    async fn call(&mut self) -> Result<()> {
        self.post().await
    }
}

/// A typed call by name of one step.
struct DirectCaller(skynet::ServiceClient);

impl Call for DirectCaller {
    async fn call(&mut self) -> Result<()> {
        let out: String = self
            .0
            .call::<String, String, ServiceError>("append", String::new())
            .await?;
        ensure!(out.len() == 1, "one step appends one letter");
        Ok(())
    }
}

async fn run() -> Result<()> {
    let measure = Duration::from_secs_f64(env_or("SKYNET_BENCH_SECS", 2.0)?);
    let rounds = env_or("SKYNET_BENCH_ROUNDS", 3.0)? as usize;
    ensure!(rounds > 0, "SKYNET_BENCH_ROUNDS must be positive");
    let certs = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let store = Node::builder()
        .name("store")
        .development_credentials(certs.path())
        .store(StoreConfig::bootstrap(data.path().join("store")))
        .start()
        .await?;
    let client = |name: &str| {
        Node::builder()
            .name(name)
            .development_credentials(certs.path())
            .store(StoreConfig::client(vec![store.local_addr()]))
    };
    // `append` adds the next letter: "" → "a" → "ab" → "abc".
    let step = ServiceDef::builder("step", "1.0.0").idempotent_method(
        "append",
        |_, mut s: String| async move {
            let next = char::from(b'a' + u8::try_from(s.len() % 26).unwrap_or(0));
            s.push(next);
            Ok::<_, ServiceError>(s)
        },
    );
    let worker = client("worker").service(step).start().await?;
    let router = Router::new();
    let router_node = client("router").service(router.service()).start().await?;
    router.attach(&router_node)?;
    let caller = client("caller").start().await?;
    let hop = || Hop::new("step", "append").retry(true);
    route::put(
        &caller.store().context("store")?,
        &Route::new("three", vec![hop(), hop(), hop()]),
    )
    .await?;
    router
        .table()
        .context("table")?
        .wait_for(Duration::from_secs(20), |t| t.get("three").is_some())
        .await
        .context("the router sees the route")?;
    caller
        .registry()
        .context("registry")?
        .wait_for(Duration::from_secs(20), |s| {
            !s.instances("step").is_empty() && !s.instances("skynet.router").is_empty()
        })
        .await
        .context("the services registered")?;
    let web = HttpInitiator::start(
        RouteCaller::new(&caller, Duration::from_secs(10)),
        ([127, 0, 0, 1], 0).into(),
        HttpConfig::default(),
    )
    .await?;
    let addr = web.addr();

    let mut table = Vec::new();
    for &n in &IN_FLIGHT {
        let (mut routed, mut direct) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let mut connections = Vec::with_capacity(n);
            for _ in 0..n {
                connections.push(HttpCaller::connect(addr).await?);
            }
            let r = closed_loop(connections, WARMUP, measure).await?;
            let direct_callers = (0..n)
                .map(|_| DirectCaller(caller.client("step")))
                .collect();
            let d = closed_loop(direct_callers, WARMUP, measure).await?;
            eprintln!(
                "round {round}, {n} in flight: HTTP → router → 3 hops {:.0} req/s (p50 {:.0} µs); direct call {:.0} req/s (p50 {:.0} µs)",
                r.rps, r.p50_us, d.rps, d.p50_us
            );
            routed.push(r);
            direct.push(d);
        }
        table.push((n, routed, direct));
    }
    web.shutdown().await;
    for node in [&caller, &router_node, &worker, &store] {
        node.shutdown().await;
    }

    let median = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!("## Routes: HTTP initiator → router → 3 hops");
    println!();
    println!("Command: `{COMMAND}`");
    println!(
        "Settings: SKYNET_BENCH_SECS={} SKYNET_BENCH_ROUNDS={rounds}; one process, one Tokio runtime with 2 workers; {} build; medians.",
        measure.as_secs_f64(),
        skynet_benches::build_kind()
    );
    println!();
    println!(
        "| in flight | HTTP → router → 3 hops req/s | p50 µs | p99 µs | direct call req/s | p50 µs | p99 µs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, routed, direct) in &table {
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            median(routed, |s| s.rps),
            median(routed, |s| s.p50_us),
            median(routed, |s| s.p99_us),
            median(direct, |s| s.rps),
            median(direct, |s| s.p50_us),
            median(direct, |s| s.p99_us),
        );
    }
    Ok(())
}
