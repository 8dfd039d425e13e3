//! The example cluster: every role of a skynet cluster as its own OS process on loopback.
//!
//! [`main`] is the whole program behind `cargo run --release --example cluster` (and the
//! `skynet-cluster` binary that tests run). Started without arguments it is the *supervisor*:
//! it re-executes itself once per process of the cluster, with `role <kind> ...` arguments,
//! waits for each child's ready line, stores the `hello` route, prints a table of processes and
//! what to try, reports what the watcher sees and any child that dies, and on Ctrl-C or SIGTERM
//! stops every child and removes its temporary directory.
//!
//! That directory is made fresh for each run, with a random name and mode 0700 (see
//! `private_dir`); it holds the cluster's CA and node keys in `certs`, which the supervisor
//! prints before anything else (`keys: <dir>/certs (private, mode 0700)`), and passes to each
//! child with `--certs`.
//!
//! Each role is one small function built from the library: [`store_role`], [`service_role`],
//! [`router_role`], [`http_role`] and [`watcher_role`]. A child prints one line,
//! `ready pid=.. quic=.. admin=.. [http=..]`, once it can do its job, then event lines; its
//! logs go to stderr, which the supervisor sends to a file. A child stops on SIGTERM, Ctrl-C,
//! or when its stdin closes, so that children never outlive a supervisor that was killed.
//!
//! With `SKYNET_CLUSTER_TEST=1` the supervisor takes free ports everywhere and prints
//! machine-readable lines instead of the table (`keys dir=.. mode=0700` first, then `process
//! role=.. pid=.. quic=.. admin=.. [http=..]`, `cluster ready dir=..`, `event role=..
//! <line>`, `exited role=.. pid=.. status=..`, `stopped`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use skynet::initiator::RouteCaller;
use skynet::initiator::http::{HttpConfig, HttpInitiator};
use skynet::registry::Change;
use skynet::route::{self, Hop, ROUTER_SERVICE, Route, Router};
use skynet::{Node, NodeBuilder, RpcConfig, StoreConfig};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, watch};

use crate::hello;

/// The environment variable that selects free ports and machine-readable output.
pub const TEST_MODE_ENV: &str = "SKYNET_CLUSTER_TEST";

/// How long a child may take to print its ready line. Generous: ten processes start on what
/// may be a small, busy machine, and the store members wait for a leader.
const READY_WAIT: Duration = Duration::from_secs(120);
/// How long a child may take to stop after SIGTERM before it gets SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// How long one HTTP request may take end to end (the route's deadline).
const ROUTE_DEADLINE: Duration = Duration::from_secs(5);

/// Runs the example: the supervisor, or one role when re-executed with `role ...`.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // Members run in this process: quiet openraft's lines for every request to a dead one.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                format!("warn,{}", skynet::store::RECOMMENDED_LOG_FILTER).into()
            }),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("role") {
        let role = RoleArgs::parse_from(std::env::args().skip(1));
        return runtime.block_on(run_role(role.kind));
    }
    runtime.block_on(supervise())
}

// ---------------------------------------------------------------------------------------
// The roles: what each child process runs.
// ---------------------------------------------------------------------------------------

/// `role <kind> ...`: the command line of a child.
#[derive(Debug, Parser)]
struct RoleArgs {
    #[command(subcommand)]
    kind: RoleKind,
}

/// What every role needs.
#[derive(Debug, Clone, clap::Args)]
struct Common {
    /// The node's name.
    #[arg(long)]
    name: String,
    /// The development credentials directory (one CA for the whole cluster).
    #[arg(long)]
    certs: PathBuf,
    /// The QUIC (UDP) port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The admin HTTP port (`/debug/vars`, `/metrics`); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    admin: u16,
    /// Config store members to reach the store through.
    #[arg(long = "seed")]
    seeds: Vec<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum RoleKind {
    /// A config store voter; bootstraps the store when it has no seed.
    Store {
        #[command(flatten)]
        common: Common,
        /// Where the member keeps its Raft data.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// An instance of the Hello World service.
    Service {
        #[command(flatten)]
        common: Common,
    },
    /// A router: runs the stored routes.
    Router {
        #[command(flatten)]
        common: Common,
    },
    /// An HTTP initiator: the form, and JSON for programs.
    Http {
        #[command(flatten)]
        common: Common,
        /// The HTTP port; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        http: u16,
    },
    /// A watcher: prints every join and leave of the registry.
    Watcher {
        #[command(flatten)]
        common: Common,
    },
}

async fn run_role(kind: RoleKind) -> anyhow::Result<()> {
    match kind {
        RoleKind::Store { common, data_dir } => store_role(&common, data_dir).await,
        RoleKind::Service { common } => service_role(&common).await,
        RoleKind::Router { common } => router_role(&common).await,
        RoleKind::Http { common, http } => http_role(&common, http).await,
        RoleKind::Watcher { common } => watcher_role(&common).await,
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The builder every role starts from: name, address, the cluster's CA, an admin port, and
/// connection timers short enough that a killed peer is noticed within about two seconds
/// (about when its registration lease runs out), so that a request never hangs on it long.
///
/// Only the voter that bootstraps the store (no seeds) creates the cluster CA; every other
/// role finds it, so that one pointed at the wrong directory stops and names it rather than
/// making a CA of its own and never being let in.
fn builder(common: &Common) -> NodeBuilder {
    let builder = Node::builder()
        .name(common.name.as_str())
        .bind(loopback(common.port));
    let builder = if common.seeds.is_empty() {
        builder.development_credentials(&common.certs)
    } else {
        builder.development_credentials_existing(&common.certs)
    };
    builder.admin(loopback(common.admin)).config(RpcConfig {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(500),
        ..RpcConfig::default()
    })
}

/// The one ready line: what the supervisor shows in its table.
fn print_ready(node: &Node, extra: &str) {
    let admin = node
        .admin_addr()
        .map(|a| format!(" admin={a}"))
        .unwrap_or_default();
    println!(
        "ready pid={} quic={}{admin}{extra}",
        std::process::id(),
        node.local_addr()
    );
}

/// A config store voter.
async fn store_role(common: &Common, data_dir: PathBuf) -> anyhow::Result<()> {
    let store = if common.seeds.is_empty() {
        StoreConfig::bootstrap(data_dir)
    } else {
        StoreConfig::join(data_dir, common.seeds.clone())
    };
    let node = builder(common).store(store).start().await?;
    print_ready(&node, "");
    wait_for_stop().await;
    node.shutdown().await;
    Ok(())
}

/// An instance of the `hello` service, registered in the store as a client.
async fn service_role(common: &Common) -> anyhow::Result<()> {
    let node = builder(common)
        .store(StoreConfig::client(common.seeds.clone()))
        .service(hello)
        .start()
        .await?;
    print_ready(&node, "");
    wait_for_stop().await;
    node.shutdown().await;
    Ok(())
}

/// A router: hosts `skynet.router` and runs the routes it follows through the store.
async fn router_role(common: &Common) -> anyhow::Result<()> {
    let router = Router::new();
    let node = builder(common)
        .store(StoreConfig::client(common.seeds.clone()))
        .service(router.service())
        .start()
        .await?;
    router.attach(&node)?;
    let table = router.table().context("an attached router has a table")?;
    if !table.loaded(READY_WAIT).await {
        bail!("the routes could not be read from the store");
    }
    print_ready(&node, "");
    // What this router can call: the supervisor shows it, tests wait for it.
    tokio::select! {
        () = report_instances(&node, "hello") => {}
        () = wait_for_stop() => {}
    }
    node.shutdown().await;
    Ok(())
}

/// An HTTP initiator: the form at `/`, running the `hello` route through any live router.
async fn http_role(common: &Common, http_port: u16) -> anyhow::Result<()> {
    let node = builder(common)
        .store(StoreConfig::client(common.seeds.clone()))
        .start()
        .await?;
    let caller = RouteCaller::new(&node, ROUTE_DEADLINE);
    let http = HttpInitiator::start(caller, loopback(http_port), HttpConfig::default())
        .await
        .with_context(|| format!("listening for HTTP on port {http_port}"))?;
    print_ready(&node, &format!(" http={}", http.addr()));
    tokio::select! {
        () = report_instances(&node, ROUTER_SERVICE) => {}
        () = wait_for_stop() => {}
    }
    http.shutdown().await;
    node.shutdown().await;
    Ok(())
}

/// A watcher: follows the registry and prints every join and leave.
async fn watcher_role(common: &Common) -> anyhow::Result<()> {
    let node = builder(common)
        .store(StoreConfig::client(common.seeds.clone()))
        .start()
        .await?;
    let registry = node
        .registry()
        .context("a node with a store has a registry")?;
    let mut changes = registry.changes();
    print_ready(&node, "");
    let follow = async {
        loop {
            match changes.recv().await {
                Ok(Change::Joined(i)) => {
                    println!(
                        "joined service={} addr={} node={}",
                        i.service, i.addr, i.node
                    );
                }
                Ok(Change::Left(i)) => {
                    println!("left service={} addr={} node={}", i.service, i.addr, i.node);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("missed {n} registry changes");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    tokio::select! {
        () = follow => {}
        () = wait_for_stop() => {}
    }
    node.shutdown().await;
    Ok(())
}

/// Prints `sees service=<service> instances=<n>` whenever the number of registered instances
/// of `service` in this node's view changes.
async fn report_instances(node: &Node, service: &str) {
    let Some(registry) = node.registry() else {
        return;
    };
    let mut view = registry.subscribe();
    let mut last = None;
    loop {
        let n = view
            .borrow_and_update()
            .instances(service)
            .iter()
            .filter(|i| i.registered)
            .count();
        if last != Some(n) {
            println!("sees service={service} instances={n}");
            last = Some(n);
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// Waits for SIGTERM, Ctrl-C, or the end of stdin (the supervisor is gone).
async fn wait_for_stop() {
    let (closed_tx, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    // A plain thread, not `spawn_blocking`: the runtime waits for its blocking tasks when it
    // is dropped, and this read only ends when the supervisor closes the pipe.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = stdin_closed.await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
}

// ---------------------------------------------------------------------------------------
// The supervisor: starts the children, shows them, stops them.
// ---------------------------------------------------------------------------------------

/// The route the HTTP form runs: one sync hop to `hello.hello`, retried on another instance
/// if one dies mid-call (the method is idempotent).
fn hello_route() -> Route {
    Route::new("hello", vec![Hop::new("hello", "hello").retry(true)])
}

/// Ports the example tries first; a port that is taken (or every port in test mode) becomes
/// a free one.
struct Ports {
    fixed: bool,
}

impl Ports {
    fn udp(&self, preferred: u16) -> u16 {
        if self.fixed && UdpSocket::bind(loopback(preferred)).is_ok() {
            preferred
        } else {
            0
        }
    }

    fn tcp(&self, preferred: u16) -> u16 {
        if self.fixed && TcpListener::bind(loopback(preferred)).is_ok() {
            preferred
        } else {
            0
        }
    }
}

/// A running child.
struct Proc {
    role: String,
    pid: u32,
    fields: BTreeMap<String, String>,
    /// Held open: closing it asks the child to stop.
    _stdin: ChildStdin,
    /// Set once the child has exited.
    exited: watch::Receiver<bool>,
}

impl Proc {
    fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        self.field(key)
            .with_context(|| format!("{} printed no {key}=", self.role))?
            .parse()
            .with_context(|| format!("{}'s {key}= is not an address", self.role))
    }
}

/// What children do after their ready line.
enum Event {
    /// A line on its stdout.
    Line { role: String, line: String },
    /// It exited.
    Exited {
        role: String,
        pid: u32,
        status: String,
        log: PathBuf,
    },
}

struct Supervisor {
    exe: PathBuf,
    dir: PathBuf,
    certs: PathBuf,
    test_mode: bool,
    ports: Ports,
    procs: Vec<Proc>,
    events: mpsc::UnboundedSender<Event>,
}

impl Supervisor {
    /// Starts `role` as a child with `args` and waits for its ready line.
    async fn spawn(&mut self, role: &str, kind: &str, mut args: Vec<String>) -> anyhow::Result<()> {
        args.extend([
            "--name".into(),
            role.into(),
            "--certs".into(),
            self.certs.display().to_string(),
        ]);
        let log = self.dir.join("logs").join(format!("{role}.log"));
        let mut child = Command::new(&self.exe)
            .arg("role")
            .arg(kind)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            // Its own process group: a Ctrl-C in the terminal reaches only the supervisor,
            // which then stops the children in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {role}"))?;
        let pid = child.id().context("the child has a pid")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("ready ") {
                    return Ok(Some(rest.to_owned()));
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let ready = match ready {
            Ok(Ok(Some(ready))) => ready,
            Ok(Ok(None) | Err(_)) | Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!(
                    "{role} did not start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let fields = ready
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (events, name) = (self.events.clone(), role.to_owned());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let role = name.clone();
                let _ = events.send(Event::Line { role, line });
            }
        });
        let (exited_tx, exited) = watch::channel(false);
        let (events, role_name) = (self.events.clone(), role.to_owned());
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            exited_tx.send_replace(true);
            let role = role_name;
            let _ = events.send(Event::Exited {
                role,
                pid,
                status,
                log,
            });
        });
        let proc = Proc {
            role: role.to_owned(),
            pid,
            fields,
            _stdin: stdin,
            exited,
        };
        if self.test_mode {
            println!("process role={role} {ready}");
        }
        self.procs.push(proc);
        Ok(())
    }

    fn common(&self, port: u16, admin: u16, seeds: &[SocketAddr]) -> Vec<String> {
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--admin".to_owned(),
            admin.to_string(),
        ];
        for seed in seeds {
            args.extend(["--seed".to_owned(), seed.to_string()]);
        }
        args
    }

    fn find(&self, role: &str) -> anyhow::Result<&Proc> {
        self.procs
            .iter()
            .find(|p| p.role == role)
            .with_context(|| format!("no process {role}"))
    }

    /// Starts the whole cluster, in dependency order.
    async fn start_all(&mut self) -> anyhow::Result<()> {
        // The store first: one voter bootstraps it (and creates the CA), two join.
        let port = self.ports.udp(7001);
        let admin = self.ports.tcp(9101);
        let mut args = self.common(port, admin, &[]);
        args.extend([
            "--data-dir".into(),
            self.dir.join("store-1").display().to_string(),
        ]);
        self.spawn("store-1", "store", args).await?;
        let first = self.find("store-1")?.addr("quic")?;
        for i in 2..=3u16 {
            let role = format!("store-{i}");
            let (port, admin) = (self.ports.udp(7000 + i), self.ports.tcp(9100 + i));
            let mut args = self.common(port, admin, &[first]);
            args.extend([
                "--data-dir".into(),
                self.dir.join(&role).display().to_string(),
            ]);
            self.spawn(&role, "store", args).await?;
        }
        let seeds: Vec<SocketAddr> = self
            .procs
            .iter()
            .map(|p| p.addr("quic"))
            .collect::<Result<_, _>>()?;

        // The route, written once through a short-lived client node.
        self.store_route(&seeds).await?;

        // The watcher next, so that it reports everything that joins after it.
        let (port, admin) = (self.ports.udp(7010), self.ports.tcp(9110));
        let args = self.common(port, admin, &seeds);
        self.spawn("watcher", "watcher", args).await?;
        let roles = [
            ("hello-1", "service", 7021, 9121),
            ("hello-2", "service", 7022, 9122),
            ("router-1", "router", 7031, 9131),
            ("router-2", "router", 7032, 9132),
        ];
        for (role, kind, port, admin) in roles {
            let args = self.common(self.ports.udp(port), self.ports.tcp(admin), &seeds);
            self.spawn(role, kind, args).await?;
        }
        for (i, http) in [(1u16, 8080u16), (2, 8081)] {
            let (port, admin) = (self.ports.udp(7040 + i), self.ports.tcp(9140 + i));
            let mut args = self.common(port, admin, &seeds);
            args.extend(["--http".into(), self.ports.tcp(http).to_string()]);
            self.spawn(&format!("http-{i}"), "http", args).await?;
        }
        Ok(())
    }

    async fn store_route(&self, seeds: &[SocketAddr]) -> anyhow::Result<()> {
        let node = Node::builder()
            .name("cluster-setup")
            .development_credentials_existing(&self.certs)
            .store(StoreConfig::client(seeds.to_vec()))
            .start()
            .await?;
        let stored = match node.store() {
            Some(store) => route::put(&store, &hello_route()).await.map_err(Into::into),
            None => Err(anyhow::anyhow!("the setup node has no store")),
        };
        node.shutdown().await;
        stored?;
        Ok(())
    }

    /// Stops the children in the reverse order of their start (initiators first, the store
    /// last): SIGTERM, a bounded wait, then SIGKILL.
    async fn stop_all(&mut self) {
        while let Some(mut proc) = self.procs.pop() {
            if *proc.exited.borrow() {
                continue;
            }
            signal(proc.pid, "-TERM");
            let exited = tokio::time::timeout(STOP_WAIT, proc.exited.wait_for(|e| *e))
                .await
                .is_ok();
            if !exited {
                eprintln!("{} did not stop in time; killing it", proc.role);
                signal(proc.pid, "-KILL");
                let _ = tokio::time::timeout(STOP_WAIT, proc.exited.wait_for(|e| *e)).await;
            }
        }
    }

    fn print_table(&self) {
        println!();
        println!(
            "skynet example cluster: {} processes on loopback",
            self.procs.len()
        );
        println!();
        println!(
            "{:<9} {:>7}  {:<16} {:<44} HTTP",
            "ROLE", "PID", "QUIC", "ADMIN"
        );
        for p in &self.procs {
            let admin = p
                .field("admin")
                .map(|a| format!("http://{a}/debug/vars"))
                .unwrap_or_default();
            let http = p
                .field("http")
                .map(|a| format!("http://{a}/"))
                .unwrap_or_default();
            let row = format!(
                "{:<9} {:>7}  {:<16} {:<44} {http}",
                p.role,
                p.pid,
                p.field("quic").unwrap_or("-"),
                admin
            );
            println!("{}", row.trim_end());
        }
        let url = |role: &str, key: &str| {
            self.find(role)
                .ok()
                .and_then(|p| p.field(key).map(str::to_owned))
                .unwrap_or_else(|| "?".into())
        };
        let pid = |role: &str| {
            self.find(role)
                .map(|p| p.pid.to_string())
                .unwrap_or_default()
        };
        println!();
        println!("What to try (in another terminal):");
        println!(
            "  1. Open http://{}/ and submit the form: \"Hello World\".",
            url("http-1", "http")
        );
        println!(
            "     Or: curl 'http://{}/new?name=World'   (http-2: http://{}/)",
            url("http-1", "http"),
            url("http-2", "http")
        );
        println!(
            "  2. kill {}        # router-1; the next request is answered by router-2",
            pid("router-1")
        );
        println!(
            "  3. kill {} {}   # both hello instances; the page names the missing service (HTTP 503)",
            pid("hello-1"),
            pid("hello-2")
        );
        println!(
            "  4. curl http://{}/debug/vars   # router-2's live counters, e.g. skynet.router.run-processed",
            url("router-2", "admin")
        );
        println!(
            "     (a service's counters are at http://{}/debug/vars: hello.hello-processed)",
            url("hello-1", "admin")
        );
        println!();
        println!(
            "Registry changes (from the watcher) and deaths are reported below. Ctrl-C stops everything."
        );
        println!("Logs: {}", self.dir.join("logs").display());
    }
}

/// Prints what a child did.
fn report(test_mode: bool, event: Event) {
    match (test_mode, event) {
        (true, Event::Line { role, line }) => println!("event role={role} {line}"),
        (false, Event::Line { role, line }) => println!("[{role}] {line}"),
        (
            true,
            Event::Exited {
                role, pid, status, ..
            },
        ) => {
            println!("exited role={role} pid={pid} status={status}");
        }
        (
            false,
            Event::Exited {
                role,
                pid,
                status,
                log,
            },
        ) => println!(
            "!! {role} (pid {pid}) exited: {status}; its log: {}",
            log.display()
        ),
    }
}

/// Sends a signal with kill(1): the example forbids unsafe code, so no libc call.
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Creates the cluster's directory in `parent`: a new directory with a random name, mode 0700,
/// holding `certs` (the cluster CA and every node key) and `logs`, both 0700 too.
///
/// A fresh directory only: an existing one, whoever made it, is never adopted. A predictable
/// name in a shared temporary directory would let another local user create it first with a
/// CA of their own, then call and change everything in the cluster.
fn private_dir(parent: &Path) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let private = || std::fs::Permissions::from_mode(0o700);
    let dir = tempfile::Builder::new()
        .prefix("skynet-cluster-")
        .permissions(private())
        .tempdir_in(parent)
        .with_context(|| format!("creating a private directory in {}", parent.display()))?;
    // Exactly 0700 whatever the umask (which can only have narrowed it).
    std::fs::set_permissions(dir.path(), private())
        .with_context(|| format!("restricting {}", dir.path().display()))?;
    for sub in ["certs", "logs"] {
        let path = dir.path().join(sub);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(dir)
}

/// The supervisor: starts the cluster, reports on it, stops it on Ctrl-C or SIGTERM.
async fn supervise() -> anyhow::Result<()> {
    let test_mode = std::env::var_os(TEST_MODE_ENV).is_some_and(|v| v == "1");
    // Removed when dropped, should the supervisor panic; otherwise closed below.
    let temp = private_dir(&std::env::temp_dir())?;
    let dir = temp.path().to_owned();
    let certs = dir.join("certs");
    let (events, mut rx) = mpsc::unbounded_channel();
    let mut supervisor = Supervisor {
        exe: std::env::current_exe().context("finding this program")?,
        certs: certs.clone(),
        dir: dir.clone(),
        test_mode,
        ports: Ports { fixed: !test_mode },
        procs: Vec::new(),
        events,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    if test_mode {
        println!("keys dir={} mode=0700", certs.display());
    } else {
        println!("starting the cluster under {} ...", dir.display());
        println!("keys: {} (private, mode 0700)", certs.display());
    }
    let started = tokio::select! {
        started = supervisor.start_all() => started,
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let result = match started {
        Err(e) => Err(e),
        Ok(()) if supervisor.procs.len() < 10 => Ok(()),
        Ok(()) => {
            if test_mode {
                println!("cluster ready dir={}", dir.display());
            } else {
                supervisor.print_table();
            }
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    Some(event) = rx.recv() => report(test_mode, event),
                }
            }
            Ok(())
        }
    };
    if !test_mode {
        println!("stopping ...");
    }
    supervisor.stop_all().await;
    if let Err(e) = temp.close() {
        eprintln!("could not remove {}: {e}", dir.display());
    }
    println!("stopped");
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn private_dir_is_new_and_0700_and_never_an_existing_one() {
        let parent = tempfile::tempdir().expect("tempdir");
        // The name the cluster used to take, made first by someone else.
        let old = parent
            .path()
            .join(format!("skynet-cluster-{}", std::process::id()));
        std::fs::create_dir_all(old.join("certs")).expect("old");
        std::fs::write(old.join("certs").join("ca.pem"), "theirs").expect("their CA");

        let a = private_dir(parent.path()).expect("a");
        let b = private_dir(parent.path()).expect("b");
        for dir in [a.path(), b.path()] {
            assert_ne!(dir, old);
            assert_eq!(dir.parent(), Some(parent.path()));
            assert_eq!(mode(dir), 0o700, "{dir:?}");
            assert_eq!(mode(&dir.join("certs")), 0o700, "{dir:?}");
            assert_eq!(mode(&dir.join("logs")), 0o700, "{dir:?}");
            assert_eq!(
                std::fs::read_dir(dir.join("certs")).expect("certs").count(),
                0
            );
        }
        assert_ne!(a.path(), b.path());
        assert_eq!(
            std::fs::read_to_string(old.join("certs").join("ca.pem")).expect("theirs"),
            "theirs"
        );
        let (a_path, b_path) = (a.path().to_owned(), b.path().to_owned());
        a.close().expect("remove a");
        b.close().expect("remove b");
        assert!(!a_path.exists() && !b_path.exists());
    }
}
