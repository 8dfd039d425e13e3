//! Config store benchmark: skynet's embedded store against etcd, 3 durable members each, one
//! load generator for both.
//!
//! Run with `cargo bench -p skynet-benches --bench config_store`. The benchmark starts
//!
//! - skynet: 3 member processes (this executable re-run in member mode, see [`member_main`]),
//!   each a voter with its redb file under a temporary directory, bound to a fixed loopback port so
//!   a restarted member keeps its address; the load comes from a client node (not a member) in this
//!   process, which reaches the store through the members;
//! - etcd: a 3-member cluster from Debian's `etcd-server`, started and stopped by `benches/etcd.sh`
//!   with its data in the same temporary directory; the load comes from a gRPC client in this
//!   process (tonic, with the few etcd messages written out by hand so that no `protoc` is needed).
//!   Where etcd cannot be had, it is skipped with a message and skynet still runs.
//!
//! Measured, in rounds that alternate between the systems: puts (8 B keys over a fixed key space,
//! 256 B values) from 1 and from 64 closed-loop clients, linearizable reads from 1 client, then
//! leader failover: kill -9 the leader, time until the first write that succeeds after it and
//! until a surviving member names a new leader (the killed member is restarted from its data and
//! the cluster settles before the next kill). Per phase, the CPU time of the system's processes
//! and of everything else on the machine is reported too: the build machine is shared.
//!
//! Environment:
//! - `SKYNET_BENCH_SECS`: measured seconds per phase (default 5; fractions allowed).
//! - `SKYNET_BENCH_WARMUP_SECS`: warm-up seconds per phase (default 1).
//! - `SKYNET_BENCH_ROUNDS`: rounds of the load phases (default 3; the median is reported).
//! - `SKYNET_BENCH_FAILOVERS`: leader kills per system (default 3; the median is reported).
//! - `SKYNET_BENCH_SYSTEMS`: `skynet`, `etcd` or both (default `skynet,etcd`).
//! - `SKYNET_BENCH_ETCD_CONNECTIONS`: gRPC connections the etcd clients share (default 4).
//! - `SKYNET_BENCH_KEYS`: size of the key space (default 1000).
//! - `SKYNET_BENCH_DIR`: where the temporary data directory goes (default the system's).
//! - `SKYNET_BENCH_VERBOSE`: print each distinct error seen while a failover is under way.
//! - `RUST_LOG`: log filter of the skynet members and the client node (to stderr); off by default.
//! - `SKYNET_BENCH_IDLE_TIMEOUT_MS`: QUIC idle timeout of the skynet members and client node
//!   (keep-alive a quarter of it); default skynet's own (10 s). For studying failover.
//!
//! Every process started here is stopped at the end, also on failure: skynet members are killed
//! when their handles drop and exit on their own when this process's end of their stdin closes;
//! the etcd members are stopped by `etcd.sh stop` on drop and by the script's watchdog otherwise.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use hdrhistogram::Histogram;
use skynet::{Node, StoreConfig};
use skynet_benches::env_or;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::codegen::http::uri::PathAndQuery;

/// The command this benchmark is meant to be run with.
const COMMAND: &str = "cargo bench -p skynet-benches --bench config_store";
/// Set (to the member's name) when this executable runs as a skynet store member.
const MEMBER_ENV: &str = "SKYNET_BENCH_STORE_MEMBER";
/// Loopback ports of the 3 skynet members.
const SKYNET_PORTS: [u16; 3] = [24100, 24101, 24102];
/// Loopback client ports of the 3 etcd members (`etcd.sh` uses the same).
const ETCD_PORTS: [u16; 3] = [23790, 23791, 23792];
/// Value size of every put.
const VALUE_LEN: usize = 256;
/// Concurrency levels of the put phases.
const CLIENTS: [usize; 2] = [1, 64];
/// One etcd write attempt during failover gives up after this long and is sent to the next
/// member: a client that waited out a dead leader's request timeout (seconds) would measure its
/// own patience, not the cluster's failover.
const FAILOVER_ATTEMPT: Duration = Duration::from_millis(200);
/// A failover that has not finished after this long fails the benchmark.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// How long a cluster may take to settle (all members up, one leader everyone agrees on).
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// The whole run is bounded: past this, everything is stopped and the run fails.
const RUN_LIMIT: Duration = Duration::from_secs(20 * 60);

fn main() -> Result<()> {
    // `RUST_LOG` turns on logs (to stderr) of the members and of the client node, for studying a run.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    if let Ok(name) = std::env::var(MEMBER_ENV) {
        return member_main(&name);
    }
    let settings = Settings::from_env()?;
    // The load generator gets the same 2 workers as every server process on this 2-core machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    runtime.block_on(async {
        tokio::time::timeout(RUN_LIMIT, run(settings))
            .await
            .unwrap_or_else(|_| bail!("the benchmark did not finish within {RUN_LIMIT:?}"))
    })
}

struct Settings {
    measure: Duration,
    warmup: Duration,
    rounds: usize,
    failovers: usize,
    skynet: bool,
    etcd: bool,
    etcd_connections: usize,
    keys: usize,
    dir: Option<PathBuf>,
}

/// The transport settings of every skynet node here: skynet's defaults unless
/// `SKYNET_BENCH_IDLE_TIMEOUT_MS` says otherwise.
fn rpc_config() -> Result<skynet::RpcConfig> {
    let mut config = skynet::RpcConfig::default();
    if let Ok(ms) = std::env::var("SKYNET_BENCH_IDLE_TIMEOUT_MS") {
        let ms: u64 = ms.trim().parse().context("SKYNET_BENCH_IDLE_TIMEOUT_MS")?;
        config.idle_timeout = Duration::from_millis(ms);
        config.keep_alive = Duration::from_millis(ms / 4);
    }
    Ok(config)
}

impl Settings {
    fn from_env() -> Result<Self> {
        let secs: f64 = env_or("SKYNET_BENCH_SECS", 5.0)?;
        let warmup: f64 = env_or("SKYNET_BENCH_WARMUP_SECS", 1.0)?;
        ensure!(secs > 0.0, "SKYNET_BENCH_SECS must be positive");
        ensure!(
            warmup >= 0.0,
            "SKYNET_BENCH_WARMUP_SECS must not be negative"
        );
        let systems: String = env_or("SKYNET_BENCH_SYSTEMS", "skynet,etcd".to_owned())?;
        let systems: Vec<&str> = systems.split(',').map(str::trim).collect();
        ensure!(
            systems.iter().all(|s| ["skynet", "etcd"].contains(s)),
            "SKYNET_BENCH_SYSTEMS takes skynet and/or etcd"
        );
        let settings = Self {
            measure: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64(warmup),
            rounds: env_or("SKYNET_BENCH_ROUNDS", 3)?,
            failovers: env_or("SKYNET_BENCH_FAILOVERS", 3)?,
            skynet: systems.contains(&"skynet"),
            etcd: systems.contains(&"etcd"),
            etcd_connections: env_or("SKYNET_BENCH_ETCD_CONNECTIONS", 4)?,
            keys: env_or("SKYNET_BENCH_KEYS", 1000)?,
            dir: std::env::var_os("SKYNET_BENCH_DIR").map(PathBuf::from),
        };
        ensure!(settings.rounds > 0, "SKYNET_BENCH_ROUNDS must be positive");
        ensure!(
            settings.etcd_connections > 0,
            "SKYNET_BENCH_ETCD_CONNECTIONS must be positive"
        );
        ensure!(
            (1..=10_000_000).contains(&settings.keys),
            "SKYNET_BENCH_KEYS must be 1..=10000000 (keys are 8 bytes)"
        );
        Ok(settings)
    }
}

// ---------------------------------------------------------------------------------------------
// skynet member mode.

/// Runs one store member: `SKYNET_BENCH_STORE_{DIR,BIND,CREDS,SEEDS}` say where. Prints
/// `ready ADDR` once it follows a leader, then `status ID LEADER TERM VOTERS` on every change of
/// its view, and stops (gracefully) when its stdin closes: the benchmark closes it, or dies.
fn member_main(name: &str) -> Result<()> {
    let var = |key: &str| {
        std::env::var(format!("SKYNET_BENCH_STORE_{key}"))
            .with_context(|| format!("member {name}: SKYNET_BENCH_STORE_{key} is not set"))
    };
    let dir = PathBuf::from(var("DIR")?);
    let bind: SocketAddr = var("BIND")?.parse().context("SKYNET_BENCH_STORE_BIND")?;
    let creds = PathBuf::from(var("CREDS")?);
    let seeds = var("SEEDS")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<SocketAddr>, _>>()
        .context("SKYNET_BENCH_STORE_SEEDS")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    runtime.block_on(async move {
        let config = if seeds.is_empty() {
            StoreConfig::bootstrap(dir)
        } else {
            StoreConfig::join(dir, seeds)
        };
        let node = Node::builder()
            .name(name)
            .bind(bind)
            .config(rpc_config()?)
            .development_credentials(creds)
            .store(config)
            .start()
            .await
            .with_context(|| format!("starting member {name}"))?;
        let store = node.store().context("the member has no store")?;
        println!("ready {}", node.local_addr());
        let status = tokio::spawn(async move {
            // Leadership changes are printed at once; progress (the applied index) at most every
            // 50 ms, so that the load phases do not pay for a line per write.
            // (leader, term, voter count) and the applied index, as last printed.
            type Printed = ((Option<u64>, u64, usize), Option<u64>);
            let view = |s: &skynet::store::StoreStatus| (s.leader, s.term, s.voters.len());
            let mut last: Option<Printed> = None;
            loop {
                let seen = last;
                match store
                    .wait_for(Duration::from_secs(3600), move |s| {
                        seen != Some((view(s), s.last_applied))
                    })
                    .await
                {
                    Ok(s) => {
                        println!(
                            "status {} {} {} {} {}",
                            s.id,
                            s.leader.unwrap_or(0),
                            s.term,
                            s.voters.len(),
                            s.last_applied.unwrap_or(0)
                        );
                        let only_progress = seen.is_some_and(|(v, _)| v == view(&s));
                        last = Some((view(&s), s.last_applied));
                        if only_progress {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        // Read until end of file: the benchmark holds the other end.
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink()).await;
        status.abort();
        node.shutdown().await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// skynet cluster, driven from the benchmark.

/// What a member last reported.
#[derive(Debug, Clone, Copy)]
struct MemberView {
    id: u64,
    leader: u64,
    voters: usize,
    applied: u64,
}

struct SkynetMember {
    child: Option<Child>,
    view: Arc<Mutex<Option<MemberView>>>,
}

struct SkynetCluster {
    exe: PathBuf,
    root: PathBuf,
    creds: PathBuf,
    members: Vec<SkynetMember>,
}

fn member_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], SKYNET_PORTS[i]))
}

impl SkynetCluster {
    async fn start(root: &Path) -> Result<Self> {
        let creds = root.join("credentials");
        // Made once here, so members starting together never race to create the CA.
        skynet::tls::Credentials::development(&creds, "bench").context("credentials")?;
        let mut cluster = Self {
            exe: std::env::current_exe().context("current_exe")?,
            root: root.to_owned(),
            creds,
            members: Vec::new(),
        };
        for i in 0..SKYNET_PORTS.len() {
            cluster.members.push(SkynetMember {
                child: None,
                view: Arc::default(),
            });
            cluster.spawn(i).await?;
        }
        cluster.settle().await?;
        Ok(cluster)
    }

    /// Starts member `i` (again) and waits for its ready line.
    async fn spawn(&mut self, i: usize) -> Result<()> {
        // The first member bootstraps (harmless on restart); the others join through it, and on
        // restart find their cluster from their own data.
        let seeds = if i == 0 {
            String::new()
        } else {
            member_addr(0).to_string()
        };
        let mut child = Command::new(&self.exe)
            .env(MEMBER_ENV, format!("member-{i}"))
            .env(
                "SKYNET_BENCH_STORE_DIR",
                self.root.join(format!("skynet-{i}")),
            )
            .env("SKYNET_BENCH_STORE_BIND", member_addr(i).to_string())
            .env("SKYNET_BENCH_STORE_CREDS", &self.creds)
            .env("SKYNET_BENCH_STORE_SEEDS", seeds)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a skynet member")?;
        let stdout = child.stdout.take().context("member stdout")?;
        // A fresh view per start: the reader of a killed member's output may still clear its own.
        let view: Arc<Mutex<Option<MemberView>>> = Arc::default();
        self.members[i].view = view.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["ready", _addr] => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    ["status", id, leader, _term, voters, applied] => {
                        *view.lock().unwrap_or_else(PoisonError::into_inner) = Some(MemberView {
                            id: id.parse().unwrap_or(0),
                            leader: leader.parse().unwrap_or(0),
                            voters: voters.parse().unwrap_or(0),
                            applied: applied.parse().unwrap_or(0),
                        });
                    }
                    _ => {}
                }
            }
            // The member is gone: it no longer counts.
            *view.lock().unwrap_or_else(PoisonError::into_inner) = None;
        });
        self.members[i].child = Some(child);
        tokio::time::timeout(SETTLE_LIMIT, ready_rx)
            .await
            .context("a skynet member did not get ready")?
            .context("a skynet member exited before it was ready")?;
        Ok(())
    }

    fn views(&self) -> Vec<Option<MemberView>> {
        self.members
            .iter()
            .map(|m| *m.view.lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }

    /// The index of the member every live member names as leader, once all are up and agree.
    /// Also waits for every member to have applied the same log: a restarted member has caught up.
    fn agreed_leader(&self) -> Option<usize> {
        let views = self.views();
        let first = views.first().copied().flatten()?;
        let agree = views.iter().all(|v| {
            v.is_some_and(|v| {
                v.leader == first.leader
                    && v.leader != 0
                    && v.voters == 3
                    && v.applied == first.applied
            })
        });
        if !agree {
            return None;
        }
        views
            .iter()
            .position(|v| v.is_some_and(|v| v.id == first.leader))
    }

    async fn settle(&self) -> Result<usize> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            if let Some(leader) = self.agreed_leader() {
                return Ok(leader);
            }
            ensure!(
                Instant::now() < deadline,
                "skynet members did not agree on a leader: {:?}",
                self.views()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        let child = self.members[i]
            .child
            .as_mut()
            .context("member not running")?;
        // SIGKILL: no shutdown, no flush.
        child.start_kill().context("kill -9")?;
        *self.members[i]
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    async fn restart(&mut self, i: usize) -> Result<()> {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.wait().await;
        }
        self.spawn(i).await
    }

    async fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // Closing stdin asks for a graceful stop; kill what does not stop in time.
                drop(child.stdin.take());
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// etcd: the cluster (through etcd.sh) and a minimal gRPC client.

fn etcd_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etcd.sh")
}

fn etcd_sh(args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new("bash")
        .arg(etcd_script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running etcd.sh")
}

/// The etcd members, stopped when this drops.
struct EtcdCluster {
    dir: PathBuf,
    dir_arg: String,
    running: bool,
}

impl EtcdCluster {
    /// Starts the cluster, or says why etcd is skipped (`Ok(None)`).
    fn start(root: &Path) -> Result<Option<Self>> {
        let ensure = etcd_sh(&["ensure"])?;
        if !ensure.status.success() {
            println!(
                "etcd: skipped ({})",
                String::from_utf8_lossy(&ensure.stderr).trim()
            );
            return Ok(None);
        }
        println!("etcd: {}", String::from_utf8_lossy(&ensure.stdout).trim());
        let dir = root.join("etcd");
        let dir_arg = dir.to_str().context("non-UTF-8 temp dir")?.to_owned();
        let mut cluster = Self {
            dir,
            dir_arg,
            running: true,
        };
        let pid = std::process::id().to_string();
        let out = etcd_sh(&["start", &cluster.dir_arg, &pid])?;
        if !out.status.success() {
            cluster.stop();
            bail!(
                "etcd did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        Ok(Some(cluster))
    }

    fn kill(&self, i: usize) -> Result<()> {
        let out = etcd_sh(&["kill", &self.dir_arg, &i.to_string()])?;
        ensure!(out.status.success(), "etcd.sh kill {i} failed");
        Ok(())
    }

    fn restart(&self, i: usize) -> Result<()> {
        let out = etcd_sh(&["member", &self.dir_arg, &i.to_string()])?;
        ensure!(
            out.status.success(),
            "etcd.sh member {i} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            match etcd_sh(&["stop", &self.dir_arg]) {
                Ok(out) if out.status.success() => {}
                _ => eprintln!(
                    "etcd.sh stop failed; members may be left under {:?}",
                    self.dir
                ),
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The etcd API messages the benchmark uses, with their field numbers from etcd's `rpc.proto`
/// and `kv.proto` (package `etcdserverpb`). Fields left out are skipped when decoding.
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ResponseHeader {
        #[prost(uint64, tag = "2")]
        pub(super) member_id: u64,
        #[prost(int64, tag = "3")]
        pub(super) revision: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub(super) header: Option<ResponseHeader>,
    }

    /// A range of one key; `serializable` false (the default) makes it linearizable.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) key: Vec<u8>,
        #[prost(bool, tag = "7")]
        pub(super) serializable: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) key: Vec<u8>,
        #[prost(bytes = "vec", tag = "5")]
        pub(super) value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub(super) header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub(super) kvs: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct StatusRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub(super) header: Option<ResponseHeader>,
        #[prost(uint64, tag = "4")]
        pub(super) leader: u64,
        #[prost(uint64, tag = "7")]
        pub(super) raft_applied_index: u64,
    }
}

const ETCD_PUT: &str = "/etcdserverpb.KV/Put";
const ETCD_RANGE: &str = "/etcdserverpb.KV/Range";
const ETCD_STATUS: &str = "/etcdserverpb.Maintenance/Status";

/// A protobuf codec for one request and one response type.
struct Prost<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for Prost<E, D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<E, D> tonic::codec::Codec for Prost<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = Prost<E, ()>;
    type Decoder = Prost<(), D>;

    fn encoder(&mut self) -> Self::Encoder {
        Prost::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Prost::default()
    }
}

impl<E: prost::Message + Send + 'static> tonic::codec::Encoder for Prost<E, ()> {
    type Item = E;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: E,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<D: prost::Message + Default + Send + 'static> tonic::codec::Decoder for Prost<(), D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<D>, tonic::Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

type Grpc = tonic::client::Grpc<tonic::transport::Channel>;

async fn unary<Q, R>(grpc: &Grpc, path: &'static str, req: Q) -> Result<R>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = grpc.clone();
    grpc.ready().await.context("etcd channel")?;
    Ok(grpc
        .unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(path),
            Prost::<Q, R>::default(),
        )
        .await?
        .into_inner())
}

fn etcd_channel(i: usize) -> Result<tonic::transport::Channel> {
    // Lazy: a channel to a killed member reconnects once it is back.
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", ETCD_PORTS[i]))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(100))
            .connect_lazy(),
    )
}

/// The etcd load generator's client: `connections` channels to the leader for the load, one
/// channel per member for finding the leader and for failover.
struct Etcd {
    to_leader: Vec<Grpc>,
    members: Vec<Grpc>,
}

impl Etcd {
    fn new(connections: usize) -> Result<Self> {
        let members = (0..ETCD_PORTS.len())
            .map(|i| etcd_channel(i).map(Grpc::new))
            .collect::<Result<Vec<_>>>()?;
        let mut etcd = Self {
            to_leader: Vec::new(),
            members,
        };
        etcd.to_leader = (0..connections)
            .map(|_| etcd_channel(0).map(Grpc::new))
            .collect::<Result<_>>()?;
        Ok(etcd)
    }

    /// The index and member id of the member all three name as leader, once they agree and have
    /// applied the same log (a restarted member has caught up).
    async fn agreed_leader(&self) -> Option<(usize, u64)> {
        let mut ids = Vec::new();
        let mut leader = None;
        let mut applied = None;
        for m in &self.members {
            let status: pb::StatusResponse = tokio::time::timeout(
                Duration::from_secs(1),
                unary(m, ETCD_STATUS, pb::StatusRequest {}),
            )
            .await
            .ok()?
            .ok()?;
            if status.leader == 0
                || leader.is_some_and(|l| l != status.leader)
                || applied.is_some_and(|a| a != status.raft_applied_index)
            {
                return None;
            }
            leader = Some(status.leader);
            applied = Some(status.raft_applied_index);
            ids.push(status.header.map_or(0, |h| h.member_id));
        }
        let leader = leader?;
        ids.iter().position(|id| *id == leader).map(|i| (i, leader))
    }

    /// The leader a member other than `dead` names, if it names one other than `old`.
    async fn new_leader(&self, dead: usize, old: u64) -> bool {
        for (i, m) in self.members.iter().enumerate() {
            if i == dead {
                continue;
            }
            let status = tokio::time::timeout(
                Duration::from_millis(100),
                unary::<_, pb::StatusResponse>(m, ETCD_STATUS, pb::StatusRequest {}),
            )
            .await;
            if let Ok(Ok(status)) = status
                && status.leader != 0
                && status.leader != old
            {
                return true;
            }
        }
        false
    }

    async fn settle(&self) -> Result<(usize, u64)> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            ensure!(
                Instant::now() < deadline,
                "etcd members did not agree on a leader"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Points the load channels at member `leader`.
    fn aim(&mut self, leader: usize) -> Result<()> {
        for ch in &mut self.to_leader {
            *ch = Grpc::new(etcd_channel(leader)?);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator, the same for both systems.

#[derive(Clone)]
enum Target {
    Skynet(skynet::Store),
    Etcd(Arc<Etcd>),
}

impl Target {
    async fn put(&self, client: usize, key: String, value: &[u8]) -> Result<()> {
        match self {
            Target::Skynet(store) => {
                store.put(key, value.to_vec()).await?;
            }
            Target::Etcd(etcd) => {
                let grpc = &etcd.to_leader[client % etcd.to_leader.len()];
                let _: pb::PutResponse = unary(
                    grpc,
                    ETCD_PUT,
                    pb::PutRequest {
                        key: key.into_bytes(),
                        value: value.to_vec(),
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A linearizable read of `key`; fails if the key is missing (the put phases wrote it).
    async fn get(&self, client: usize, key: String) -> Result<()> {
        let found = match self {
            Target::Skynet(store) => store.get(key).await?.is_some(),
            Target::Etcd(etcd) => {
                let grpc = &etcd.to_leader[client % etcd.to_leader.len()];
                let r: pb::RangeResponse = unary(
                    grpc,
                    ETCD_RANGE,
                    pb::RangeRequest {
                        key: key.into_bytes(),
                        serializable: false,
                    },
                )
                .await?;
                !r.kvs.is_empty()
            }
        };
        ensure!(found, "a key written before was not found");
        Ok(())
    }

    /// A write during failover. skynet's goes through the client node's own policy (it gives up
    /// on an unanswering member and finds the new leader itself: that policy is part of what is
    /// measured). etcd's client here has no such policy, so it gets a generous one: each attempt
    /// is bounded by [`FAILOVER_ATTEMPT`] and attempts go round the members (any member forwards
    /// to the leader).
    async fn put_once(&self, attempt: usize, key: String, value: &[u8]) -> Result<()> {
        match self {
            Target::Skynet(_) => self.put(0, key, value).await,
            Target::Etcd(etcd) => {
                let grpc = &etcd.members[attempt % etcd.members.len()];
                let put = unary::<_, pb::PutResponse>(
                    grpc,
                    ETCD_PUT,
                    pb::PutRequest {
                        key: key.into_bytes(),
                        value: value.to_vec(),
                    },
                );
                tokio::time::timeout(FAILOVER_ATTEMPT, put)
                    .await
                    .unwrap_or_else(|_| bail!("attempt timed out"))?;
                Ok(())
            }
        }
    }
}

fn key(i: usize) -> String {
    // 8 bytes: "k" and 7 digits.
    format!("k{i:07}")
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
}

/// One phase's outcome.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPUs' worth of time the system's processes (its members and this load generator) used
    /// in the measured window.
    cpus: f64,
    /// CPUs' worth of time everything else on the machine used meanwhile (0 to 2 here).
    others: f64,
}

/// Clock ticks a process has run (user + system), from /proc; 0 if it is gone.
fn proc_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised name: state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum()
}

/// Busy clock ticks of the whole machine (user, nice, system, irq, softirq, steal).
fn machine_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// Linux's USER_HZ, the unit of /proc's tick counts.
const TICKS_PER_SEC: f64 = 100.0;

fn new_histogram() -> Result<Histogram<u64>> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).context("histogram")
}

/// `clients` closed-loop clients doing `op` back to back; only operations started in the
/// measured window count.
async fn closed_loop(
    target: &Target,
    op: Op,
    clients: usize,
    keys: usize,
    s: &Settings,
    pids: Vec<u32>,
) -> Result<Sample> {
    let measure_from = Instant::now() + s.warmup;
    let stop_at = measure_from + s.measure;
    let cpu = tokio::spawn(async move {
        let own = || pids.iter().map(|&p| proc_ticks(p)).sum::<u64>();
        tokio::time::sleep_until(measure_from.into()).await;
        let (own0, all0) = (own(), machine_ticks());
        tokio::time::sleep_until(stop_at.into()).await;
        (
            own().saturating_sub(own0),
            machine_ticks().saturating_sub(all0),
        )
    });
    let value: Arc<[u8]> = vec![b'v'; VALUE_LEN].into();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let target = target.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram()?;
            let mut errors = 0u64;
            let mut next = c;
            loop {
                let started = Instant::now();
                if started >= stop_at {
                    break;
                }
                let k = key(next % keys);
                next += clients;
                let result = match op {
                    Op::Put => target.put(c, k, &value).await,
                    Op::Get => target.get(c, k).await,
                };
                if started >= measure_from {
                    match result {
                        Ok(()) => {
                            let us =
                                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                            hist.record(us.max(1)).context("histogram")?;
                        }
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("client {c}: {e:#}");
                            }
                            errors += 1;
                        }
                    }
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = new_histogram()?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.context("load task")??;
        hist.add(&h).context("histogram")?;
        errors += e;
    }
    let (own, all) = cpu.await.context("CPU accounting")?;
    let cpus = |ticks: u64| ticks as f64 / TICKS_PER_SEC / s.measure.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Sample {
        ops_per_sec: hist.len() as f64 / s.measure.as_secs_f64(),
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        errors,
        cpus: cpus(own),
        others: cpus(all.saturating_sub(own)),
    })
}

/// The phases of one round, in order.
const PHASES: [(&str, Op, usize); 3] = [
    ("put, 1 client", Op::Put, CLIENTS[0]),
    ("put, 64 clients", Op::Put, CLIENTS[1]),
    ("linearizable get, 1 client", Op::Get, 1),
];

/// Writes every key once, so reads find them and every phase overwrites existing keys.
async fn preload(target: &Target, keys: usize) -> Result<()> {
    let value = vec![b'v'; VALUE_LEN];
    for chunk in (0..keys).collect::<Vec<_>>().chunks(64) {
        let writes = chunk.iter().map(|&i| target.put(i, key(i), &value));
        for r in futures::future::join_all(writes).await {
            r?;
        }
    }
    Ok(())
}

/// The systems under test with everything they run on.
struct Systems {
    skynet: Option<(SkynetCluster, Node, Target)>,
    etcd: Option<(EtcdCluster, Target)>,
}

impl Systems {
    /// This process and the server processes of system `name`, for CPU accounting.
    fn pids(&self, name: &str) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        match (name, &self.skynet, &self.etcd) {
            ("skynet", Some((cluster, _, _)), _) => pids.extend(
                cluster
                    .members
                    .iter()
                    .filter_map(|m| m.child.as_ref().and_then(Child::id)),
            ),
            ("etcd", _, Some((cluster, _))) => pids.extend((0..ETCD_PORTS.len()).filter_map(|i| {
                std::fs::read_to_string(cluster.dir.join(format!("m{i}.pid")))
                    .ok()?
                    .trim()
                    .parse::<u32>()
                    .ok()
            })),
            _ => {}
        }
        pids
    }
}

async fn start_skynet(root: &Path, s: &Settings) -> Result<(SkynetCluster, Node, Target)> {
    let cluster = SkynetCluster::start(root).await?;
    let seeds: Vec<SocketAddr> = (0..SKYNET_PORTS.len()).map(member_addr).collect();
    let client = Node::builder()
        .name("bench-client")
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .config(rpc_config()?)
        .development_credentials(&cluster.creds)
        .store(StoreConfig::client(seeds))
        .start()
        .await
        .context("starting the skynet client node")?;
    let target = Target::Skynet(client.store().context("client node has no store")?);
    preload(&target, s.keys).await?;
    println!("skynet: 3 members on loopback ports {SKYNET_PORTS:?}");
    Ok((cluster, client, target))
}

async fn start_etcd(root: &Path, s: &Settings) -> Result<Option<(EtcdCluster, Target)>> {
    let Some(cluster) = EtcdCluster::start(root)? else {
        return Ok(None);
    };
    let mut etcd = Etcd::new(s.etcd_connections)?;
    let (leader, _) = etcd.settle().await?;
    etcd.aim(leader)?;
    let target = Target::Etcd(Arc::new(etcd));
    preload(&target, s.keys).await?;
    Ok(Some((cluster, target)))
}

async fn run(s: Settings) -> Result<()> {
    let tmp = match &s.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("temp dir")?;
    let root = tmp.path().to_owned();
    println!("data under {} ({})", root.display(), filesystem_of(&root));
    let mut systems = Systems {
        skynet: None,
        etcd: None,
    };
    let result = measure(&s, &root, &mut systems).await;
    // Stop everything, whatever happened.
    if let Some((mut cluster, client, _)) = systems.skynet.take() {
        client.shutdown().await;
        cluster.stop().await;
    }
    if let Some((mut cluster, _)) = systems.etcd.take() {
        cluster.stop();
    }
    drop(tmp);
    result
}

/// Median of the rounds' samples of one phase.
fn median(samples: &[Sample]) -> Option<Sample> {
    let pick = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    Some(Sample {
        ops_per_sec: pick(|s| s.ops_per_sec)?,
        p50_ms: pick(|s| s.p50_ms)?,
        p99_ms: pick(|s| s.p99_ms)?,
        errors: samples.iter().map(|s| s.errors).sum(),
        cpus: pick(|s| s.cpus)?,
        others: pick(|s| s.others)?,
    })
}

async fn measure(s: &Settings, root: &Path, systems: &mut Systems) -> Result<()> {
    if s.skynet {
        systems.skynet = Some(start_skynet(root, s).await?);
    }
    if s.etcd {
        systems.etcd = start_etcd(root, s).await?;
    }
    let mut targets: Vec<(&str, Target)> = Vec::new();
    if let Some((_, _, t)) = &systems.skynet {
        targets.push(("skynet", t.clone()));
    }
    if let Some((_, t)) = &systems.etcd {
        targets.push(("etcd", t.clone()));
    }
    ensure!(!targets.is_empty(), "nothing to measure");
    // samples[target][phase] over rounds
    let mut samples = vec![vec![Vec::new(); PHASES.len()]; targets.len()];
    for round in 1..=s.rounds {
        // Alternating systems within each round spreads the machine's slow moments over both.
        for (p, (phase, op, clients)) in PHASES.iter().enumerate() {
            for (t, (name, target)) in targets.iter().enumerate() {
                let pids = systems.pids(name);
                let sample = closed_loop(target, *op, *clients, s.keys, s, pids).await?;
                println!(
                    "round {round}: {name:<6} {phase:<27} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}  cpu {:.2}  others {:.2}",
                    sample.ops_per_sec,
                    sample.p50_ms,
                    sample.p99_ms,
                    sample.errors,
                    sample.cpus,
                    sample.others
                );
                samples[t][p].push(sample);
            }
        }
    }
    let mut failovers = vec![Vec::new(); targets.len()];
    for n in 1..=s.failovers {
        for (t, (name, target)) in targets.iter().enumerate() {
            let took = match (*name, &mut systems.skynet, &mut systems.etcd) {
                ("skynet", Some((cluster, _, _)), _) => failover_skynet(cluster, target).await?,
                ("etcd", _, Some((cluster, _))) => failover_etcd(cluster, target).await?,
                _ => bail!("no cluster for {name}"),
            };
            println!(
                "failover {n}: {name:<6} first write {:>6.0} ms, new leader named {:>6.0} ms after the kill -9",
                took.write.as_secs_f64() * 1000.0,
                took.elected.as_secs_f64() * 1000.0
            );
            failovers[t].push(took);
        }
    }
    report(s, &targets, &samples, &failovers);
    Ok(())
}

/// Writes until one succeeds, starting right after `killed_at`; returns the time from the kill.
async fn first_write_after(target: &Target, killed_at: Instant, first: usize) -> Result<Duration> {
    let value = vec![b'f'; VALUE_LEN];
    let mut attempt = first;
    let mut last_error = String::new();
    while let Err(e) = target.put_once(attempt, key(attempt % 8), &value).await {
        let e = format!("{e:#}");
        if e != last_error {
            if std::env::var_os("SKYNET_BENCH_VERBOSE").is_some() {
                eprintln!("  {:>6} ms: {e}", killed_at.elapsed().as_millis());
            }
            last_error = e;
        }
        ensure!(
            killed_at.elapsed() < FAILOVER_LIMIT,
            "no write succeeded within {FAILOVER_LIMIT:?} of the kill (last error: {last_error})"
        );
        attempt += 1;
        // An attempt that failed at once (connection refused): do not spin.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(killed_at.elapsed())
}

/// One failover: the time to the first successful write after the kill, and the time until a
/// surviving member names a new leader (the cluster's part of it).
#[derive(Clone, Copy)]
struct Failover {
    write: Duration,
    elected: Duration,
}

/// Picks one part of a [`Failover`].
type FailoverPart = fn(&Failover) -> Duration;

async fn failover_skynet(cluster: &mut SkynetCluster, target: &Target) -> Result<Failover> {
    let leader = cluster.settle().await?;
    // The client knows the current leader before the kill.
    for i in 0..10 {
        target.put(0, key(i), &[b'w'; VALUE_LEN]).await?;
    }
    let old = cluster.views()[leader].map_or(0, |v| v.id);
    let survivors: Vec<_> = (0..cluster.members.len())
        .filter(|&i| i != leader)
        .map(|i| cluster.members[i].view.clone())
        .collect();
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let elected = tokio::spawn(async move {
        loop {
            let found = survivors.iter().any(|v| {
                v.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some_and(|v| v.leader != 0 && v.leader != old)
            });
            if found || killed_at.elapsed() > FAILOVER_LIMIT {
                return killed_at.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let write = first_write_after(target, killed_at, 0).await?;
    let elected = elected.await.context("election watcher")?;
    cluster.restart(leader).await?;
    cluster.settle().await?;
    Ok(Failover { write, elected })
}

async fn failover_etcd(cluster: &mut EtcdCluster, target: &Target) -> Result<Failover> {
    let Target::Etcd(etcd) = target else {
        bail!("not an etcd target");
    };
    let (leader, old) = etcd.settle().await?;
    for i in 0..10 {
        target.put_once(leader, key(i), &[b'w'; VALUE_LEN]).await?;
    }
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let watcher = etcd.clone();
    let elected = tokio::spawn(async move {
        while !watcher.new_leader(leader, old).await && killed_at.elapsed() < FAILOVER_LIMIT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        killed_at.elapsed()
    });
    // Start with the next member: sending to the dead one first would only add a refused
    // connection.
    let write = first_write_after(target, killed_at, leader + 1).await?;
    let elected = elected.await.context("election watcher")?;
    cluster.restart(leader)?;
    etcd.settle().await?;
    Ok(Failover { write, elected })
}

/// The filesystem type and device of `path`, from /proc/mounts (for the report).
fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "filesystem unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max()
        .map_or_else(|| "filesystem unknown".into(), |(_, fs)| fs)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn report(
    s: &Settings,
    targets: &[(&str, Target)],
    samples: &[Vec<Vec<Sample>>],
    failovers: &[Vec<Failover>],
) {
    let sk = targets.iter().position(|(n, _)| *n == "skynet");
    let et = targets.iter().position(|(n, _)| *n == "etcd");
    let cell = |t: Option<usize>, p: usize| t.and_then(|t| median(&samples[t][p]));
    println!();
    println!(
        "Config store, 3 durable members on loopback; {VALUE_LEN} B values, 8 B keys over {} keys; \
         median of {} rounds of {:.1} s (after {:.1} s warm-up); failover median of {}.",
        s.keys,
        s.rounds,
        s.measure.as_secs_f64(),
        s.warmup.as_secs_f64(),
        s.failovers
    );
    println!("Command: {COMMAND}");
    println!();
    println!("| metric | skynet | etcd | skynet/etcd |");
    println!("|---|---|---|---|");
    for (p, (phase, op, _)) in PHASES.iter().enumerate() {
        let (a, b) = (cell(sk, p), cell(et, p));
        let show = |x: Option<Sample>, f: fn(&Sample) -> String| x.as_ref().map_or("-".into(), f);
        let both = |f: fn(&Sample) -> f64| match (a, b) {
            (Some(a), Some(b)) => ratio(f(&a), f(&b)),
            _ => "-".into(),
        };
        let unit = match op {
            Op::Put => "writes/s",
            Op::Get => "reads/s",
        };
        println!(
            "| {phase}: {unit} | {} | {} | {} |",
            show(a, |x| format!("{:.0}", x.ops_per_sec)),
            show(b, |x| format!("{:.0}", x.ops_per_sec)),
            both(|x| x.ops_per_sec)
        );
        println!(
            "| {phase}: p50 / p99 ms | {} | {} | {} / {} |",
            show(a, |x| format!("{:.2} / {:.2}", x.p50_ms, x.p99_ms)),
            show(b, |x| format!("{:.2} / {:.2}", x.p50_ms, x.p99_ms)),
            both(|x| x.p50_ms),
            both(|x| x.p99_ms)
        );
        println!(
            "| {phase}: CPUs used by the system (by everything else) | {} | {} | {} |",
            show(a, |x| format!("{:.2} ({:.2})", x.cpus, x.others)),
            show(b, |x| format!("{:.2} ({:.2})", x.cpus, x.others)),
            both(|x| x.cpus)
        );
        let errors: Vec<String> = [a, b]
            .iter()
            .flatten()
            .filter(|x| x.errors > 0)
            .map(|x| x.errors.to_string())
            .collect();
        if !errors.is_empty() {
            println!(
                "| {phase}: failed operations | {} | | |",
                errors.join(" / ")
            );
        }
    }
    let fo = |t: Option<usize>, f: FailoverPart| -> Option<(f64, String)> {
        let t = t?;
        let mut ms: Vec<f64> = failovers[t]
            .iter()
            .map(|d| f(d).as_secs_f64() * 1000.0)
            .collect();
        let runs = ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        ms.sort_by(f64::total_cmp);
        Some((*ms.get(ms.len() / 2)?, runs))
    };
    let show = |x: &Option<(f64, String)>| {
        x.as_ref()
            .map_or("-".into(), |(m, runs)| format!("{m:.0} ms ({runs})"))
    };
    let rows: [(&str, FailoverPart); 2] = [
        (
            "leader failover, kill -9 -> first successful write: median (runs)",
            |f| f.write,
        ),
        (
            "leader failover, kill -9 -> a survivor names a new leader: median (runs)",
            |f| f.elected,
        ),
    ];
    for (label, f) in rows {
        let (a, b) = (fo(sk, f), fo(et, f));
        println!(
            "| {label} | {} | {} | {} |",
            show(&a),
            show(&b),
            match (&a, &b) {
                (Some(a), Some(b)) => ratio(a.0, b.0),
                _ => "-".into(),
            }
        );
    }
    println!();
    println!(
        "Latency ratios below 1 and throughput ratios above 1 favour skynet. skynet: one client \
         node (one QUIC connection per member it talks to) shared by all clients; etcd: {} gRPC \
         connections to the leader, clients spread over them.",
        s.etcd_connections
    );
}
