//! The config store as real OS processes of the `skynet` binary on loopback: members are
//! `skynet node` processes, killed with SIGKILL and restarted from their data directories; the
//! test process talks to them through a client node (`StoreConfig::client`).
//!
//! Every child is killed when its guard drops (also when a test fails), every wait is on an
//! event (a ready line, a watch event, a status) with a timeout, and the temp dirs go away with
//! the test. A failing test prints the tail of each child's log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use skynet::store::EventKind;
use skynet::{Node, RpcConfig, ServiceDef, ServiceError, Store, StoreConfig, StoreError};
use tokio::sync::mpsc;

type TestResult = anyhow::Result<()>;

const BIN: &str = env!("CARGO_BIN_EXE_skynet");
/// Upper bound of every wait: generous, since the machine may be busy; never a measurement.
const WAIT: Duration = Duration::from_secs(30);

// ===== Child processes =====

/// A running child process, killed (SIGKILL) and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, log: PathBuf, program: &str, args: &[String]) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(&log).context("log file")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawn skynet")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            log,
        })
    }

    /// The next stdout line that starts with `prefix`, as `key=value` fields.
    async fn line(&mut self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(fields(rest));
                }
            }
            bail!("{} exited before printing {prefix:?}", self.name)
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .with_context(|| format!("{} never printed {prefix:?}", self.name))?
    }

    /// SIGKILL, now.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit",
                self.name
            );
            // Polling the exit status: std has no async wait for a child.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of {} ({}):", self.name, self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn fields(text: &str) -> BTreeMap<String, String> {
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A `skynet node` process that printed its ready line.
struct Member {
    proc: Proc,
    addr: SocketAddr,
    id: u64,
}

impl Member {
    async fn ready(mut proc: Proc) -> anyhow::Result<Self> {
        let ready = proc.line("ready ").await?;
        let addr = ready.get("addr").context("addr")?.parse()?;
        let id = ready.get("id").context("id")?.parse()?;
        anyhow::ensure!(ready.get("name") == Some(&proc.name), "name in {ready:?}");
        Ok(Self { proc, addr, id })
    }
}

/// One cluster's temp directory: credentials, data directories and logs.
struct Cluster {
    dir: tempfile::TempDir,
    voters: usize,
}

impl Cluster {
    fn new(voters: usize) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            voters,
        }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self, name: &str) -> PathBuf {
        // A restarted member appends a new log file rather than replace the old one.
        let mut n = 0;
        loop {
            let path = self.dir.path().join(format!("{name}.{n}.log"));
            if !path.exists() {
                return path;
            }
            n += 1;
        }
    }

    /// Starts `skynet node` without waiting for it: joining through `join` (bootstrapping if
    /// empty), on `port` (0: any).
    fn spawn(&self, name: &str, join: &[SocketAddr], port: u16) -> anyhow::Result<Proc> {
        let args = self.node_args(name, join, port);
        Proc::spawn(name, self.log(name), BIN, &args)
    }

    /// Members log at the binary's default level, as an operator's would.
    fn node_args(&self, name: &str, join: &[SocketAddr], port: u16) -> Vec<String> {
        let mut args: Vec<String> = [
            "node",
            "--name",
            name,
            "--port",
            &port.to_string(),
            "--voters",
            &self.voters.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--data-dir".into());
        args.push(path_arg(&self.data_dir(name)));
        args.push("--certs".into());
        args.push(path_arg(&self.certs()));
        for seed in join {
            args.push("--join".into());
            args.push(seed.to_string());
        }
        args
    }

    async fn start(&self, name: &str, join: &[SocketAddr]) -> anyhow::Result<Member> {
        Member::ready(self.spawn(name, join, 0)?).await
    }

    /// Bootstraps `a`, then joins the other names through it, one after the other.
    async fn start_all(&self, names: &[&str]) -> anyhow::Result<Vec<Member>> {
        let mut members = vec![self.start(names[0], &[]).await?];
        let seed = members[0].addr;
        for name in &names[1..] {
            members.push(self.start(name, &[seed]).await?);
        }
        Ok(members)
    }

    /// A client node of this cluster (not a member), reaching it through `seeds`.
    async fn client(&self, seeds: Vec<SocketAddr>) -> anyhow::Result<(Node, Store)> {
        self.client_at(([127, 0, 0, 1], 0).into(), seeds, WAIT)
            .await
    }

    /// A client node bound to `bind`, whose requests give up after `timeout`.
    async fn client_at(
        &self,
        bind: SocketAddr,
        seeds: Vec<SocketAddr>,
        timeout: Duration,
    ) -> anyhow::Result<(Node, Store)> {
        let node = Node::builder()
            .name("test-client")
            .bind(bind)
            .development_credentials(self.certs())
            .config(RpcConfig {
                connect_timeout: Duration::from_millis(500),
                ..Default::default()
            })
            .store(StoreConfig::client(seeds).timeout(timeout))
            .start()
            .await?;
        let store = node.store().context("the client has a store")?;
        Ok((node, store))
    }
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn addrs(members: &[Member]) -> Vec<SocketAddr> {
    members.iter().map(|m| m.addr).collect()
}

/// The leader's id, as the first live member that answers sees it, once one is elected that
/// `accept` takes and every asked member agrees on it.
async fn leader(
    store: &Store,
    members: &[&Member],
    accept: impl Fn(u64) -> bool,
) -> anyhow::Result<u64> {
    let wait = async {
        loop {
            let mut seen = BTreeSet::new();
            for m in members {
                match store.member_status(m.addr).await {
                    Ok(status) => {
                        seen.insert(status.leader);
                    }
                    Err(_) => {
                        seen.insert(None);
                    }
                }
            }
            if let [Some(leader)] = seen.into_iter().collect::<Vec<_>>()[..]
                && accept(leader)
            {
                return leader;
            }
            // Elections take a few hundred milliseconds; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .context("no agreed leader")
}

/// Waits until `member` reports voters and learners that satisfy `accept`.
async fn membership(
    store: &Store,
    member: &Member,
    accept: impl Fn(&BTreeSet<u64>, &BTreeSet<u64>) -> bool,
) -> anyhow::Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let wait = async {
        loop {
            if let Ok(s) = store.member_status(member.addr).await
                && accept(&s.voters, &s.learners)
            {
                return (s.voters, s.learners);
            }
            // Membership changes commit within a few round trips; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .context("membership never reached the expected state")
}

/// Puts `key` = `value`, repeating the put while its outcome is unknown: a client that was
/// waiting on a member that died cannot tell whether the write went through, and putting the
/// same value again is harmless.
async fn put_surely(store: &Store, key: &str, value: &str) -> anyhow::Result<u64> {
    let mut tries = 0;
    loop {
        match store.put(key, value).await {
            Err(StoreError::Indeterminate(reason)) if tries < 5 => {
                tries += 1;
                eprintln!("put {key}: outcome unknown ({reason}); again");
            }
            other => return Ok(other?),
        }
    }
}

fn key(i: u64) -> String {
    format!("w/{i:06}")
}

/// Checks that every acknowledged write is there, with its value, on a linearizable read.
async fn assert_all_present(store: &Store, acked: &BTreeMap<u64, u64>) -> TestResult {
    let (kvs, _) = store.range("w/").await?;
    let found: BTreeMap<String, Vec<u8>> = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    for (i, revision) in acked {
        let value = found
            .get(&key(*i))
            .with_context(|| format!("acknowledged write {i} (revision {revision}) lost"))?;
        assert_eq!(value, i.to_string().as_bytes(), "value of write {i}");
    }
    Ok(())
}

/// Writes `w/<i>` = i, one after the other, from `from`, until told to stop. Records what was
/// acknowledged (index → revision) and publishes the count.
struct Writer {
    stop: tokio_util::sync::CancellationToken,
    acked: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<BTreeMap<u64, u64>>,
}

impl Writer {
    fn start(store: Store, from: u64) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let (count, acked) = tokio::sync::watch::channel(0);
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut i = from;
            while !token.is_cancelled() {
                // A failed write (leader gone mid-call) may or may not be applied: it is not
                // counted, and the next write uses the next key.
                if let Ok(revision) = store.put(key(i), i.to_string()).await {
                    acked.insert(i, revision);
                    count.send_replace(acked.len());
                }
                i += 1;
            }
            acked
        });
        Self { stop, acked, task }
    }

    async fn wait_for(&mut self, n: usize) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.acked.wait_for(|c| *c >= n))
            .await
            .with_context(|| format!("fewer than {n} writes acknowledged"))??;
        Ok(())
    }

    fn count(&self) -> usize {
        *self.acked.borrow()
    }

    async fn finish(self) -> anyhow::Result<BTreeMap<u64, u64>> {
        self.stop.cancel();
        Ok(tokio::time::timeout(WAIT, self.task).await??)
    }
}

fn by_id(members: &[Member], id: u64) -> &Member {
    members
        .iter()
        .find(|m| m.id == id)
        .expect("a member with that id")
}

fn others(members: &[Member], id: u64) -> Vec<&Member> {
    members.iter().filter(|m| m.id != id).collect()
}

// ===== Tests =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_writes_loses_no_acknowledged_write() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let all: Vec<&Member> = members.iter().collect();
    let old = leader(&store, &all, |_| true).await?;

    let mut writer = Writer::start(store.clone(), 0);
    writer.wait_for(20).await?;
    let index = members.iter().position(|m| m.id == old).expect("leader");
    members[index].proc.kill9();
    let at_kill = writer.count();

    // A new leader among the two left, and writes resume.
    let survivors = others(&members, old);
    let new = leader(&store, &survivors, |l| l != old).await?;
    assert_ne!(new, old);
    writer.wait_for(at_kill + 20).await?;
    let acked = writer.finish().await?;
    assert!(acked.len() >= at_kill + 20);
    assert_all_present(&store, &acked).await?;

    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_voters_killed_right_after_acks_restart_with_every_write() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        acked.insert(i, store.put(key(i), i.to_string()).await?);
    }
    // SIGKILL every voter straight after the last acknowledgement: nothing gets to flush later.
    for m in &mut members {
        m.proc.kill9();
    }
    client.shutdown().await;

    // Same names, addresses and data directories; started together, since none can elect a
    // leader (and print its ready line) alone.
    let seed = members[0].addr;
    let procs = members
        .iter()
        .map(|m| {
            let join: &[SocketAddr] = if m.proc.name == "a" { &[] } else { &[seed] };
            cluster.spawn(&m.proc.name, join, m.addr.port())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut restarted = Vec::new();
    for proc in procs {
        restarted.push(Member::ready(proc).await?);
    }
    for (before, after) in members.iter().zip(&restarted) {
        assert_eq!((before.id, before.addr), (after.id, after.addr));
    }

    let (client, store) = cluster.client(addrs(&restarted)).await?;
    assert_all_present(&store, &acked).await?;
    assert!(store.put("w/after-restart", "x").await? > acked[&49]);
    client.shutdown().await;
    Ok(())
}

/// A member killed with SIGKILL and restarted on its address answers packets of its
/// predecessor's QUIC connections with a stateless reset the client accepts: the client drops the
/// dead connection and redials at once. Without the reset, the client would keep sending into
/// that connection until its idle timeout (60 s here), long past the 10 s its put may take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_resets_its_predecessors_connections() -> TestResult {
    let cluster = Cluster::new(1);
    let mut a = cluster.start("a", &[]).await?;
    let client = Node::builder()
        .name("test-client")
        .development_credentials(cluster.certs())
        .config(RpcConfig {
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(15),
            ..Default::default()
        })
        .store(StoreConfig::client(vec![a.addr]).timeout(Duration::from_secs(10)))
        .start()
        .await?;
    let store = client.store().context("the client has a store")?;
    let before = store.put("k", "1").await?;

    a.proc.kill9();
    let restarted = Member::ready(cluster.spawn("a", &[], a.addr.port())?).await?;
    assert_eq!((restarted.id, restarted.addr), (a.id, a.addr));
    // The first request meets the dead connection. For a write that is an unknown outcome (it
    // may have reached the old process), reported at once rather than after the idle timeout.
    match store.put("k", "2").await {
        Ok(revision) => assert!(revision > before),
        Err(StoreError::Indeterminate(reason)) => {
            assert!(reason.contains("reset"), "not a reset: {reason}");
        }
        Err(e) => panic!("the dead connection was not reset: {e}"),
    }
    assert!(store.put("k", "3").await? > before);
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_right_after_acking_keeps_the_writes() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let all: Vec<&Member> = members.iter().collect();
    let old = leader(&store, &all, |_| true).await?;

    // A burst of concurrent writes; the leader dies the moment the last one is acknowledged,
    // before it can send the followers the commit index.
    let writes = (0..64u64).map(|i| {
        let store = store.clone();
        async move { store.put(key(i), i.to_string()).await.map(|r| (i, r)) }
    });
    let acked: BTreeMap<u64, u64> = futures_util::future::try_join_all(writes)
        .await?
        .into_iter()
        .collect();
    let index = members.iter().position(|m| m.id == old).expect("leader");
    members[index].proc.kill9();

    let survivors = others(&members, old);
    leader(&store, &survivors, |l| l != old).await?;
    assert_all_present(&store, &acked).await?;
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_change_in_order_across_a_leader_change() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (watch_node, watch_store) = cluster.client(addrs(&members)).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let all: Vec<&Member> = members.iter().collect();
    let old = leader(&store, &all, |_| true).await?;

    let (_, start) = watch_store.range("w/").await?;
    let mut watch = watch_store.watch("w/", start);
    let mut writer = Writer::start(store.clone(), 0);
    writer.wait_for(30).await?;
    let index = members.iter().position(|m| m.id == old).expect("leader");
    members[index].proc.kill9();
    let at_kill = writer.count();
    writer.wait_for(at_kill + 30).await?;
    let acked = writer.finish().await?;
    let last = *acked.values().max().context("some writes")?;

    let mut events = Vec::new();
    while events
        .last()
        .map_or(start, |e: &skynet::store::Event| e.revision)
        < last
    {
        let batch = tokio::time::timeout(WAIT, watch.next())
            .await
            .context("the watch stalled")??;
        events.extend(batch);
    }
    // In order and without a gap: nothing else writes, so the revisions are consecutive.
    for pair in events.windows(2) {
        assert_eq!(pair[1].revision, pair[0].revision + 1, "gap or reorder");
    }
    assert_eq!(events[0].revision, start + 1);
    let by_revision: BTreeMap<u64, &skynet::store::Event> =
        events.iter().map(|e| (e.revision, e)).collect();
    for (i, revision) in &acked {
        let event = by_revision
            .get(revision)
            .with_context(|| format!("write {i} at revision {revision} not watched"))?;
        assert_eq!(event.kind, EventKind::Put);
        assert_eq!(
            (event.key.as_str(), &event.value[..]),
            (key(*i).as_str(), i.to_string().as_bytes())
        );
    }

    client.shutdown().await;
    watch_node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_compare_and_sets_have_one_winner() -> TestResult {
    let cluster = Cluster::new(3);
    let members = cluster.start_all(&["a", "b", "c"]).await?;
    // Two writers, each its own node, each entering through a different member.
    let (node_x, x) = cluster.client(vec![members[1].addr]).await?;
    let (node_y, y) = cluster.client(vec![members[2].addr]).await?;
    for round in 0..10 {
        let expected = x.get("cas/k").await?.map_or(0, |kv| kv.mod_revision);
        let (won_x, won_y) = tokio::join!(
            x.compare_and_set("cas/k", expected, format!("x{round}")),
            y.compare_and_set("cas/k", expected, format!("y{round}")),
        );
        let (won_x, won_y) = (won_x?, won_y?);
        assert!(
            won_x != won_y,
            "round {round}: exactly one wins ({won_x}, {won_y})"
        );
        let winner = if won_x { "x" } else { "y" };
        let now = y.get("cas/k").await?.context("the key is set")?;
        assert_eq!(now.value, format!("{winner}{round}").as_bytes());
    }
    node_x.shutdown().await;
    node_y.shutdown().await;
    Ok(())
}

/// The lines of `proc`'s log (stderr, a file: no colour codes) from line `from` on.
fn log_lines(proc: &Proc, from: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(&proc.log).context("read the log")?;
    Ok(text.lines().skip(from).map(str::to_owned).collect())
}

/// Waits until a line of the log of one of `procs` (each from its line in `from`) contains every
/// one of `needles`; fails after [`WAIT`], with `context` of what the logs have by then.
async fn log_line(
    procs: &[&Proc],
    from: &[usize],
    needles: &[&str],
    context: impl Fn(&[Vec<String>]) -> String,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let logs = procs
            .iter()
            .zip(from)
            .map(|(p, from)| log_lines(p, *from))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let found = logs
            .iter()
            .flatten()
            .find(|l| needles.iter().all(|n| l.contains(n)));
        if let Some(line) = found {
            return Ok(line.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no log line with {needles:?}: {}", context(&logs));
        }
        // The logs are files the children append to; there is nothing to await but their growth.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A voter killed with SIGKILL: at the binary's default log level, the leader says so once (and
/// at most a summary every 30 s), not once or more per request to it (openraft alone logged some
/// 90 lines a second, from its replication task), while writes go on; and once more when,
/// restarted, the member answers again. Both survivors' logs are checked: on a busy machine the
/// leadership may move between them, and each reports what it sees while it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_logged_once_not_per_request() -> TestResult {
    /// How long writes go on after the dead member was reported: the leader retries it some 20
    /// times meanwhile. Before the fix, it logged hundreds of lines in that time.
    const WINDOW: Duration = Duration::from_secs(5);
    /// Most lines naming the dead member a survivor may log from the kill to the end of the test:
    /// the warning and the line on its return, and openraft's one line per vote request it leaves
    /// unanswered, should an election come in between.
    const MAX_NAMING: usize = 10;
    /// openraft's targets that logged each failed request.
    const FLOOD: [&str; 2] = [
        "openraft::replication",
        "openraft::engine::handler::replication_handler",
    ];

    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let all: Vec<&Member> = members.iter().collect();
    let lead = leader(&store, &all, |_| true).await?;
    let mut writer = Writer::start(store.clone(), 0);
    writer.wait_for(10).await?;

    let victim = members
        .iter()
        .position(|m| m.id != lead)
        .expect("a follower");
    let (victim_id, victim_addr) = (members[victim].id, members[victim].addr);
    let at_kill = others(&members, victim_id)
        .iter()
        .map(|m| log_lines(&m.proc, 0).map(|l| l.len()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    members[victim].proc.kill9();
    let survivors: Vec<&Proc> = others(&members, victim_id)
        .into_iter()
        .map(|m| &m.proc)
        .collect();
    let id = victim_id.to_string();
    let count =
        |lines: &[String], needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    let summary = |logs: &[Vec<String>]| {
        let mut text = String::new();
        for (proc, lines) in survivors.iter().zip(logs) {
            let flood: usize = FLOOD.iter().map(|t| count(lines, t)).sum();
            text += &format!(
                "\n{}: {} lines since the kill, {} naming member {id}, {flood} from openraft's \
                 replication; the first: {:#?}",
                proc.name,
                lines.len(),
                count(lines, &id),
                lines.iter().take(12).collect::<Vec<_>>()
            );
        }
        text
    };
    let check = |logs: &[Vec<String>]| {
        for lines in logs {
            assert!(count(lines, &id) <= MAX_NAMING, "{}", summary(logs));
            for target in FLOOD {
                assert_eq!(count(lines, target), 0, "{}", summary(logs));
            }
            assert!(
                count(lines, "raft member unreachable") <= 1,
                "{}",
                summary(logs)
            );
        }
    };
    let logs = || {
        survivors
            .iter()
            .zip(&at_kill)
            .map(|(p, from)| log_lines(p, *from))
            .collect::<anyhow::Result<Vec<_>>>()
    };

    let warning = log_line(
        &survivors,
        &at_kill,
        &["WARN", "raft member unreachable", &id],
        summary,
    )
    .await?;
    assert!(warning.contains(&victim_addr.to_string()), "{warning}");
    // An observation window, not a wait for an event: what is checked is that nothing more
    // comes while the leader keeps retrying the dead member and writes go on.
    let at_warning = writer.count();
    tokio::time::sleep(WINDOW).await;
    writer.wait_for(at_warning + 10).await?;
    check(&logs()?);

    // Restarted on its address, the member answers again, and the leader says so.
    let name = members[victim].proc.name.clone();
    let restarted = Member::ready(cluster.spawn(&name, &[], victim_addr.port())?).await?;
    assert_eq!(restarted.id, victim_id);
    let back = log_line(
        &survivors,
        &at_kill,
        &["INFO", "raft member answers again", &id],
        summary,
    )
    .await?;
    assert!(back.contains("failed_attempts="), "{back}");
    let acked = writer.finish().await?;
    assert_all_present(&store, &acked).await?;
    check(&logs()?);
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_replaced_by_a_caught_up_learner() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c", "d"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let d = members[3].id;
    let all: Vec<&Member> = members.iter().collect();
    let lead = leader(&store, &all, |_| true).await?;
    let (voters, learners) = membership(&store, by_id(&members, lead), |v, l| {
        v.len() == 3 && l.contains(&d)
    })
    .await?;
    assert!(!voters.contains(&d));
    assert_eq!(learners, BTreeSet::from([d]));

    // SIGKILL a voter that is not the leader: after a few election timeouts without an
    // answer, the leader gives its seat to the learner and keeps it as a learner.
    let victim = *voters.iter().find(|v| **v != lead).expect("a follower");
    let index = members.iter().position(|m| m.id == victim).expect("victim");
    members[index].proc.kill9();
    // (While the change is in its joint phase, old and new voters both show.)
    let (voters, learners) = membership(&store, by_id(&members, lead), |v, _| {
        v.contains(&d) && !v.contains(&victim)
    })
    .await?;
    assert_eq!(voters.len(), 3);
    assert!(
        learners.contains(&victim),
        "the dead voter is demoted, not dropped"
    );
    put_surely(&store, "after/replacement", "ok").await?;

    // The demoted member is a learner now, and removing it takes it out altogether.
    store.remove_member(victim).await?;
    let (_, learners) = membership(&store, by_id(&members, lead), |_, l| l.is_empty()).await?;
    assert!(learners.is_empty());
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_by_a_learner_under_the_next_leader() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c", "d"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let d = members[3].id;
    let all: Vec<&Member> = members.iter().collect();
    let old = leader(&store, &all, |_| true).await?;
    membership(&store, by_id(&members, old), |v, l| {
        v.len() == 3 && l.contains(&d)
    })
    .await?;

    // SIGKILL the leader. The next leader has not heard from anyone at first; once it has led
    // long enough to tell the dead from the slow, it gives the old leader's seat to the learner.
    let index = members.iter().position(|m| m.id == old).expect("leader");
    members[index].proc.kill9();
    let survivors = others(&members, old);
    let new = leader(&store, &survivors, |l| l != old).await?;
    assert_ne!(new, d, "a learner never leads");
    let (voters, learners) = membership(&store, by_id(&members, new), |v, _| {
        v.contains(&d) && !v.contains(&old)
    })
    .await?;
    assert_eq!(voters.len(), 3);
    assert_eq!(learners, BTreeSet::from([old]));
    put_surely(&store, "after/leader-replacement", "ok").await?;
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_voters_then_a_removed_voter_keeps_a_quorum() -> TestResult {
    let cluster = Cluster::new(5);
    let mut members = cluster.start_all(&["a", "b", "c", "d", "e"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;
    let ids: BTreeSet<u64> = members.iter().map(|m| m.id).collect();
    let all: Vec<&Member> = members.iter().collect();
    let lead = leader(&store, &all, |_| true).await?;
    membership(&store, by_id(&members, lead), |v, _| *v == ids).await?;
    store.put("five/1", "x").await?;

    // Remove a follower voter: four voters remain, the cluster commits.
    let removed = *ids.iter().find(|id| **id != lead).expect("a follower");
    store.remove_member(removed).await?;
    let (voters, learners) =
        membership(&store, by_id(&members, lead), |v, _| !v.contains(&removed)).await?;
    assert_eq!(voters.len(), 4);
    assert!(
        !learners.contains(&removed),
        "a removed member leaves entirely"
    );
    let index = members
        .iter()
        .position(|m| m.id == removed)
        .expect("removed");
    members[index].proc.kill9();
    put_surely(&store, "five/2", "y").await?;

    // Removing a member that is not one is refused.
    match store.remove_member(removed).await {
        Err(StoreError::Membership(_)) => {}
        other => panic!("removing a non-member: {other:?}"),
    }

    // Four voters tolerate one more failure: SIGKILL another follower, writes still commit.
    let second = *voters.iter().find(|id| **id != lead).expect("a follower");
    let index = members.iter().position(|m| m.id == second).expect("second");
    members[index].proc.kill9();
    put_surely(&store, "five/3", "z").await?;
    assert_eq!(
        store.get("five/3").await?.map(|kv| kv.value).as_deref(),
        Some(&b"z"[..])
    );
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_when_its_owner_process_is_killed() -> TestResult {
    let cluster = Cluster::new(3);
    let members = cluster.start_all(&["a", "b", "c"]).await?;
    let (client, store) = cluster.client(addrs(&members)).await?;

    let mut args: Vec<String> = ["hold-lease", "--name", "owner", "--ttl-ms", "1500"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--certs".into(), path_arg(&cluster.certs())]);
    for m in &members {
        args.extend(["--seed".into(), m.addr.to_string()]);
    }
    args.extend(["--put".into(), "lease/owner=alive".into()]);
    let mut owner = Proc::spawn("owner", cluster.log("owner"), BIN, &args)?;
    let ready = owner.line("ready ").await?;
    let revision: u64 = ready.get("revision").context("revision")?.parse()?;
    let mut watch = store.watch("lease/", revision);

    // The owner keeps the lease alive past its TTL: three keep-alives are a full TTL apart
    // (it sends one every third of it), and the key is still there.
    for _ in 0..4 {
        owner.line("kept ").await?;
    }
    assert_eq!(
        store
            .get("lease/owner")
            .await?
            .map(|kv| kv.value)
            .as_deref(),
        Some(&b"alive"[..])
    );

    // SIGKILL the owner: no more keep-alives, the lease expires and takes the key with it.
    owner.kill9();
    let events = tokio::time::timeout(WAIT, watch.next())
        .await
        .context("the key never went")??;
    assert_eq!(events[0].key, "lease/owner");
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(store.get("lease/owner").await?, None);
    client.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_member_gracefully_and_bad_flags_are_refused() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a"]).await?;
    let status = members[0].proc.terminate().await?;
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let out = Command::new(BIN)
        .args(["node", "--name", "x", "--voters", "2"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--voters"), "{stderr}");
    assert!(out.stdout.is_empty(), "no ready line on bad flags");

    // A bootstrapping member may not bind the unspecified address: peers could not dial it.
    let out = Command::new(BIN)
        .args(["node", "--name", "x", "--bind", "0.0.0.0"])
        .args(["--data-dir", &path_arg(&cluster.data_dir("x"))])
        .args(["--certs", &path_arg(&cluster.certs())])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("specific IP"));
    Ok(())
}

// ===== A real partition: network namespaces =====

/// Members in network namespaces of their own, linked through a router namespace that the test
/// process also reaches (over a link of its own), so that links between members can be cut
/// while the test still talks to every member. Needs root and `ip`; removed on drop (deleting a
/// namespace deletes its links and the routes through them).
struct Netns {
    prefix: String,
    router: String,
    members: Vec<String>,
    /// Member `i`'s address.
    addrs: Vec<std::net::Ipv4Addr>,
    /// The test process's address, on its link to the router.
    client: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    /// `n` member namespaces. The addresses come from 198.18.0.0/15 (set aside for network
    /// tests), a /28 per instance chosen by the test process's pid and the instance's number in
    /// it (tests of one process run at once), one /30 per link.
    fn new(n: usize) -> anyhow::Result<Self> {
        static INSTANCES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let pid = std::process::id();
        // Interface names take at most 15 bytes: "sk", 7 pid digits, the instance, 3 more.
        let prefix = format!("sk{pid}{}", char::from(b'a' + seq as u8));
        let slot = (pid.wrapping_mul(4) + seq) % 8192;
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + slot * 16;
        let at = |link: usize, host: u32| {
            std::net::Ipv4Addr::from(base + 4 * u32::try_from(link).unwrap_or(0) + host)
        };
        let mut net = Self {
            router: format!("{prefix}r"),
            members: (0..n).map(|i| format!("{prefix}m{i}")).collect(),
            addrs: (0..n).map(|i| at(i, 2)).collect(),
            client: at(3, 2),
            prefix,
        };
        // Built after `net`, so that a failure halfway still removes what was made.
        net.build(n, &at).inspect_err(|_| net.remove())?;
        Ok(net)
    }

    fn build(&mut self, n: usize, at: &dyn Fn(usize, u32) -> std::net::Ipv4Addr) -> TestResult {
        anyhow::ensure!(n <= 3, "three member links fit a /28 with the client's");
        let r = self.router.clone();
        ip(&["netns", "add", &r])?;
        ip(&["-n", &r, "link", "set", "lo", "up"])?;
        let forward = Command::new("ip")
            .args(["netns", "exec", &r, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()?;
        anyhow::ensure!(
            forward.success(),
            "enable forwarding in the router namespace"
        );
        for i in 0..n {
            let m = self.members[i].clone();
            let (inside, outside) = (
                format!("{}m{i}", self.prefix),
                format!("{}r{i}", self.prefix),
            );
            ip(&["netns", "add", &m])?;
            ip(&["-n", &m, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &inside, "netns", &m, "type", "veth", "peer", "name", &outside,
                "netns", &r,
            ])?;
            let (router_end, member_end) = (at(i, 1), at(i, 2));
            ip(&[
                "-n",
                &m,
                "addr",
                "add",
                &format!("{member_end}/30"),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &m, "link", "set", &inside, "up"])?;
            ip(&[
                "-n",
                &m,
                "route",
                "add",
                "default",
                "via",
                &router_end.to_string(),
            ])?;
            ip(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("{router_end}/30"),
                "dev",
                &outside,
            ])?;
            ip(&["-n", &r, "link", "set", &outside, "up"])?;
        }
        let (test_end, router_end) = (format!("{}c", self.prefix), format!("{}rc", self.prefix));
        ip(&[
            "link",
            "add",
            &test_end,
            "type",
            "veth",
            "peer",
            "name",
            &router_end,
            "netns",
            &r,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", self.client),
            "dev",
            &test_end,
        ])?;
        ip(&["link", "set", &test_end, "up"])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{}/30", at(3, 1)),
            "dev",
            &router_end,
        ])?;
        ip(&["-n", &r, "link", "set", &router_end, "up"])?;
        ip(&[
            "route",
            "add",
            &format!("{}/28", at(0, 0)),
            "via",
            &at(3, 1).to_string(),
        ])?;
        Ok(())
    }

    /// Drops every packet between member `i` and the other members, both ways; the test
    /// process still reaches all of them.
    fn isolate(&self, i: usize) -> TestResult {
        self.rules("add", i)
    }

    /// Undoes [`Self::isolate`].
    fn heal(&self, i: usize) -> TestResult {
        self.rules("del", i)
    }

    fn rules(&self, op: &str, i: usize) -> TestResult {
        self.cut(op, self.addrs[i], i)
    }

    /// Cuts the test process off from every member but `i` (`op` "add"), or undoes it ("del"):
    /// its store clients then reach member `i` only, whatever members they have learned.
    fn confine_client(&self, op: &str, i: usize) -> TestResult {
        self.cut(op, self.client, i)
    }

    /// Blackholes traffic both ways between `me` and every member but `i`.
    fn cut(&self, op: &str, me: std::net::Ipv4Addr, i: usize) -> TestResult {
        let me = me.to_string();
        for other in self.addrs.iter().filter(|a| **a != self.addrs[i]) {
            let other = other.to_string();
            for (from, to) in [(&me, &other), (&other, &me)] {
                let rule = ["rule", op, "from", from, "to", to, "blackhole"];
                ip(&[&["-n", self.router.as_str()][..], &rule[..]].concat())?;
            }
        }
        Ok(())
    }

    fn remove(&self) {
        for ns in self.members.iter().chain([&self.router]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Cluster {
    /// Members `a`, `b` and `c`, one per namespace of `net`, `a` bootstrapping.
    async fn start_in(&self, net: &Netns) -> anyhow::Result<Vec<Member>> {
        const PORT: u16 = 7000;
        let mut members: Vec<Member> = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let join: Vec<SocketAddr> = members.first().map(|a| a.addr).into_iter().collect();
            let mut args = vec![
                "netns".to_owned(),
                "exec".to_owned(),
                net.members[i].clone(),
                BIN.to_owned(),
            ];
            args.extend(self.node_args(name, &join, PORT));
            args.extend(["--bind".to_owned(), net.addrs[i].to_string()]);
            let proc = Proc::spawn(name, self.log(name), "ip", &args)?;
            members.push(Member::ready(proc).await?);
        }
        for (m, addr) in members.iter().zip(&net.addrs) {
            anyhow::ensure!(m.addr == SocketAddr::from((*addr, PORT)), "{}", m.addr);
        }
        Ok(members)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_cannot_commit_and_the_majority_can() -> TestResult {
    let net = match Netns::new(3) {
        Ok(net) => net,
        Err(e) => {
            // Network namespaces need root and iproute2; the in-memory partition test in
            // skynet-raft covers the same logic without them.
            eprintln!("skipping the network namespace partition test: {e:#}");
            return Ok(());
        }
    };
    let cluster = Cluster::new(3);
    let members = cluster.start_in(&net).await?;
    let client_addr = SocketAddr::from((net.client, 0));
    let (client, store) = cluster
        .client_at(client_addr, addrs(&members), WAIT)
        .await?;
    let all: Vec<&Member> = members.iter().collect();
    let old = leader(&store, &all, |_| true).await?;
    store.put("p/before", "1").await?;
    let i = members.iter().position(|m| m.id == old).expect("leader");

    // Cut the leader off from the other two. A client that can only reach it cannot get a write
    // acknowledged or a linearizable read served: it is a minority of one. (The client is
    // confined too: it would learn the other members from the store and read through them.)
    net.isolate(i)?;
    net.confine_client("add", i)?;
    let short = Duration::from_secs(3);
    let (minority_node, minority) = cluster
        .client_at(client_addr, vec![members[i].addr], short)
        .await?;
    let write = minority.put("p/minority", "lost").await;
    assert!(
        write.is_err(),
        "the minority acknowledged a write: {write:?}"
    );
    let read = minority.get("p/before").await;
    assert!(
        read.is_err(),
        "the minority served a linearizable read: {read:?}"
    );
    net.confine_client("del", i)?;

    // The majority elects a leader of its own and commits.
    let majority: Vec<&Member> = others(&members, old);
    let new = leader(&store, &majority, |l| l != old).await?;
    put_surely(&store, "p/majority", "kept").await?;

    // Heal: the old leader follows the new one, and the write it could not commit is gone.
    net.heal(i)?;
    let wait = async {
        while store
            .member_status(members[i].addr)
            .await
            .ok()
            .and_then(|s| s.leader)
            != Some(new)
        {
            // The old leader hears of the new term with the next heartbeat.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .context("the old leader never followed")?;
    let value = |kv: Option<skynet::store::KeyValue>| kv.map(|kv| kv.value);
    assert_eq!(value(store.get("p/minority").await?), None);
    assert_eq!(
        value(store.get("p/majority").await?).as_deref(),
        Some(&b"kept"[..])
    );
    // Asked through the old leader too (it forwards to the new one).
    assert_eq!(
        value(minority.get("p/majority").await?).as_deref(),
        Some(&b"kept"[..])
    );

    minority_node.shutdown().await;
    client.shutdown().await;
    drop(members);
    drop(net);
    Ok(())
}

/// A client given one seed learns the other members from the store: when that seed, the
/// leader, is killed, the client's writes and its registration carry on through the others
/// instead of stranding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_with_one_seed_outlives_that_member() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (observer, observed) = cluster.client(addrs(&members)).await?;
    let leader_id = leader(&observed, &members.iter().collect::<Vec<_>>(), |_| true).await?;
    let seed = by_id(&members, leader_id).addr;

    let echo = ServiceDef::builder("echo", "1.0.0")
        .method("who", |_, _: ()| async { Ok::<_, ServiceError>(()) });
    let node = Node::builder()
        .name("one-seed")
        .development_credentials(cluster.certs())
        .config(RpcConfig {
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .store(StoreConfig::client(vec![seed]).timeout(WAIT))
        .service(echo)
        .start()
        .await?;
    let store = node.store().context("a store")?;
    let everyone: BTreeSet<SocketAddr> = addrs(&members).into_iter().collect();
    let learned = async {
        // The client asks for the members at start: a state to look at, not an event.
        while store.known_members().into_iter().collect::<BTreeSet<_>>() != everyone {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, learned)
        .await
        .context("the client never learned the members")?;

    // Its one seed, the leader, dies.
    let index = members
        .iter()
        .position(|m| m.id == leader_id)
        .context("leader")?;
    observed.put("before", b"written".to_vec()).await?;
    members[index].proc.kill9();
    // A linearizable read, which only a leader answers: one of the others, once elected.
    assert_eq!(
        store.get("before").await?.map(|kv| kv.value).as_deref(),
        Some(&b"written"[..])
    );
    // Its registration lease is kept alive through the others: the instance is still there
    // well past the lease's TTL (1.5 s).
    let registry = observer.registry().context("registry")?;
    registry
        .wait_for(WAIT, |s| s.instances("echo").len() == 1)
        .await
        .context("the instance is registered")?;
    let left = registry
        .wait_for(Duration::from_secs(4), |s| s.instances("echo").is_empty())
        .await;
    assert!(left.is_none(), "the client's instance left the registry");
    node.shutdown().await;
    observer.shutdown().await;
    Ok(())
}

/// A voter restarted on another address (its old port taken, say) would be cut off: the others
/// send to its recorded address, and it would campaign without end and later depose a healthy
/// leader. It refuses to start instead, saying why, and the cluster goes on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_on_another_address_refuses_to_start_and_says_why() -> TestResult {
    let cluster = Cluster::new(3);
    let mut members = cluster.start_all(&["a", "b", "c"]).await?;
    let (client, store) = cluster.client(addrs(&members[..2])).await?;
    let old = members[2].addr;
    let status = members[2].proc.terminate().await?;
    assert!(status.success(), "c stopped: {status}");
    let term = store.member_status(members[0].addr).await?.term;

    // The same data directory, another port.
    let mut again = cluster.spawn("c", &[], 0)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let exit = loop {
        if let Some(status) = again.child.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the member started on a new address: {}",
            std::fs::read_to_string(&again.log).unwrap_or_default()
        );
        // Polling the exit status: std has no async wait for a child.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!exit.success(), "exit status {exit}");
    let log = std::fs::read_to_string(&again.log)?;
    assert!(
        log.contains(&format!("is in the cluster's membership at {old}")),
        "the refusal does not say why: {log}"
    );
    // The others were not disturbed: same term, and writes go on.
    store.put("k", b"v".to_vec()).await?;
    assert_eq!(store.member_status(members[0].addr).await?.term, term);
    client.shutdown().await;
    Ok(())
}

/// A voter cut off from the other members for a while, under writes, comes back without
/// disturbing the leader: same leader, same term, and it catches up. openraft 0.9 has no
/// pre-vote: cut off, the voter would stand for election every few hundred milliseconds, and
/// its higher term would depose the healthy leader the moment it is heard again (every write
/// then waits for another election). With the pre-vote, it asks first, is told that the others
/// hear a leader, and never stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_cut_off_and_back_under_writes_does_not_depose_the_leader() -> TestResult {
    /// Several election timeouts of a voter standing on its own timer (300–400 ms each).
    const CUT_OFF: Duration = Duration::from_secs(3);
    let net = match Netns::new(3) {
        Ok(net) => net,
        Err(e) => {
            // As in the partition test: root and iproute2 are needed; the in-memory
            // `raft_partition` test in skynet-raft covers the same logic without them.
            eprintln!("skipping the network namespace cut-off test: {e:#}");
            return Ok(());
        }
    };
    let cluster = Cluster::new(3);
    let members = cluster.start_in(&net).await?;
    let (client, store) = cluster
        .client_at(SocketAddr::from((net.client, 0)), addrs(&members), WAIT)
        .await?;
    let all: Vec<&Member> = members.iter().collect();
    let lead = leader(&store, &all, |_| true).await?;
    let lead_at = by_id(&members, lead).addr;
    let term = store.member_status(lead_at).await?.term;
    let mut writer = Writer::start(store.clone(), 0);
    writer.wait_for(10).await?;

    let cut = members
        .iter()
        .position(|m| m.id != lead)
        .expect("a follower");
    net.isolate(cut)?;
    // An observation window, not a wait for an event: what is checked is that the cut-off
    // member does nothing disruptive meanwhile, while the writes go on.
    let before = writer.count();
    tokio::time::sleep(CUT_OFF).await;
    writer.wait_for(before + 10).await?;
    let status = store.member_status(members[cut].addr).await?;
    assert_eq!(status.term, term, "the cut-off member stood for election");

    net.heal(cut)?;
    // Caught up: it applies what the leader had applied when it came back.
    let target = store.member_status(lead_at).await?.last_applied;
    let caught_up = async {
        loop {
            if let Ok(status) = store.member_status(members[cut].addr).await
                && status.last_applied >= target
            {
                return;
            }
            // Catching up takes a few round trips; ask again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, caught_up)
        .await
        .context("the member never caught up")?;
    let now = writer.count();
    writer.wait_for(now + 10).await?;
    let status = store.member_status(lead_at).await?;
    assert_eq!(
        (status.leader, status.term),
        (Some(lead), term),
        "the member back from the cut disturbed the leader"
    );
    let acked = writer.finish().await?;
    assert_all_present(&store, &acked).await?;
    client.shutdown().await;
    drop(members);
    drop(net);
    Ok(())
}
