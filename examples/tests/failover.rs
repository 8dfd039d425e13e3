//! Failover with real OS processes: instances of the sample service (`hello-service`) are
//! killed with SIGKILL or stopped with SIGTERM while a caller in this process keeps calling
//! them by name. The config store member and the caller run in this process; every service
//! instance is its own process on loopback, killed when its guard drops.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use skynet::{CallError, Node, RpcConfig, StoreConfig};
use skynet_examples::{HelloRequest, count, hello};

type TestResult = anyhow::Result<()>;

/// Bound on every wait for an event in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// A `hello-service` process; killed with SIGKILL when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
    pid: u32,
}

impl Instance {
    /// Starts an instance and waits for its ready line (it is registered by then).
    async fn start(cluster: &Cluster, name: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hello-service"))
            .args(["--name", name, "--seed"])
            .arg(cluster.seed.local_addr().to_string())
            .arg("--certs")
            .arg(cluster.credentials.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting hello-service")?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next()),
        )
        .await
        .context("no ready line in time")??
        .context("hello-service exited before it was ready")??;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .with_context(|| format!("no {key} in {line:?}"))
        };
        let addr = field("addr=")?.parse()?;
        let pid = field("pid=")?.parse()?;
        Ok(Self { child, addr, pid })
    }

    fn kill_9(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    async fn terminate(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed: {status}");
        }
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn()?);
        let exit = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .context("the instance did not stop in time")???;
        if !exit.success() {
            bail!("the instance exited with {exit}");
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store member and the caller, both in this process.
struct Cluster {
    credentials: tempfile::TempDir,
    _data: tempfile::TempDir,
    seed: Node,
    caller: Node,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let credentials = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let seed = Node::builder()
            .name("store")
            .development_credentials(credentials.path())
            .store(StoreConfig::bootstrap(data.path().join("store")))
            .start()
            .await?;
        let caller = Node::builder()
            .name("caller")
            .development_credentials(credentials.path())
            .config(RpcConfig {
                connect_timeout: Duration::from_millis(500),
                ..Default::default()
            })
            .store(StoreConfig::client(vec![seed.local_addr()]))
            .start()
            .await?;
        Ok(Self {
            credentials,
            _data: data,
            seed,
            caller,
        })
    }

    /// Waits until the caller's registry view of `hello` holds exactly `addrs`.
    async fn wait_for_instances(&self, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        let want: HashSet<SocketAddr> = addrs.iter().copied().collect();
        let registry = self
            .caller
            .registry()
            .context("the caller has a registry")?;
        registry
            .wait_for(WAIT, |s| {
                s.instances("hello")
                    .iter()
                    .map(|i| i.addr)
                    .collect::<HashSet<_>>()
                    == want
            })
            .await
            .with_context(|| format!("the registry never showed exactly {addrs:?}"))?;
        Ok(())
    }

    async fn stop(self) {
        self.caller.shutdown().await;
        self.seed.shutdown().await;
    }
}

/// Callers that keep calling by name until stopped; they remember who served and every error.
struct Load {
    stop: Arc<AtomicBool>,
    served_by: tokio::sync::watch::Sender<HashSet<u32>>,
    calls: tokio::sync::watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `tasks` callers; with `counting`, every other one calls the non-idempotent `count`.
    fn start(caller: &Node, tasks: usize, counting: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served_by = tokio::sync::watch::Sender::new(HashSet::new());
        let calls = tokio::sync::watch::Sender::new(0u64);
        let tasks = (0..tasks)
            .map(|task| {
                let (caller, stop, served_by, calls) = (
                    caller.clone(),
                    stop.clone(),
                    served_by.clone(),
                    calls.clone(),
                );
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let req = HelloRequest {
                            name: format!("caller {task}"),
                        };
                        let reply = if counting && task % 2 == 1 {
                            count::client(&caller).call(req).await
                        } else {
                            hello::client(&caller).call(req).await
                        };
                        calls.send_modify(|n| *n += 1);
                        match reply {
                            Ok(r) => {
                                served_by.send_if_modified(|pids| pids.insert(r.served_by));
                            }
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    errors
                })
            })
            .collect();
        Self {
            stop,
            served_by,
            calls,
            tasks,
        }
    }

    /// Waits until `pid` has answered at least one call.
    async fn wait_served_by(&self, pid: u32) -> anyhow::Result<()> {
        let mut served = self.served_by.subscribe();
        tokio::time::timeout(WAIT, served.wait_for(|pids| pids.contains(&pid)))
            .await
            .with_context(|| format!("process {pid} never served a call"))??;
        Ok(())
    }

    /// Waits until `more` calls have completed after now.
    async fn wait_calls(&self, more: u64) -> anyhow::Result<()> {
        let mut calls = self.calls.subscribe();
        let target = *calls.borrow() + more;
        tokio::time::timeout(WAIT, calls.wait_for(|n| *n >= target))
            .await
            .context("the load stalled")??;
        Ok(())
    }

    /// Stops the callers; returns how many calls they made and every error they saw.
    async fn stop(self) -> anyhow::Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await?);
        }
        let calls = *self.calls.borrow();
        Ok((calls, errors))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_fails_no_idempotent_call_and_a_new_instance_takes_over() -> TestResult {
    let cluster = Cluster::start().await?;
    let mut a = Instance::start(&cluster, "a").await?;
    let b = Instance::start(&cluster, "b").await?;
    let c = Instance::start(&cluster, "c").await?;
    cluster
        .wait_for_instances(&[a.addr, b.addr, c.addr])
        .await?;

    let load = Load::start(&cluster.caller, 16, false);
    for pid in [a.pid, b.pid, c.pid] {
        load.wait_served_by(pid).await?;
    }

    // SIGKILL one instance in the middle of the traffic: its calls in flight are retried
    // elsewhere once it is culled, and the lease reaper removes it from the registry.
    a.kill_9()?;
    cluster.wait_for_instances(&[b.addr, c.addr]).await?;

    // A new instance joins and takes traffic.
    let d = Instance::start(&cluster, "d").await?;
    load.wait_served_by(d.pid).await?;

    let (calls, errors) = load.stop().await?;
    assert!(calls > 0);
    assert!(
        errors.is_empty(),
        "{} of {calls} calls failed: {errors:?}",
        errors.len()
    );

    // Every instance killed: callers get the typed error naming the service.
    drop((b, c, d));
    cluster.wait_for_instances(&[]).await?;
    let err = hello::client(&cluster.caller)
        .call(HelloRequest {
            name: "anyone".into(),
        })
        .await
        .expect_err("no instance is left");
    assert!(
        matches!(err, CallError::NoInstance { ref service, .. } if service == "hello"),
        "{err:?}"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_no_call_of_any_kind() -> TestResult {
    let cluster = Cluster::start().await?;
    let a = Instance::start(&cluster, "a").await?;
    let b = Instance::start(&cluster, "b").await?;
    cluster.wait_for_instances(&[a.addr, b.addr]).await?;

    // Half the callers call `count`, which is never retried once it may have run.
    let load = Load::start(&cluster.caller, 8, true);
    load.wait_served_by(a.pid).await?;
    load.wait_served_by(b.pid).await?;

    let gone = a.addr;
    a.terminate().await?;
    cluster.wait_for_instances(&[b.addr]).await?;
    load.wait_calls(100).await?;

    let (calls, errors) = load.stop().await?;
    assert!(
        errors.is_empty(),
        "{} of {calls} calls failed: {errors:?}",
        errors.len()
    );
    let registry = cluster.caller.registry().context("registry")?;
    assert!(!registry.snapshot().contains("hello", gone));
    drop(b);
    cluster.stop().await;
    Ok(())
}
