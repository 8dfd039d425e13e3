//! Calls by name through the registry against calls to a fixed address, and failover figures
//! when an instance is killed with SIGKILL under load.
//!
//! ```not_rust
//! cargo bench -p skynet-benches --bench registry
//! ```
//!
//! Part one runs in one process: a config store member, three nodes hosting `echo`, and a
//! caller, on one Tokio runtime with 2 workers. The caller calls `echo.call` by name (the
//! registry view picks an instance by power of two choices) and, for comparison, at the
//! address of one instance. Part two starts three instances as separate processes (this
//! benchmark's own executable, re-run in a service role), keeps 16 callers calling by name,
//! kills one instance with SIGKILL, and measures the calls that failed, the time until the
//! caller's registry view dropped the instance, and the time from starting a replacement
//! until it served a call.
//!
//! Settings (environment): `SKYNET_BENCH_SECS` (measured seconds per cell, default 2),
//! `SKYNET_BENCH_ROUNDS` (default 5), `SKYNET_BENCH_IN_FLIGHT` (comma-separated levels, default
//! `1,64`), `SKYNET_BENCH_KILLS` (failover repetitions, default 3; 0
//! skips part two), `SKYNET_BENCH_ONLY` (comma-separated parts of the names of the ways to call
//! in part one, e.g. `by name`; default all three; meant for profiling).

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use skynet::registry::Change;
use skynet::{Node, NodeBuilder, ServiceClient, ServiceDef, ServiceError, StoreConfig};
use skynet_benches::{Call, Only, Sample, closed_loop, env_counts, env_or, median};

const COMMAND: &str = "cargo bench -p skynet-benches --bench registry";
/// Set in the environment of the service processes this benchmark starts.
const ROLE_ENV: &str = "SKYNET_BENCH_ROLE";
const IN_FLIGHT: [usize; 2] = [1, 64];
const WARMUP: Duration = Duration::from_millis(500);
/// Callers during a failover run.
const FAILOVER_CALLERS: usize = 16;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Ok(role) = std::env::var(ROLE_ENV) {
        return runtime.block_on(serve(&role));
    }
    runtime.block_on(run())
}

/// What the echo answers: the payload and the process that served it.
type Echoed = (Vec<u8>, u32);

/// The benchmark's service: echoes the payload with its process id; idempotent, so callers
/// may retry it.
fn echo() -> ServiceDef {
    ServiceDef::builder("echo", "1.0.0")
        .idempotent_method("call", |_, payload: Vec<u8>| async move {
            Ok::<Echoed, ServiceError>((payload, std::process::id()))
        })
        .build()
        .expect("a valid service")
}

/// Calls each instance has served so far.
fn served(instances: &[Node]) -> Vec<u64> {
    instances
        .iter()
        .map(|n| {
            n.stats()
                .method("echo", "call")
                .map_or(0, |m| m.processed())
        })
        .collect()
}

async fn call(client: &ServiceClient, payload: Vec<u8>) -> Result<Echoed, skynet::CallError> {
    client
        .call::<Vec<u8>, Echoed, ServiceError>("call", payload)
        .await
}

fn builder(name: &str, certs: &std::path::Path, seed: SocketAddr) -> NodeBuilder {
    Node::builder()
        .name(name)
        .development_credentials(certs)
        .store(StoreConfig::client(vec![seed]))
}

/// The service role: `SKYNET_BENCH_ROLE=service:<certs dir>:<seed addr>`. Prints the node's
/// address and serves until killed or until stdin closes.
async fn serve(role: &str) -> Result<()> {
    let mut parts = role.splitn(3, ':');
    ensure!(parts.next() == Some("service"), "unknown role {role:?}");
    let certs = parts.next().context("certs dir")?;
    let seed: SocketAddr = parts.next().context("seed")?.parse()?;
    let node = builder("echo", std::path::Path::new(certs), seed)
        .service(echo())
        .start()
        .await?;
    println!("{} {}", node.local_addr(), std::process::id());
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
    node.shutdown().await;
    Ok(())
}

/// One caller of `echo.call` with 64 bytes.
struct EchoCall(ServiceClient);

impl Call for EchoCall {
    async fn call(&mut self) -> Result<()> {
        let (reply, _) = call(&self.0, vec![7u8; 64]).await?;
        ensure!(reply.len() == 64, "short echo");
        Ok(())
    }
}

/// `in_flight` closed-loop callers, caller `i` using `clients[i % clients.len()]`.
async fn measure_loop(
    clients: &[ServiceClient],
    in_flight: usize,
    measure: Duration,
) -> Result<Sample> {
    let callers = (0..in_flight)
        .map(|i| EchoCall(clients[i % clients.len()].clone()))
        .collect();
    closed_loop(callers, WARMUP, measure).await
}

async fn run() -> Result<()> {
    let measure = Duration::from_secs_f64(env_or("SKYNET_BENCH_SECS", 2.0)?);
    let rounds: usize = env_or("SKYNET_BENCH_ROUNDS", 5)?;
    let kills: usize = env_or("SKYNET_BENCH_KILLS", 3)?;
    let only = Only::from_env();
    let in_flight = env_counts("SKYNET_BENCH_IN_FLIGHT", &IN_FLIGHT)?;
    ensure!(rounds > 0, "SKYNET_BENCH_ROUNDS must be positive");
    let certs = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let seed = Node::builder()
        .name("store")
        .development_credentials(certs.path())
        .store(StoreConfig::bootstrap(data.path().join("store")))
        .start()
        .await?;
    let seed_addr = seed.local_addr();

    // Part one: by name against direct, in one process.
    let mut instances = Vec::new();
    for i in 0..3 {
        instances.push(
            builder(&format!("echo-{i}"), certs.path(), seed_addr)
                .service(echo())
                .start()
                .await?,
        );
    }
    let caller = builder("caller", certs.path(), seed_addr).start().await?;
    let registry = caller.registry().context("registry")?;
    registry
        .wait_for(Duration::from_secs(20), |s| s.instances("echo").len() == 3)
        .await
        .context("three instances registered")?;
    // Three ways to reach the same instances: by name (registry and balancer), by address over all
    // three (the same connections and server work as by name, without the registry and balancer),
    // and by address to one instance (one connection, the fullest write batches).
    let by_name = [caller.client("echo")];
    let spread: Vec<ServiceClient> = instances
        .iter()
        .map(|i| caller.client("echo").at(i.local_addr()))
        .collect();
    let direct = [caller.client("echo").at(instances[0].local_addr())];
    let ways: [&[ServiceClient]; 3] = [&by_name, &spread, &direct];
    const WAYS: [&str; 3] = ["by name", "by address, spread", "one instance"];
    let mut table = Vec::new();
    for &n in &in_flight {
        let mut samples: [Vec<Sample>; 3] = Default::default();
        for round in 0..rounds {
            // Rotate the order so none always runs on a warmer machine.
            for k in 0..ways.len() {
                let way = (round + k) % ways.len();
                if !only.selects(WAYS[way]) {
                    continue;
                }
                let before = served(&instances);
                samples[way].push(measure_loop(ways[way], n, measure).await?);
                let after = served(&instances);
                let shares: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
                eprintln!("  {}: calls served per instance {shares:?}", WAYS[way]);
            }
            let last = |v: &[Sample]| {
                v.last().map_or(String::new(), |s| {
                    format!(
                        "{:.0} req/s (p50 {:.1} µs, {:.1} CPU µs and {:.2} switches per call)",
                        s.rps, s.p50_us, s.cpu_us_per_call, s.switches_per_call
                    )
                })
            };
            eprintln!(
                "round {}, {n} in flight: by name {}; spread {}; one instance {}",
                round + 1,
                last(&samples[0]),
                last(&samples[1]),
                last(&samples[2]),
            );
        }
        table.push((n, samples));
    }
    for node in &instances {
        node.shutdown().await;
    }

    // Part two: failover with processes.
    let mut figures = Vec::new();
    for kill in 1..=kills {
        let f = failover(&caller, certs.path(), seed_addr).await?;
        eprintln!(
            "kill {kill}: {} of {} calls failed; {} ended before the cull; culled after {:?}; replacement served {:?} after it started ({:?} after the kill)",
            f.failed,
            f.calls,
            f.ended_before_cull,
            f.culled,
            f.replacement_served,
            f.replacement_from_kill
        );
        figures.push(f);
    }
    caller.shutdown().await;
    seed.shutdown().await;

    println!("## Registry: calls by name");
    println!();
    println!("Command: `{COMMAND}`");
    println!(
        "Settings: SKYNET_BENCH_SECS={} SKYNET_BENCH_ROUNDS={rounds} SKYNET_BENCH_KILLS={kills}; loopback; {} build; medians.",
        measure.as_secs_f64(),
        skynet_benches::build_kind()
    );
    println!();
    println!(
        "\"By address, spread\" calls the same three instances by address (caller i uses instance i mod 3): the same connections and server work as by name, without registry and balancer. \"One instance\" sends everything over one connection."
    );
    println!();
    println!(
        "Rates and latencies are medians over the rounds; the ratios are medians of each round's ratio (the ways of a round run back to back, so they share the machine's mood). CPU is the whole process's (callers, servers and runtime) per call."
    );
    println!();
    println!(
        "| in flight | by name req/s | p50 µs | p99 µs | CPU µs/call | by address, spread req/s | p50 µs | p99 µs | CPU µs/call | one instance req/s | p50 µs | CPU µs/call | by name / spread, rate | by name / spread, CPU per call | by name / one instance, rate |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, [named, spread, one]) in &table {
        let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
        let ratio = |a: &[Sample], b: &[Sample], f: fn(&Sample) -> f64| {
            median(a.iter().zip(b).map(|(a, b)| f(a) / f(b)).collect())
        };
        println!(
            "| {n} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.3}x | {:.3}x | {:.3}x |",
            m(named, |s| s.rps),
            m(named, |s| s.p50_us),
            m(named, |s| s.p99_us),
            m(named, |s| s.cpu_us_per_call),
            m(spread, |s| s.rps),
            m(spread, |s| s.p50_us),
            m(spread, |s| s.p99_us),
            m(spread, |s| s.cpu_us_per_call),
            m(one, |s| s.rps),
            m(one, |s| s.p50_us),
            m(one, |s| s.cpu_us_per_call),
            ratio(named, spread, |s| s.rps),
            ratio(named, spread, |s| s.cpu_us_per_call),
            ratio(named, one, |s| s.rps),
        );
    }
    println!();
    println!(
        "Failover: {FAILOVER_CALLERS} callers calling an idempotent method by name over three instance processes; one is killed with SIGKILL, then a replacement is started."
    );
    println!();
    println!(
        "| kill | calls | failed | calls ended between kill and cull | culled after (ms) | replacement serving after start (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (i, f) in figures.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            i + 1,
            f.calls,
            f.failed,
            f.ended_before_cull,
            f.culled.as_millis(),
            f.replacement_served.as_millis()
        );
    }
    Ok(())
}

/// One service process, killed with SIGKILL when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
    pid: u32,
}

impl Process {
    fn start(certs: &std::path::Path, seed: SocketAddr) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, format!("service:{}:{seed}", certs.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let line = BufReader::new(child.stdout.take().context("stdout")?)
            .lines()
            .next()
            .context("the service process exited")??;
        let (addr, pid) = line.split_once(' ').context("ready line")?;
        Ok(Self {
            child,
            addr: addr.parse()?,
            pid: pid.parse()?,
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Failover {
    calls: u64,
    failed: u64,
    /// Calls that ended between the kill and the registry dropping the instance.
    ended_before_cull: u64,
    culled: Duration,
    replacement_served: Duration,
    replacement_from_kill: Duration,
}

async fn failover(caller: &Node, certs: &std::path::Path, seed: SocketAddr) -> Result<Failover> {
    let registry = caller.registry().context("registry")?;
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(Process::start(certs, seed)?);
    }
    let addrs: HashSet<SocketAddr> = procs.iter().map(|p| p.addr).collect();
    registry
        .wait_for(Duration::from_secs(20), |s| {
            s.instances("echo")
                .iter()
                .map(|i| i.addr)
                .collect::<HashSet<_>>()
                == addrs
        })
        .await
        .context("the instances registered")?;

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let served_by = tokio::sync::watch::Sender::new(HashSet::<u32>::new());
    let mut tasks = Vec::new();
    for _ in 0..FAILOVER_CALLERS {
        let (client, stop, calls, failed) = (
            caller.client("echo"),
            stop.clone(),
            calls.clone(),
            failed.clone(),
        );
        let served_by = served_by.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call(&client, vec![1u8; 64]).await {
                    Ok((_, pid)) => {
                        served_by.send_if_modified(|s| s.insert(pid));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut serving = served_by.subscribe();
    let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
    tokio::time::timeout(
        Duration::from_secs(20),
        serving.wait_for(|s| pids.iter().all(|p| s.contains(p))),
    )
    .await
    .context("every instance served")??;

    let mut changes = registry.changes();
    let mut victim = procs.remove(0);
    let killed_at = Instant::now();
    let ended_at_kill = calls.load(Ordering::Relaxed);
    victim.child.kill()?;
    victim.child.wait()?;
    let gone = victim.addr;
    let culled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match changes.recv().await {
                Ok(Change::Left(i)) if i.addr == gone => return Ok(killed_at.elapsed()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("registry changes: {e}")),
            }
        }
    })
    .await
    .context("the killed instance was never culled")??;
    let ended_before_cull = calls.load(Ordering::Relaxed) - ended_at_kill;

    let started = Instant::now();
    let replacement = Process::start(certs, seed)?;
    tokio::time::timeout(
        Duration::from_secs(20),
        serving.wait_for(|s| s.contains(&replacement.pid)),
    )
    .await
    .context("the replacement served")??;
    let replacement_served = started.elapsed();
    let replacement_from_kill = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    drop((victim, procs, replacement));
    Ok(Failover {
        calls: calls.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        ended_before_cull,
        culled,
        replacement_served,
        replacement_from_kill,
    })
}
