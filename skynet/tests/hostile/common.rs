//! What every hostile test needs: a small cluster in this process and `skynet` processes
//! (initiators) joined to it, with their memory readable from `/proc`.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use skynet::route::{self, Hop, Route};
use skynet::{Node, ServiceDef, ServiceError, StoreConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

pub type TestResult = anyhow::Result<()>;

/// Upper bound of every wait: generous, since the machine may be busy; never a measurement.
pub const WAIT: Duration = Duration::from_secs(30);

const BIN: &str = env!("CARGO_BIN_EXE_skynet");

/// The request type of `greeter.strict`: a typed method, which refuses input of another shape.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Named {
    pub name: String,
}

/// A store member and a worker hosting `greeter.greet` and `greeter.strict` in this process, a
/// router process, the route `hello` (one hop, `greeter.greet`, retry allowed) and the route
/// `strict` (one hop, `greeter.strict`, whose request type is [`Named`]). The router runs apart because
/// it parses every route's input: under a flood of large inputs it would take this process's
/// threads from the store and the worker's lease.
pub struct Cluster {
    credentials: tempfile::TempDir,
    _data: tempfile::TempDir,
    nodes: Vec<Node>,
    _router: Proc,
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Self> {
        let credentials = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let store = Node::builder()
            .name("store")
            .development_credentials(credentials.path())
            .store(StoreConfig::bootstrap(data.path().join("store")))
            .start()
            .await?;
        let greeter = ServiceDef::builder("greeter", "1.0.0")
            .idempotent_method("greet", |_, req: Value| async move {
                let name = req.get("name").and_then(Value::as_str).unwrap_or("nobody");
                Ok::<_, ServiceError>(json!({ "greeting": format!("Hello {name}") }))
            })
            .idempotent_method("strict", |_, req: Named| async move {
                Ok::<_, ServiceError>(json!({ "greeting": format!("Hello {}", req.name) }))
            });
        let worker = Node::builder()
            .name("worker")
            .development_credentials(credentials.path())
            .store(StoreConfig::client(vec![store.local_addr()]))
            .service(greeter)
            .start()
            .await?;
        let store_handle = worker.store().context("store")?;
        route::put(
            &store_handle,
            &Route::new("hello", vec![Hop::new("greeter", "greet").retry(true)]),
        )
        .await?;
        route::put(
            &store_handle,
            &Route::new("strict", vec![Hop::new("greeter", "strict")]),
        )
        .await?;
        let args = [
            "--log-level",
            "warn",
            "router",
            "--join",
            &store.local_addr().to_string(),
            "--certs",
            &credentials.path().display().to_string(),
        ]
        .map(str::to_owned);
        let mut router = Proc::spawn("router", &args)?;
        // The router's ready line says it has read the routes.
        router.ready = router.line("ready ").await?;
        worker
            .registry()
            .context("registry")?
            .wait_for(WAIT, |s| {
                !s.instances("greeter").is_empty() && !s.instances("skynet.router").is_empty()
            })
            .await
            .context("the worker and the router registered")?;
        Ok(Self {
            credentials,
            _data: data,
            nodes: vec![store, worker],
            _router: router,
        })
    }

    /// The development credentials directory.
    pub fn certs(&self) -> &Path {
        self.credentials.path()
    }

    /// The store member's address, to `--join`.
    pub fn seed(&self) -> SocketAddr {
        self.nodes[0].local_addr()
    }

    /// Starts `skynet initiator <kind> --join .. --certs .. --admin 127.0.0.1:0 <extra>` and
    /// waits for its ready line.
    pub async fn initiator(&self, kind: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        let mut args: Vec<String> = ["--log-level", "warn", "initiator", kind, "--join"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(self.seed().to_string());
        args.push("--certs".to_owned());
        args.push(self.certs().display().to_string());
        args.extend(["--admin".to_owned(), "127.0.0.1:0".to_owned()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut proc = Proc::spawn(&format!("initiator {kind}"), &args)?;
        proc.ready = proc.line("ready ").await?;
        Ok(proc)
    }

    pub async fn stop(self) {
        for node in self.nodes.iter().rev() {
            node.shutdown().await;
        }
    }
}

/// A running `skynet` process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// The fields of its ready line, once read.
    pub ready: BTreeMap<String, String>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
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
            ready: BTreeMap::new(),
        })
    }

    /// The next stdout line that starts with `prefix`, as `key=value` fields.
    pub async fn line(&mut self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect());
                }
            }
            bail!("{} exited before printing {prefix:?}", self.name)
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .with_context(|| format!("{} never printed {prefix:?}", self.name))?
    }

    /// An address from the ready line (`http`, `tcp`, `admin`, `addr`).
    pub fn addr(&self, field: &str) -> anyhow::Result<SocketAddr> {
        self.ready
            .get(field)
            .with_context(|| format!("{} printed no {field}=", self.name))?
            .parse()
            .with_context(|| format!("{}'s {field}=", self.name))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmRSS:").map(|kib| kib * 1024)
    }

    /// The highest resident memory so far, in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmHWM:").map(|kib| kib * 1024)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{line:?}"))
}

/// A megabyte figure for messages.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// One HTTP/1.1 request over a fresh connection; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await??;
    parse_response(&response)
}

/// The status and body of one HTTP/1.1 response.
pub fn parse_response(response: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no status line in {text:?}"))?
        .parse()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
