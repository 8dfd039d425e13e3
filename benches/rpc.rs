//! Side-by-side RPC benchmark on loopback: skynet typed calls (over the network and through the
//! same-process fast path), a plain quinn endpoint pair with the same mutual TLS, and tarpc over
//! TCP with bincode.
//!
//! Run with `cargo bench -p skynet-benches --bench rpc`. Every system is served and called from
//! one Tokio multi-thread runtime with 2 workers. Each cell (payload size x calls in flight) is a
//! closed loop: N tasks each issue calls back to back for a fixed time after a warm-up, and every
//! call's latency goes into an HDR histogram. All systems run for a cell before the next cell
//! starts, the whole matrix is repeated for several rounds, and the median of the rounds is
//! reported.
//!
//! Environment:
//! - `SKYNET_BENCH_SECS`: measured seconds per cell (default 2; fractions allowed).
//! - `SKYNET_BENCH_WARMUP_SECS`: warm-up seconds per cell (default 0.5).
//! - `SKYNET_BENCH_ROUNDS`: rounds (default 3).
//! - `SKYNET_BENCH_ONLY`: comma-separated parts of system names to run (e.g. `skynet typed,tarpc`),
//!   and `isolation` for the isolation test; default everything. Meant for profiling.
//! - `SKYNET_BENCH_CELLS`: comma-separated `payload/in-flight` cells to run (e.g. `64/64`);
//!   default the whole matrix. Meant for profiling.
//! - `SKYNET_BENCH_IN_FLIGHT`: comma-separated calls-in-flight levels (default `1,64`).
//! - `SKYNET_BENCH_PAYLOADS`: comma-separated payload sizes in bytes (default `64,4096`).
//! - `SKYNET_BENCH_WORKERS`: runtime worker threads (default 2, as the reference numbers use).
//! - `SKYNET_BENCH_RETRIES`: how many measurements in the whole run may be repeated because other
//!   processes used more than a quarter of a CPU while they ran (default 12, at most 2 for one
//!   measurement; 0 turns it off). The least disturbed attempt is kept, and the detail table says
//!   how busy the machine was.
//!
//! Payloads are `serde_bytes::ByteBuf` for skynet and tarpc, so both serialize the bytes with one
//! copy rather than element by element, as a plain `Vec<u8>` would. tonic runs gRPC over plain
//! HTTP/2 (no TLS) with a raw-bytes codec instead of protobuf; tarpc and tonic use TCP without
//! TLS, while skynet and raw quinn encrypt with TLS 1.3 as QUIC requires.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::{Buf as _, BufMut as _, Bytes};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde_bytes::ByteBuf;
use skynet::tls::{CLUSTER_SERVER_NAME, Credentials};
use skynet::{Context, Node, ServiceClient, ServiceDef, ServiceError};
use skynet_benches::{Only, context_switches, env_counts, env_or, process_cpu};
use tarpc::server::Channel as _;
use tarpc::tokio_serde::formats::Bincode;
use tonic::codegen::http;

/// The command this benchmark is meant to be run with.
const COMMAND: &str = "cargo bench -p skynet-benches --bench rpc";
/// Payload sizes of the matrix, unless `SKYNET_BENCH_PAYLOADS` says otherwise.
const PAYLOADS: [usize; 2] = [64, 4096];
/// Calls in flight of the matrix, unless `SKYNET_BENCH_IN_FLIGHT` says otherwise.
const IN_FLIGHT: [usize; 2] = [1, 64];
/// Runtime worker threads, unless `SKYNET_BENCH_WORKERS` says otherwise: client and server
/// share them.
const WORKERS: usize = 2;
/// How long the slow handler of the isolation test sleeps.
const SLOW_HANDLER: Duration = Duration::from_millis(5);
/// A measurement during which everything else on the machine used more CPUs than this is
/// repeated, while the retry budget lasts.
const QUIET_LIMIT: f64 = 0.25;
/// Repeats allowed for one measurement.
const RETRIES_PER_MEASUREMENT: usize = 2;
/// ALPN of the raw quinn pair.
const RAW_ALPN: &[u8] = b"bench-echo/1";
/// Largest echo the raw quinn pair reads.
const RAW_MAX: usize = 1 << 20;

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    runtime.block_on(run(settings))
}

struct Settings {
    measure: Duration,
    warmup: Duration,
    rounds: usize,
    workers: usize,
    retries: usize,
    in_flight: Vec<usize>,
    /// Payload sizes in bytes.
    payloads: Vec<usize>,
    only: Only,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let secs: f64 = env_or("SKYNET_BENCH_SECS", 2.0)?;
        let warmup: f64 = env_or("SKYNET_BENCH_WARMUP_SECS", 0.5)?;
        let rounds: usize = env_or("SKYNET_BENCH_ROUNDS", 3)?;
        let workers: usize = env_or("SKYNET_BENCH_WORKERS", WORKERS)?;
        let retries: usize = env_or("SKYNET_BENCH_RETRIES", 12)?;
        ensure!(workers > 0, "SKYNET_BENCH_WORKERS must be positive");
        ensure!(secs > 0.0, "SKYNET_BENCH_SECS must be positive");
        ensure!(
            warmup >= 0.0,
            "SKYNET_BENCH_WARMUP_SECS must not be negative"
        );
        ensure!(rounds > 0, "SKYNET_BENCH_ROUNDS must be positive");
        let in_flight = env_counts("SKYNET_BENCH_IN_FLIGHT", &IN_FLIGHT)?;
        let payloads = env_counts("SKYNET_BENCH_PAYLOADS", &PAYLOADS)?;
        ensure!(
            payloads.iter().all(|&n| n <= RAW_MAX),
            "SKYNET_BENCH_PAYLOADS: at most {RAW_MAX} bytes"
        );
        let only = Only::from_env();
        Ok(Self {
            measure: Duration::try_from_secs_f64(secs).context("SKYNET_BENCH_SECS")?,
            warmup: Duration::try_from_secs_f64(warmup).context("SKYNET_BENCH_WARMUP_SECS")?,
            rounds,
            workers,
            retries,
            in_flight,
            payloads,
            only,
        })
    }

    /// Whether `name` (a system name, or "isolation") is selected.
    fn selected(&self, name: &str) -> bool {
        self.only.selects(name)
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------------------------
// The systems under test.

/// The tarpc service: echoes its payload.
#[tarpc::service]
trait Echo {
    /// Returns `data` unchanged.
    async fn echo(data: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// One way of making an echo call.
#[derive(Clone)]
enum System {
    SkynetRemote(ServiceClient),
    SkynetLocal(ServiceClient),
    RawQuinn(quinn::Connection),
    Tarpc(EchoClient),
    Tonic(tonic::client::Grpc<tonic::transport::Channel>),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            Self::SkynetRemote(_) => "skynet typed call",
            Self::SkynetLocal(_) => "skynet local fast path",
            Self::RawQuinn(_) => "raw quinn (stream per call)",
            Self::Tarpc(_) => "tarpc (TCP, bincode)",
            Self::Tonic(_) => "tonic (gRPC, HTTP/2)",
        }
    }

    /// One echo call; checks that the reply is as long as the request.
    async fn call(&self, payload: &ByteBuf) -> Result<()> {
        let len = match self {
            Self::SkynetRemote(client) | Self::SkynetLocal(client) => client
                .call::<ByteBuf, ByteBuf, ServiceError>("echo", payload.clone())
                .await
                .context("skynet call")?
                .len(),
            Self::RawQuinn(conn) => {
                let (mut send, mut recv) = conn.open_bi().await.context("open_bi")?;
                send.write_all(payload).await.context("write_all")?;
                send.finish().context("finish")?;
                recv.read_to_end(RAW_MAX)
                    .await
                    .context("read_to_end")?
                    .len()
            }
            Self::Tarpc(client) => client
                .echo(tarpc::context::current(), payload.clone())
                .await
                .context("tarpc call")?
                .len(),
            Self::Tonic(client) => {
                let mut grpc = client.clone();
                grpc.ready().await.context("tonic channel")?;
                grpc.unary(
                    tonic::Request::new(Bytes::copy_from_slice(payload)),
                    http::uri::PathAndQuery::from_static(TONIC_PATH),
                    BytesCodec,
                )
                .await
                .context("tonic call")?
                .into_inner()
                .len()
            }
        };
        ensure!(
            len == payload.len(),
            "{}: echo of {} bytes came back as {len}",
            self.name(),
            payload.len()
        );
        Ok(())
    }
}

/// Everything that must stay alive while the systems are called.
struct Fixture {
    _dir: tempfile::TempDir,
    skynet_server: Node,
    skynet_caller: Node,
    skynet_remote: ServiceClient,
    skynet_local: ServiceClient,
    quinn_server: quinn::Endpoint,
    quinn_client: quinn::Endpoint,
    quinn_conn: quinn::Connection,
    tarpc: EchoClient,
    tonic: tonic::client::Grpc<tonic::transport::Channel>,
}

impl Fixture {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("temporary credentials directory")?;

        // skynet: two nodes, the server hosting a hand-built echo service.
        let service = ServiceDef::builder("echo", "1.0.0")
            .method("echo", |_ctx: Context, b: ByteBuf| async move {
                Ok::<_, ServiceError>(b)
            })
            .method("slow", |_ctx: Context, b: ByteBuf| async move {
                tokio::time::sleep(SLOW_HANDLER).await;
                Ok::<_, ServiceError>(b)
            });
        let skynet_server = Node::builder()
            .name("bench-server")
            .development_credentials(dir.path())
            .service(service)
            .start()
            .await
            .context("starting the skynet server node")?;
        let skynet_caller = Node::builder()
            .name("bench-caller")
            .development_credentials(dir.path())
            .start()
            .await
            .context("starting the skynet caller node")?;
        let skynet_remote = skynet_caller.client("echo").at(skynet_server.local_addr());
        let skynet_local = skynet_server.client("echo");

        // raw quinn: the same cluster credentials and mutual TLS, one stream per call.
        let (quinn_server, quinn_client, quinn_conn) = raw_quinn_pair(dir.path()).await?;

        // tarpc over TCP with bincode and TCP_NODELAY on both ends.
        let tarpc = tarpc_pair().await?;

        // tonic: gRPC over HTTP/2 on TCP with TCP_NODELAY, bytes in and out.
        let tonic = tonic_pair().await?;

        Ok(Self {
            _dir: dir,
            skynet_server,
            skynet_caller,
            skynet_remote,
            skynet_local,
            quinn_server,
            quinn_client,
            quinn_conn,
            tarpc,
            tonic,
        })
    }

    fn systems(&self) -> Vec<System> {
        vec![
            System::SkynetRemote(self.skynet_remote.clone()),
            System::SkynetLocal(self.skynet_local.clone()),
            System::RawQuinn(self.quinn_conn.clone()),
            System::Tarpc(self.tarpc.clone()),
            System::Tonic(self.tonic.clone()),
        ]
    }

    async fn stop(self) {
        self.skynet_caller.shutdown().await;
        self.skynet_server.shutdown().await;
        self.quinn_conn.close(0u32.into(), b"done");
        self.quinn_client.close(0u32.into(), b"done");
        self.quinn_server.close(0u32.into(), b"done");
        self.quinn_client.wait_idle().await;
        self.quinn_server.wait_idle().await;
    }
}

/// The transport settings skynet uses: many concurrent streams, a loopback sized initial RTT,
/// and keep-alives (the connection sits idle while the other systems are measured).
fn raw_transport() -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(10))?))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_concurrent_bidi_streams(1024u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .initial_rtt(Duration::from_millis(10));
    Ok(Arc::new(t))
}

async fn raw_quinn_pair(
    dir: &std::path::Path,
) -> Result<(quinn::Endpoint, quinn::Endpoint, quinn::Connection)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_creds = Credentials::development(dir, "raw-server")?;
    let client_creds = Credentials::development(dir, "raw-client")?;

    let server_tls = QuicServerConfig::try_from(server_creds.server_config(RAW_ALPN, &provider)?)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server_config.transport_config(raw_transport()?);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = quinn::Endpoint::server(server_config, loopback).context("raw quinn server")?;

    let client_tls = QuicClientConfig::try_from(client_creds.client_config(RAW_ALPN, &provider)?)?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
    client_config.transport_config(raw_transport()?);
    let mut client = quinn::Endpoint::client(loopback).context("raw quinn client")?;
    client.set_default_client_config(client_config);

    tokio::spawn(raw_accept_loop(server.clone()));
    let conn = client
        .connect(server.local_addr()?, CLUSTER_SERVER_NAME)?
        .await
        .context("raw quinn handshake")?;
    Ok((server, client, conn))
}

async fn raw_accept_loop(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(raw_echo(send, recv));
            }
        });
    }
}

async fn raw_echo(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<()> {
    let data = recv.read_to_end(RAW_MAX).await?;
    send.write_all(&data).await?;
    send.finish()?;
    Ok(())
}

async fn tarpc_pair() -> Result<EchoClient> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("tarpc listener")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if stream.set_nodelay(true).is_err() {
                continue;
            }
            let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
            let channel = tarpc::server::BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(EchoServer.serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    }),
            );
        }
    });
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("tarpc connect")?;
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    Ok(EchoClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// The one gRPC method the tonic server answers.
const TONIC_PATH: &str = "/bench.Echo/Echo";

/// A gRPC codec that passes message bytes through, standing in for protobuf's `bytes` field.
#[derive(Clone, Copy, Debug, Default)]
struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The unary echo method.
struct TonicEchoMethod;

impl tonic::server::UnaryService<Bytes> for TonicEchoMethod {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

/// The gRPC service, written as `tonic-build` would generate it, for one method.
#[derive(Clone, Copy, Debug)]
struct TonicEcho;

type BoxedResponse =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for TonicEcho {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != TONIC_PATH {
                return Ok(
                    tonic::Status::unimplemented(request.uri().path().to_owned()).into_http(),
                );
            }
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(grpc.unary(TonicEchoMethod, request).await)
        })
    }
}

async fn tonic_pair() -> Result<tonic::client::Grpc<tonic::transport::Channel>> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("tonic listener")?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .serve_with_incoming(TonicEcho, incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .context("tonic endpoint")?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("tonic connect")?;
    Ok(tonic::client::Grpc::new(channel))
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// One cell's outcome in one round.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Process CPU time per call in the measured window (clients, servers and runtime together).
    cpu_us_per_call: f64,
    /// CPUs' worth of time used by anything else during the measured window (0.0 to 2.0 here).
    others_cpus: f64,
    /// Thread context switches per call in the measured window.
    switches_per_call: f64,
}

fn new_histogram() -> Result<Histogram<u64>> {
    // Nanoseconds, from 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).context("histogram")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `inflight` closed-loop callers of `system` for the warm-up and the measured time.
/// Only calls started inside the measured window are recorded.
async fn closed_loop(
    system: &System,
    payload: &ByteBuf,
    inflight: usize,
    measure_from: Instant,
    stop_at: Instant,
) -> Result<Histogram<u64>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..inflight {
        let system = system.clone();
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut hist = new_histogram()?;
            loop {
                let start = Instant::now();
                if start >= stop_at {
                    break;
                }
                system.call(&payload).await?;
                if start >= measure_from {
                    hist.saturating_record(nanos(start.elapsed()));
                }
                // A same-process call may never wait, and a task that never waits would hold its
                // worker: let the scheduler run other tasks when the task's budget is spent.
                tokio::task::consume_budget().await;
            }
            Ok::<_, anyhow::Error>(hist)
        });
    }
    let mut total = new_histogram()?;
    while let Some(joined) = tasks.join_next().await {
        let hist = joined.context("caller task")??;
        total.add(&hist).context("merging histograms")?;
    }
    Ok(total)
}

fn summarize(hist: &Histogram<u64>, window: Duration, cpu: Option<CpuUse>) -> Sample {
    let calls = hist.len();
    Sample {
        rps: calls as f64 / window.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        cpu_us_per_call: cpu.map_or(f64::NAN, |c| {
            c.own.as_secs_f64() * 1e6 / calls.max(1) as f64
        }),
        others_cpus: cpu.map_or(f64::NAN, |c| c.others.as_secs_f64() / window.as_secs_f64()),
        switches_per_call: cpu.map_or(f64::NAN, |c| c.switches as f64 / calls.max(1) as f64),
    }
}

/// CPU time used between two instants: by this process, and by everything else on the machine
/// (other processes, and time the hypervisor took away).
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    own: Duration,
    others: Duration,
    switches: u64,
}

/// Busy CPU time of the whole machine so far (user, nice, system, irq, softirq and steal), from
/// `/proc/stat`.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>();
    Some(Duration::from_millis(busy * 10))
}

/// Measures CPU use between `from` and `to`.
fn cpu_meter(from: Instant, to: Instant) -> tokio::task::JoinHandle<Option<CpuUse>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let (own, all, switches) = (process_cpu()?, machine_busy()?, context_switches()?);
        tokio::time::sleep_until(to.into()).await;
        let own = process_cpu()?.saturating_sub(own);
        let all = machine_busy()?.saturating_sub(all);
        Some(CpuUse {
            own,
            others: all.saturating_sub(own),
            switches: context_switches()?.saturating_sub(switches),
        })
    })
}

async fn run_cell(
    system: &System,
    payload: &ByteBuf,
    inflight: usize,
    settings: &Settings,
) -> Result<Sample> {
    let measure_from = Instant::now() + settings.warmup;
    let stop_at = measure_from + settings.measure;
    let cpu = cpu_meter(measure_from, stop_at);
    let hist = closed_loop(system, payload, inflight, measure_from, stop_at).await?;
    let cpu = cpu.await.context("CPU meter")?;
    Ok(summarize(&hist, settings.measure, cpu))
}

/// Fast calls with, optionally, one slow call always in flight beside them.
#[derive(Clone, Copy, Debug)]
struct IsolationSample {
    fast: Sample,
    slow_calls: u64,
    slow_p50_us: f64,
}

async fn run_isolation(
    fixture: &Fixture,
    with_slow: bool,
    settings: &Settings,
) -> Result<IsolationSample> {
    let measure_from = Instant::now() + settings.warmup;
    let stop_at = measure_from + settings.measure;
    let slow = with_slow.then(|| {
        let client = fixture.skynet_remote.clone();
        tokio::spawn(async move {
            let mut hist = new_histogram()?;
            let payload = ByteBuf::from(vec![7u8; 64]);
            loop {
                let start = Instant::now();
                if start >= stop_at {
                    break;
                }
                client
                    .call::<ByteBuf, ByteBuf, ServiceError>("slow", payload.clone())
                    .await
                    .context("slow call")?;
                if start >= measure_from {
                    hist.saturating_record(nanos(start.elapsed()));
                }
            }
            Ok::<_, anyhow::Error>(hist)
        })
    });
    let system = System::SkynetRemote(fixture.skynet_remote.clone());
    let payload = ByteBuf::from(vec![7u8; 64]);
    let cpu = cpu_meter(measure_from, stop_at);
    let fast = closed_loop(&system, &payload, 64, measure_from, stop_at).await?;
    let cpu = cpu.await.context("CPU meter")?;
    let (slow_calls, slow_p50_us) = match slow {
        Some(task) => {
            let hist = task.await.context("slow caller task")??;
            (hist.len(), hist.value_at_quantile(0.5) as f64 / 1000.0)
        }
        None => (0, 0.0),
    };
    Ok(IsolationSample {
        fast: summarize(&fast, settings.measure, cpu),
        slow_calls,
        slow_p50_us,
    })
}

/// Runs a measurement, and runs it again (after a pause) while other processes were busy during
/// it and the run's retry budget lasts; keeps the least disturbed attempt.
async fn quietly<T, F, Fut>(
    budget: &mut usize,
    label: &str,
    others: impl Fn(&T) -> f64,
    mut run: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut best = run().await?;
    let mut last = others(&best);
    let mut tries = 0;
    while last > QUIET_LIMIT && *budget > 0 && tries < RETRIES_PER_MEASUREMENT {
        *budget -= 1;
        tries += 1;
        eprintln!(
            "{label}: other processes used {last:.2} CPUs meanwhile; measuring again in 3 s \
             ({} retries left)",
            *budget
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let again = run().await?;
        last = others(&again);
        if last < others(&best) {
            best = again;
        }
    }
    Ok(best)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_sample(samples: &[Sample]) -> Sample {
    Sample {
        rps: median(samples.iter().map(|s| s.rps).collect()),
        p50_us: median(samples.iter().map(|s| s.p50_us).collect()),
        p99_us: median(samples.iter().map(|s| s.p99_us).collect()),
        cpu_us_per_call: median(samples.iter().map(|s| s.cpu_us_per_call).collect()),
        others_cpus: samples.iter().map(|s| s.others_cpus).fold(0.0, f64::max),
        switches_per_call: median(samples.iter().map(|s| s.switches_per_call).collect()),
    }
}

fn payload_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn run(settings: Settings) -> Result<()> {
    let load_before = load_average();
    let fixture = Fixture::start().await?;
    let systems: Vec<System> = fixture
        .systems()
        .into_iter()
        .filter(|s| settings.selected(s.name()))
        .collect();
    let isolation_selected = settings.selected("isolation");
    let payloads: Vec<ByteBuf> = settings
        .payloads
        .iter()
        .map(|&n| ByteBuf::from(vec![0xA5u8; n]))
        .collect();
    for system in &systems {
        for payload in &payloads {
            system.call(payload).await.context("first call")?;
        }
    }

    let wanted_cells = std::env::var("SKYNET_BENCH_CELLS").ok();
    let cells: Vec<(usize, usize)> = settings
        .payloads
        .iter()
        .flat_map(|&p| settings.in_flight.iter().map(move |&n| (p, n)))
        .filter(|(p, n)| {
            wanted_cells
                .as_ref()
                .is_none_or(|w| w.split(',').any(|c| c.trim() == format!("{p}/{n}")))
        })
        .collect();
    // samples[cell][system] holds one sample per round.
    let mut samples = vec![vec![Vec::<Sample>::new(); systems.len()]; cells.len()];
    let mut isolation: [Vec<IsolationSample>; 2] = [Vec::new(), Vec::new()];

    let per_cell = settings.warmup + settings.measure;
    let cell_runs = cells.len() * systems.len() + if isolation_selected { 2 } else { 0 };
    eprintln!(
        "running {} rounds of {cell_runs} runs of {:.1} s each (about {:.0} s)",
        settings.rounds,
        per_cell.as_secs_f64(),
        (per_cell * u32::try_from(cell_runs * settings.rounds).unwrap_or(u32::MAX)).as_secs_f64()
    );
    let mut budget = settings.retries;
    for round in 1..=settings.rounds {
        for (c, &(size, inflight)) in cells.iter().enumerate() {
            let index = settings.payloads.iter().position(|&p| p == size);
            let payload = &payloads[index.unwrap_or(0)];
            for (s, system) in systems.iter().enumerate() {
                let label = format!(
                    "round {round}: {} at {}, {inflight} in flight",
                    system.name(),
                    payload_label(size)
                );
                let sample = quietly(
                    &mut budget,
                    &label,
                    |s: &Sample| s.others_cpus,
                    || run_cell(system, payload, inflight, &settings),
                )
                .await
                .context(label)?;
                eprintln!(
                    "round {round}: {:<28} {:>6} {:>3} in flight: {:>9.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  cpu {:>6.2} us/call  {:>5.2} switches/call  others {:.2} CPUs",
                    system.name(),
                    payload_label(size),
                    inflight,
                    sample.rps,
                    sample.p50_us,
                    sample.p99_us,
                    sample.cpu_us_per_call,
                    sample.switches_per_call,
                    sample.others_cpus
                );
                samples[c][s].push(sample);
            }
        }
        if !isolation_selected {
            continue;
        }
        for (i, with_slow) in [false, true].into_iter().enumerate() {
            let sample = quietly(
                &mut budget,
                &format!("round {round}: isolation"),
                |s: &IsolationSample| s.fast.others_cpus,
                || run_isolation(&fixture, with_slow, &settings),
            )
            .await
            .context("isolation run")?;
            eprintln!(
                "round {round}: isolation, slow call {}: {:>9.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  cpu {:>6.2} us/call  others {:.2} CPUs  ({} slow calls, p50 {:.1} us)",
                if with_slow { "in flight" } else { "absent   " },
                sample.fast.rps,
                sample.fast.p50_us,
                sample.fast.p99_us,
                sample.fast.cpu_us_per_call,
                sample.fast.others_cpus,
                sample.slow_calls,
                sample.slow_p50_us
            );
            isolation[i].push(sample);
        }
    }
    fixture.stop().await;
    let load = format!(
        "{load_before} before, {} after; {} of {} repeats for a busy machine used",
        load_average(),
        settings.retries - budget,
        settings.retries
    );

    report(&settings, &load, &systems, &cells, &samples, &isolation);
    Ok(())
}

fn report(
    settings: &Settings,
    load: &str,
    systems: &[System],
    cells: &[(usize, usize)],
    samples: &[Vec<Vec<Sample>>],
    isolation: &[Vec<IsolationSample>; 2],
) {
    let argv: Vec<String> = std::env::args().collect();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!();
    println!("## skynet RPC benchmark");
    println!();
    println!("Command: `{COMMAND}`");
    println!(
        "Settings: SKYNET_BENCH_SECS={} SKYNET_BENCH_WARMUP_SECS={} SKYNET_BENCH_ROUNDS={}; \
         loopback; one Tokio multi-thread runtime with {} workers shared by clients and \
         servers; {cpus} CPUs visible; {} build; median of {} rounds.",
        settings.measure.as_secs_f64(),
        settings.warmup.as_secs_f64(),
        settings.rounds,
        settings.workers,
        skynet_benches::build_kind(),
        settings.rounds,
    );
    println!("Binary: `{}`", argv.join(" "));
    println!("Load average (1/5/15 min): {load}.");
    if settings.in_flight != IN_FLIGHT {
        println!("SKYNET_BENCH_IN_FLIGHT={:?}", settings.in_flight);
    }
    if settings.payloads != PAYLOADS {
        println!("SKYNET_BENCH_PAYLOADS={:?}", settings.payloads);
    }
    if let Some(only) = settings.only.parts() {
        println!("SKYNET_BENCH_ONLY={:?}: a partial run.", only.join(","));
    }
    println!();
    println!("| system | payload | in flight | req/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let medians: Vec<Vec<Sample>> = samples
        .iter()
        .map(|per_system| per_system.iter().map(|s| median_sample(s)).collect())
        .collect();
    for (c, &(size, inflight)) in cells.iter().enumerate() {
        for (s, system) in systems.iter().enumerate() {
            let m = medians[c][s];
            println!(
                "| {} | {} | {inflight} | {:.0} | {:.1} | {:.1} |",
                system.name(),
                payload_label(size),
                m.rps,
                m.p50_us,
                m.p99_us
            );
        }
    }

    println!();
    println!(
        "Detail: req/s range over the rounds, and CPU time per call (whole process: callers, \
         servers and runtime together; median of rounds), thread context switches per call (median; \
         mostly runtime workers parking for want of work and being woken again), and the most CPU time anything else on \
         the machine took during a round (in CPUs; near 0 means the run had the machine to \
         itself). Rows as above."
    );
    println!();
    println!(
        "| system | payload | in flight | req/s min | req/s max | CPU µs/call | switches/call | others' CPUs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (c, &(size, inflight)) in cells.iter().enumerate() {
        for (s, system) in systems.iter().enumerate() {
            let rounds = &samples[c][s];
            let min = rounds.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min);
            let max = rounds.iter().map(|r| r.rps).fold(0.0, f64::max);
            println!(
                "| {} | {} | {inflight} | {min:.0} | {max:.0} | {:.2} | {:.2} | {:.2} |",
                system.name(),
                payload_label(size),
                medians[c][s].cpu_us_per_call,
                medians[c][s].switches_per_call,
                medians[c][s].others_cpus
            );
        }
    }

    let index = |wanted: fn(&System) -> bool| systems.iter().position(wanted);
    let remote = index(|s| matches!(s, System::SkynetRemote(_)));
    let quinn = index(|s| matches!(s, System::RawQuinn(_)));
    let tarpc = index(|s| matches!(s, System::Tarpc(_)));
    let tonic = index(|s| matches!(s, System::Tonic(_)));
    if let (Some(sk), Some(q), Some(t)) = (remote, quinn, tarpc) {
        println!();
        println!(
            "Ratios (skynet typed call against the others; req/s above 1.00x means skynet is faster):"
        );
        println!();
        for (c, &(size, inflight)) in cells.iter().enumerate() {
            let m = &medians[c];
            let vs_tonic = tonic.map_or_else(String::new, |g| {
                format!(", skynet/tonic req/s = {:.2}x", m[sk].rps / m[g].rps)
            });
            println!(
                "- {} / {inflight} in flight: skynet/raw-quinn req/s = {:.2}x, skynet/tarpc req/s = {:.2}x{vs_tonic}",
                payload_label(size),
                m[sk].rps / m[q].rps,
                m[sk].rps / m[t].rps
            );
        }
        for (c, &(size, inflight)) in cells.iter().enumerate() {
            if inflight != 1 {
                continue;
            }
            let m = &medians[c];
            println!(
                "- {} / 1 in flight: skynet p50 {:.1} µs vs raw quinn p50 {:.1} µs ({:.2}x)",
                payload_label(size),
                m[sk].p50_us,
                m[q].p50_us,
                m[sk].p50_us / m[q].p50_us
            );
        }
    }

    if isolation.iter().any(Vec::is_empty) {
        return;
    }
    println!();
    println!(
        "Isolation: skynet typed call, 64 B, 64 in flight, with and without one call to a handler \
         that sleeps {} ms always in flight on the same connection (median of {} rounds):",
        SLOW_HANDLER.as_millis(),
        settings.rounds
    );
    println!();
    println!(
        "| slow call | fast req/s | fast p50 µs | fast p99 µs | slow calls completed | slow p50 µs | others' CPUs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, label) in ["absent", "in flight"].into_iter().enumerate() {
        let fast = median_sample(&isolation[i].iter().map(|s| s.fast).collect::<Vec<_>>());
        let slow_calls = median(isolation[i].iter().map(|s| s.slow_calls as f64).collect());
        let slow_p50 = median(isolation[i].iter().map(|s| s.slow_p50_us).collect());
        let (slow_calls, slow_p50) = if i == 0 {
            ("-".to_owned(), "-".to_owned())
        } else {
            (format!("{slow_calls:.0}"), format!("{slow_p50:.0}"))
        };
        println!(
            "| {label} | {:.0} | {:.1} | {:.1} | {slow_calls} | {slow_p50} | {:.2} |",
            fast.rps, fast.p50_us, fast.p99_us, fast.others_cpus
        );
    }
}
