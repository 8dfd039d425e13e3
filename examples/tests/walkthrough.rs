//! The original skynet walkthrough, end to end, on the example cluster itself: the
//! `skynet-cluster` binary (the same program as `cargo run --example cluster`) in test mode,
//! which takes free ports and prints machine-readable lines. Real processes, real HTTP on
//! loopback, and a real browser (headless Chromium) where a web page is involved, if one is
//! installed.
//!
//! Every wait is bounded and waits for an event: a line of the cluster's output (ready lines,
//! what the routers and initiators see of the registry, the watcher's reports) or an HTTP
//! answer. The cluster is stopped with SIGTERM (and, failing that, SIGKILL) when its guard
//! drops.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// Bound on every wait for an event. Starting ten processes on a small, busy machine is the
/// slowest of them.
const WAIT: Duration = Duration::from_secs(180);

/// One process of the cluster, from its `process role=.. pid=.. ...` line.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    fields: HashMap<String, String>,
}

impl Proc {
    fn addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        self.fields
            .get(key)
            .with_context(|| format!("no {key}= in {:?}", self.fields))?
            .parse()
            .context("an address")
    }
}

fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The running example cluster; stopped when dropped.
struct Cluster {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every process, from the `process` lines.
    procs: HashMap<String, Proc>,
    /// What each process last reported seeing: (role, service) -> registered instances.
    sees: HashMap<(String, String), usize>,
    /// The roles whose death the cluster reported.
    exited: Vec<String>,
    /// The cluster's directory, from the `cluster ready` line.
    dir: PathBuf,
    /// Where the cluster's keys are, from the `keys` line.
    keys: PathBuf,
}

impl Cluster {
    fn start() -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_skynet-cluster"))
            .env("SKYNET_CLUSTER_TEST", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skynet-cluster")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cluster = Self {
            child: Some(child),
            lines,
            procs: HashMap::new(),
            sees: HashMap::new(),
            exited: Vec::new(),
            dir: PathBuf::new(),
            keys: PathBuf::new(),
        };
        cluster.wait_until(|c| !c.dir.as_os_str().is_empty())?;
        Ok(cluster)
    }

    /// Reads the cluster's output, recording what it says, until `done` holds (bounded).
    fn wait_until(&mut self, mut done: impl FnMut(&Self) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .context("the cluster never got there")?;
            self.record(&line)?;
        }
        Ok(())
    }

    fn record(&mut self, line: &str) -> anyhow::Result<()> {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let f = fields(rest);
        match kind {
            "process" => {
                let role = f.get("role").cloned().context("role=")?;
                let pid = f.get("pid").context("pid=")?.parse()?;
                self.procs.insert(role, Proc { pid, fields: f });
            }
            "keys" => {
                self.keys = f.get("dir").map(PathBuf::from).unwrap_or_default();
            }
            "cluster" => {
                self.dir = f.get("dir").map(PathBuf::from).unwrap_or_default();
            }
            "event" if rest.contains(" sees ") => {
                let role = f.get("role").cloned().context("role=")?;
                let service = f.get("service").cloned().context("service=")?;
                let n = f.get("instances").context("instances=")?.parse()?;
                self.sees.insert((role, service), n);
            }
            "exited" => self.exited.push(f.get("role").cloned().context("role=")?),
            "stopped" => bail!("the cluster stopped by itself"),
            _ => {}
        }
        Ok(())
    }

    fn proc(&self, role: &str) -> anyhow::Result<&Proc> {
        self.procs.get(role).with_context(|| format!("no {role}"))
    }

    /// Waits until `role` reports that it sees `n` registered instances of `service`.
    fn wait_sees(&mut self, role: &str, service: &str, n: usize) -> anyhow::Result<()> {
        let key = (role.to_owned(), service.to_owned());
        self.wait_until(|c| c.sees.get(&key) == Some(&n))
            .with_context(|| format!("{role} never saw {n} instances of {service}"))
    }

    /// SIGKILLs `role` and waits for the cluster to report its death.
    fn kill_9(&mut self, role: &str) -> anyhow::Result<()> {
        let pid = self.proc(role)?.pid;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -KILL {pid}: {status}");
        self.wait_until(|c| c.exited.iter().any(|r| r == role))
            .with_context(|| format!("the death of {role} was not reported"))
    }

    /// SIGTERM, then waits (bounded) for the supervisor to stop everything and exit.
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("already stopped");
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                bail!("the cluster did not stop in time")
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// A minimal HTTP/1.1 client: one request per connection, bounded by `WAIT`.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {text:?}"))?;
    let status = head.split_whitespace().nth(1).context("status")?.parse()?;
    Ok((status, body.to_owned()))
}

/// Loads `url` in headless Chromium and returns the DOM it built; `None` without Chromium.
fn browser_dom(url: &str) -> anyhow::Result<Option<String>> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    if !chromium.exists() {
        return Ok(None);
    }
    let profile = tempfile::tempdir()?;
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromium")?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(WAIT) {
        Ok(output) => output?,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("chromium did not finish loading {url} in time");
        }
    };
    ensure!(
        output.status.success(),
        "chromium failed: {}",
        output.status
    );
    Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// The page at `path`, as a browser builds it when one is installed, else as the server sent
/// it; with the HTTP status from a plain request either way.
fn page(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let (status, body) = http_get(addr, path)?;
    match browser_dom(&format!("http://{addr}{path}"))? {
        Some(dom) => Ok((status, dom)),
        None => Ok((status, body)),
    }
}

/// The text of the element with `id`, from `<tag id="..." ...>text<`.
fn element_text<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].trim())
}

/// The number `key` holds in the `/debug/vars` JSON of `admin`.
fn debug_var(admin: SocketAddr, key: &str) -> anyhow::Result<u64> {
    let (status, body) = http_get(admin, "/debug/vars")?;
    ensure!(status == 200, "/debug/vars answered {status}");
    let vars: serde_json::Value = serde_json::from_str(&body)?;
    vars.get(key)
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no number {key:?} in {body}"))
}

#[test]
fn the_original_walkthrough_works_on_the_example_cluster() -> anyhow::Result<()> {
    if !PathBuf::from("/usr/bin/chromium").exists() {
        println!("browser checks skipped: chromium not installed (plain HTTP checks instead)");
    }
    let mut cluster = Cluster::start()?;
    for role in [
        "store-1", "store-2", "store-3", "watcher", "hello-1", "hello-2", "router-1", "router-2",
        "http-1", "http-2",
    ] {
        let p = cluster.proc(role)?;
        p.addr("quic")?;
        p.addr("admin")?;
    }
    let http = cluster.proc("http-1")?.addr("http")?;
    // The keys are in the cluster's directory, readable by this user only.
    assert_eq!(cluster.keys, cluster.dir.join("certs"));
    for private in [&cluster.dir, &cluster.keys] {
        let mode = std::fs::metadata(private)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{private:?}");
    }
    // Both routers see both services, and the initiator both routers.
    for router in ["router-1", "router-2"] {
        cluster.wait_sees(router, "hello", 2)?;
    }
    cluster.wait_sees("http-1", "skynet.router", 2)?;

    // The form page loads.
    let (status, form) = page(http, "/")?;
    assert_eq!(status, 200);
    assert!(
        form.contains("<form") && form.contains("name=\"name\""),
        "{form}"
    );

    // Submitting it says hello.
    let (status, result) = page(http, "/new?name=World")?;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        element_text(&result, "result"),
        Some("Hello World"),
        "{result}"
    );

    // Kill the first router: once the initiator's view drops it, the other one answers.
    let router_2 = cluster.proc("router-2")?.addr("admin")?;
    let before = debug_var(router_2, "skynet.router.run-processed").unwrap_or(0);
    cluster.kill_9("router-1")?;
    cluster.wait_sees("http-1", "skynet.router", 1)?;
    let (status, result) = page(http, "/new?name=World")?;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        element_text(&result, "result"),
        Some("Hello World"),
        "{result}"
    );
    assert!(debug_var(router_2, "skynet.router.run-processed")? > before);

    // The services count their calls: /debug/vars shows live JSON counters.
    let hello_1 = cluster.proc("hello-1")?.addr("admin")?;
    let hello_2 = cluster.proc("hello-2")?.addr("admin")?;
    let processed = debug_var(hello_1, "hello.hello-processed").unwrap_or(0)
        + debug_var(hello_2, "hello.hello-processed").unwrap_or(0);
    assert!(processed > 0, "no hello call counted");

    // Kill every service: the page says, readably, that `hello` is not available.
    cluster.kill_9("hello-1")?;
    cluster.kill_9("hello-2")?;
    cluster.wait_sees("router-2", "hello", 0)?;
    let (status, error) = page(http, "/new?name=World")?;
    assert_eq!(status, 503, "{error}");
    let message = error.split("id=\"error\"").nth(1).unwrap_or_default();
    assert!(
        message.contains("The hello service is not available"),
        "{error}"
    );

    // Ctrl-C's twin, SIGTERM, stops everything and removes the cluster's directory.
    let dir = cluster.dir.clone();
    let pids: Vec<u32> = cluster.procs.values().map(|p| p.pid).collect();
    let status = cluster.stop()?;
    assert!(status.success(), "{status}");
    assert!(
        !dir.as_os_str().is_empty() && !dir.exists(),
        "{dir:?} is left"
    );
    for pid in pids {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "process {pid} outlived the cluster"
        );
    }
    Ok(())
}
