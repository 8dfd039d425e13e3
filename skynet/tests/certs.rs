//! Credentials that do not match. A node holding another cluster's CA (or an expired
//! certificate) gets a specific error naming the peer at once, well before its deadline, and
//! the node it dialed logs the refusal naming the remote address. A `skynet` role that joins a
//! cluster with a `--certs` directory holding no CA stops at start, naming the directory,
//! instead of making a CA of its own.
//!
//! In-process tests run on a current-thread runtime, so that the test's `tracing` subscriber
//! (a thread-local default) sees every node's logs; process tests read the children's stderr.

use std::io::{BufRead as _, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use skynet::tls::Credentials;
use skynet::{CallError, Node, NodeError, ServiceDef, ServiceError, StoreConfig, StoreError};
use tokio::sync::{Notify, mpsc};

type TestResult = anyhow::Result<()>;

const BIN: &str = env!("CARGO_BIN_EXE_skynet");
/// Upper bound of every wait for an event: generous, since the machine may be busy.
const WAIT: Duration = Duration::from_secs(30);

// ===== Logs of the nodes in this process =====

/// A `tracing` writer that keeps what it is given and wakes whoever waits for a line.
#[derive(Clone, Default)]
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    written: Arc<Notify>,
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        self.written.notify_waiters();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's WARN and ERROR events until the guard drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self) -> Vec<String> {
        let bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The first line logged that contains every one of `parts`, waiting for it.
    async fn line_with(&self, parts: &[&str]) -> anyhow::Result<String> {
        let wait = async {
            loop {
                let written = self.written.notified();
                let mut written = std::pin::pin!(written);
                // Registered before the look, so a line written in between still wakes us.
                written.as_mut().enable();
                if let Some(line) = self
                    .lines()
                    .into_iter()
                    .find(|line| parts.iter().all(|p| line.contains(p)))
                {
                    return line;
                }
                written.await;
            }
        };
        tokio::time::timeout(WAIT, wait).await.with_context(|| {
            format!(
                "no log line with {parts:?}; logged:\n{}",
                self.lines().join("\n")
            )
        })
    }
}

// ===== Nodes =====

fn echo() -> skynet::ServiceDefBuilder {
    ServiceDef::builder("echo", "1.0.0")
        .method("say", |_: skynet::Context, text: String| async move {
            Ok::<_, ServiceError>(text)
        })
}

async fn echo_node(certs: &Path) -> anyhow::Result<Node> {
    Ok(Node::builder()
        .name("server")
        .development_credentials(certs)
        .service(echo())
        .start()
        .await?)
}

/// Credentials from the CA in `certs` whose certificate expired long ago.
fn expired_credentials(certs: &Path) -> anyhow::Result<Credentials> {
    let ca_pem = std::fs::read_to_string(certs.join("ca.pem"))?;
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(certs.join("ca.key"))?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![skynet::tls::CLUSTER_SERVER_NAME.into()])?;
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Credentials::from_pem(
        ca_pem.as_bytes(),
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        Path::new("expired"),
    )?)
}

#[tokio::test]
async fn a_call_to_a_node_of_another_ca_is_refused_at_once_and_logged_there() -> TestResult {
    let logs = Captured::default();
    let _logging = logs.install();
    let (ours, theirs) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let server = echo_node(ours.path()).await?;
    let caller = Node::builder()
        .name("stranger")
        .development_credentials(theirs.path())
        .start()
        .await?;
    let target = server.local_addr().to_string();

    // A deadline far above a handshake's few round trips: the refusal must not wait it out.
    let deadline = Duration::from_secs(20);
    let started = Instant::now();
    let result = caller
        .client("echo")
        .at(server.local_addr())
        .with_deadline(deadline)
        .call::<String, String, ServiceError>("say", "hi".into())
        .await;
    let took = started.elapsed();
    match &result {
        Err(e @ CallError::HandshakeRefused { target: t, reason }) => {
            assert_eq!(*t, target);
            assert!(
                reason.contains("the peer's certificate is not signed by this cluster's CA"),
                "{reason}"
            );
            assert!(reason.contains("invalid peer certificate"), "{reason}");
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("TLS handshake with {target} refused: ")),
                "{message}"
            );
            assert!(!e.is_safe_to_retry());
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    assert!(
        took < deadline / 4,
        "the refusal took {took:?} of a {deadline:?} deadline"
    );

    // The server names the address it refused, and why (from its side: the caller refused
    // the server's certificate).
    let line = logs
        .line_with(&[
            "WARN",
            &format!("TLS handshake with {} refused", caller.local_addr()),
            "the peer refused this node's certificate: it is not signed by the peer's CA",
        ])
        .await?;
    assert!(line.contains("invalid peer certificate"), "{line}");

    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// The one-sided case: the caller accepts the server, the server refuses the caller's expired
/// certificate. The caller's side of the handshake is done before the server checks, so the
/// refusal ends the first call rather than the dial: still a refusal, not a lost connection.
#[tokio::test]
async fn an_expired_certificate_is_refused_by_name_on_both_sides() -> TestResult {
    let logs = Captured::default();
    let _logging = logs.install();
    let certs = tempfile::tempdir()?;
    let server = echo_node(certs.path()).await?;
    let caller = Node::builder()
        .name("expired")
        .credentials(expired_credentials(certs.path())?)
        .start()
        .await?;

    let deadline = Duration::from_secs(20);
    let started = Instant::now();
    let result = caller
        .client("echo")
        .at(server.local_addr())
        .with_deadline(deadline)
        .call::<String, String, ServiceError>("say", "hi".into())
        .await;
    let took = started.elapsed();
    assert_refused_at_once(
        &result,
        server.local_addr(),
        "the peer refused this node's certificate as expired",
        took,
        deadline,
    );
    logs.line_with(&[
        "WARN",
        &format!("TLS handshake with {} refused", caller.local_addr()),
        "the peer's certificate has expired or is not valid yet",
    ])
    .await?;

    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// The store paths: a client's request and a member's join used to retry a refused handshake
/// until their timeouts and then report a timeout.
#[tokio::test]
async fn store_requests_and_joins_of_another_ca_fail_at_once_naming_the_member() -> TestResult {
    let logs = Captured::default();
    let _logging = logs.install();
    let (ours, theirs, data) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let member = Node::builder()
        .name("member")
        .development_credentials(ours.path())
        .store(StoreConfig::bootstrap(data.path().join("member")))
        .start()
        .await?;
    let seed = member.local_addr();
    let refused = format!("TLS handshake with {seed} refused: ");
    let cause = "the peer's certificate is not signed by this cluster's CA";

    let timeout = Duration::from_secs(20);
    let client = Node::builder()
        .name("client")
        .development_credentials(theirs.path())
        .store(StoreConfig::client(vec![seed]).timeout(timeout))
        .start()
        .await?;
    let store = client.store().context("a store client")?;
    let started = Instant::now();
    let result = store.get("any").await;
    let took = started.elapsed();
    match &result {
        Err(StoreError::Unreachable(reason)) => {
            assert!(reason.starts_with(&refused), "{reason}");
            assert!(reason.contains(cause), "{reason}");
        }
        other => panic!("expected an unreachable store, got {other:?}"),
    }
    assert!(took < timeout / 4, "took {took:?} of a {timeout:?} timeout");
    client.shutdown().await;

    let started = Instant::now();
    let joined = Node::builder()
        .name("joiner")
        .development_credentials(theirs.path())
        .store(StoreConfig::join(data.path().join("joiner"), vec![seed]).join_timeout(timeout))
        .start()
        .await;
    let took = started.elapsed();
    match &joined {
        Err(NodeError::Store(StoreError::Unreachable(reason))) => {
            assert!(reason.starts_with(&refused), "{reason}");
            assert!(reason.contains(cause), "{reason}");
        }
        Err(other) => panic!("expected an unreachable store, got {other:?}"),
        Ok(_) => panic!("a node of another CA joined"),
    }
    assert!(took < timeout / 4, "took {took:?} of a {timeout:?} timeout");
    logs.line_with(&["WARN", "TLS handshake with 127.0.0.1:", "refused"])
        .await?;

    member.shutdown().await;
    Ok(())
}

/// A call by name to an instance that holds another cluster's certificate: refused at once,
/// where an unreachable instance is retried until the retry budget or the deadline runs out.
#[tokio::test]
async fn a_call_by_name_to_an_instance_of_another_ca_is_refused_at_once() -> TestResult {
    let (ours, theirs, data) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let member = Node::builder()
        .name("member")
        .development_credentials(ours.path())
        .store(StoreConfig::bootstrap(data.path().join("member")))
        .start()
        .await?;
    let stranger = echo_node(theirs.path()).await?;
    // The stranger cannot register itself (the store refuses it), so its record is written
    // for it, as a stale record of another cluster's node at a reused address would read.
    let record = serde_json::json!({
        "service": "echo",
        "version": "1.0.0",
        "node": "stranger",
        "addr": stranger.local_addr(),
        "host": "elsewhere",
        "region": "unknown",
        "started_at_ms": 0,
        "registered": true,
        "methods": ["say"],
        "idempotent": ["say"],
    });
    let store = member.store().context("a member")?;
    store
        .put(
            format!(
                "{}echo/{}",
                skynet::registry::INSTANCES_PREFIX,
                stranger.local_addr()
            ),
            serde_json::to_vec(&record)?,
        )
        .await?;
    let registry = member.registry().context("a registry")?;
    registry
        .wait_for(WAIT, |s| s.contains("echo", stranger.local_addr()))
        .await
        .context("the record never reached the registry")?;

    let deadline = Duration::from_secs(20);
    let started = Instant::now();
    let result = member
        .client("echo")
        .with_deadline(deadline)
        .call::<String, String, ServiceError>("say", "hi".into())
        .await;
    let took = started.elapsed();
    assert_refused_at_once(
        &result,
        stranger.local_addr(),
        "the peer's certificate is not signed by this cluster's CA",
        took,
        deadline,
    );

    stranger.shutdown().await;
    member.shutdown().await;
    Ok(())
}

// ===== Processes =====

/// A child process, killed and reaped when dropped; its stderr lines come through a channel.
struct Proc {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

/// Sends each line `from` gives, from a thread of its own.
fn forward_lines(from: impl std::io::Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl Proc {
    fn spawn(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn skynet")?;
        let stdout = forward_lines(child.stdout.take().context("stdout")?);
        let stderr = forward_lines(child.stderr.take().context("stderr")?);
        Ok(Self {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        })
    }

    /// The address in the `ready` line on stdout.
    async fn ready_addr(&mut self) -> anyhow::Result<SocketAddr> {
        let wait = async {
            while let Some(line) = self.stdout.recv().await {
                if line.starts_with("ready ") {
                    return Some(line);
                }
            }
            None
        };
        let line = tokio::time::timeout(WAIT, wait)
            .await
            .context("no ready line in time")?
            .context("exited before its ready line")?;
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .context("no addr in the ready line")?;
        Ok(addr.parse()?)
    }

    /// The first stderr line with every one of `parts`, waiting for it.
    async fn stderr_line(&mut self, parts: &[&str]) -> anyhow::Result<String> {
        let wait = async {
            while let Some(line) = self.stderr.recv().await {
                let found = parts.iter().all(|p| line.contains(p));
                self.seen.push(line.clone());
                if found {
                    return Ok(line);
                }
            }
            bail!("stderr ended")
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(found) => found,
            Err(_) => bail!("no stderr line with {parts:?}: {:#?}", self.seen),
        }
    }

    /// Waits (bounded) for the exit; returns its status and all of stderr.
    async fn exit(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("still running after {WAIT:?}: {:#?}", self.seen);
            }
            // std has no async wait for a child; its stderr is read meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stderr = std::mem::take(&mut self.seen);
        while let Some(line) = self.stderr.recv().await {
            stderr.push(line);
        }
        Ok((status, stderr.join("\n")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a UTF-8 temp path")
}

/// Every file and directory under `dir`, for "nothing was written" checks.
fn contents(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        found.push(entry?.path());
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_role_without_a_cluster_ca_stops_naming_the_directory() -> TestResult {
    let root = tempfile::tempdir()?;
    // Nobody listens there; the roles must stop before they try.
    let seed = "127.0.0.1:9";
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty)?;
    let missing = root.path().join("missing");
    let data = root.path().join("data");
    for certs in [&empty, &missing] {
        let certs_arg = path_arg(certs)?;
        let roles: [Vec<&str>; 6] = [
            vec!["router", "--join", seed, "--certs", certs_arg],
            vec!["services", "--join", seed, "--certs", certs_arg],
            vec!["watcher", "--join", seed, "--certs", certs_arg],
            vec!["routes", "list", "--join", seed, "--certs", certs_arg],
            vec!["initiator", "tcp", "--join", seed, "--certs", certs_arg],
            vec![
                "node",
                "--name",
                "b",
                "--join",
                seed,
                "--data-dir",
                path_arg(&data)?,
                "--certs",
                certs_arg,
            ],
        ];
        for role in roles {
            let (status, stderr) = Proc::spawn(&role)?.exit().await?;
            assert_eq!(status.code(), Some(1), "{role:?}: {stderr}");
            let expected = format!(
                "skynet: no cluster CA in {}: the first node (skynet node without --join) \
                 creates it; pass the same --certs as the cluster",
                certs.display()
            );
            assert!(stderr.contains(&expected), "{role:?}: {stderr}");
            assert!(!missing.exists(), "{role:?} created {}", missing.display());
            assert!(
                contents(&empty)?.is_empty(),
                "{role:?} wrote into {empty:?}"
            );
            assert!(!data.exists(), "{role:?} created its data directory");
        }
    }

    // The first node still creates the CA.
    let mut first = Proc::spawn(&[
        "node",
        "--name",
        "a",
        "--voters",
        "1",
        "--data-dir",
        path_arg(&data)?,
        "--certs",
        path_arg(&missing)?,
    ])?;
    first.ready_addr().await?;
    assert!(missing.join("ca.pem").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_cluster_ca_is_told_at_once_and_the_member_logs_it() -> TestResult {
    let root = tempfile::tempdir()?;
    let (ours, theirs) = (root.path().join("ours"), root.path().join("theirs"));
    // Another cluster's CA, as a first node elsewhere would have made it.
    Credentials::development(&theirs, "elsewhere")?;
    let mut member = Proc::spawn(&[
        "node",
        "--name",
        "a",
        "--voters",
        "1",
        "--data-dir",
        path_arg(&root.path().join("data"))?,
        "--certs",
        path_arg(&ours)?,
    ])?;
    let seed = member.ready_addr().await?;

    let started = Instant::now();
    let services = Proc::spawn(&[
        "services",
        "--join",
        &seed.to_string(),
        "--certs",
        path_arg(&theirs)?,
    ])?;
    let (status, stderr) = services.exit().await?;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "store unreachable: TLS handshake with {seed} refused: the peer's certificate is not \
             signed by this cluster's CA"
        )),
        "{stderr}"
    );
    // The store client's timeout, which a refused handshake used to wait out whole.
    let timeout = Duration::from_secs(10);
    assert!(
        took < timeout,
        "took {took:?}; the store timeout is {timeout:?}"
    );

    let line = member
        .stderr_line(&["WARN", "TLS handshake with 127.0.0.1:", "refused"])
        .await?;
    assert!(
        line.contains(
            "the peer refused this node's certificate: it is not signed by the peer's CA"
        ),
        "{line}"
    );
    Ok(())
}

/// Checks that `result` is a handshake refused by or for `target`, whose reason says `says`,
/// and that it came well within the call's `deadline` (it took `took`).
fn assert_refused_at_once(
    result: &Result<String, CallError<ServiceError>>,
    target: SocketAddr,
    says: &str,
    took: Duration,
    deadline: Duration,
) {
    match result {
        Err(CallError::HandshakeRefused { target: t, reason }) => {
            assert_eq!(*t, target.to_string());
            assert!(reason.contains(says), "{reason}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    assert!(
        took < deadline / 4,
        "the refusal took {took:?} of a {deadline:?} deadline"
    );
}
