//! Routes and routers on real nodes over QUIC on loopback: a route through several services
//! (sync, async and skipped hops), edits while traffic flows, refused routes, unknown routes,
//! hops without instances, the `skynet routes` subcommands, and `skynet router` processes, one
//! of them killed with SIGKILL, one stopped with SIGTERM under load.
//!
//! Every wait is on an event (a registry or route table change, a reply, a ready line) with a
//! timeout; child processes are killed when their guard drops.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skynet::route::{self, FailureKind, Hop, HopMode, Route, RouteError, RouteFailure, Router};
use skynet::{CallError, Node, RpcConfig, ServiceDef, ServiceError, Store, StoreConfig};
use tokio::sync::mpsc;

type TestResult = anyhow::Result<()>;

const BIN: &str = env!("CARGO_BIN_EXE_skynet");
/// Upper bound of every wait: generous, since the machine may be busy; never a measurement.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct HelloRequest {
    name: String,
}

struct Cluster {
    credentials: tempfile::TempDir,
    _data: tempfile::TempDir,
    seed: Node,
}

impl Cluster {
    /// One store member; every other node is a store client of it.
    async fn new() -> anyhow::Result<Self> {
        let credentials = tempfile::tempdir()?;
        let data = tempfile::tempdir()?;
        let seed = Node::builder()
            .name("seed")
            .development_credentials(credentials.path())
            .store(StoreConfig::bootstrap(data.path().join("seed")))
            .start()
            .await?;
        Ok(Self {
            credentials,
            _data: data,
            seed,
        })
    }

    fn store(&self) -> Store {
        self.seed.store().expect("the seed is a member")
    }

    fn builder(&self, name: &str) -> skynet::NodeBuilder {
        Node::builder()
            .name(name)
            .development_credentials(self.credentials.path())
            .config(RpcConfig {
                connect_timeout: Duration::from_millis(500),
                ..Default::default()
            })
            .store(StoreConfig::client(vec![self.seed.local_addr()]))
    }

    /// A node hosting `greet.hello` ({"name"} -> "Hello <name>"), `upper.shout` (a string in
    /// upper case), `flaky.fail` (always a service error) and `audit.record` (sends what it
    /// gets to the returned channel).
    async fn services(&self) -> anyhow::Result<(Node, mpsc::UnboundedReceiver<Value>)> {
        let (audit_tx, audit_rx) = mpsc::unbounded_channel();
        let greet = ServiceDef::builder("greet", "1.0.0")
            .idempotent_method("hello", |_, req: HelloRequest| async move {
                Ok::<_, ServiceError>(format!("Hello {}", req.name))
            });
        let upper = ServiceDef::builder("upper", "1.0.0")
            .idempotent_method("shout", |_, text: String| async move {
                Ok::<_, ServiceError>(text.to_uppercase())
            });
        let flaky = ServiceDef::builder("flaky", "1.0.0").method("fail", |_, _: Value| async {
            Err::<Value, _>(ServiceError::new("flaky is having a bad day"))
        });
        let audit = ServiceDef::builder("audit", "1.0.0").method("record", move |_, v: Value| {
            let tx = audit_tx.clone();
            async move {
                let _ = tx.send(v);
                Ok::<_, ServiceError>(())
            }
        });
        let node = self
            .builder("services")
            .service(greet)
            .service(upper)
            .service(flaky)
            .service(audit)
            .start()
            .await?;
        Ok((node, audit_rx))
    }

    /// A node hosting a router.
    async fn router(&self, name: &str) -> anyhow::Result<(Node, Router)> {
        let router = Router::new();
        let node = self.builder(name).service(router.service()).start().await?;
        router.attach(&node)?;
        Ok((node, router))
    }

    async fn caller(&self) -> anyhow::Result<Node> {
        Ok(self.builder("caller").start().await?)
    }
}

/// Waits until `node` sees exactly `n` registered instances of `service`.
async fn wait_instances(node: &Node, service: &str, n: usize) -> anyhow::Result<()> {
    node.registry()
        .context("a node with a store has a registry")?
        .wait_for(WAIT, |s| {
            s.instances(service).iter().filter(|i| i.registered).count() == n
        })
        .await
        .with_context(|| format!("never saw {n} instances of {service}"))?;
    Ok(())
}

/// Writes `route` and waits until `router` runs it.
async fn put_and_wait(store: &Store, router: &Router, route: &Route) -> anyhow::Result<u64> {
    let revision = route::put(store, route).await?;
    let table = router.table().context("attached")?;
    anyhow::ensure!(
        table.caught_up(revision, WAIT).await,
        "the router never saw revision {revision}"
    );
    Ok(revision)
}

fn failure(result: Result<Value, CallError<RouteFailure>>) -> RouteFailure {
    match result {
        Err(CallError::Service(failure)) => failure,
        other => panic!("expected a route failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_runs_sync_async_and_skipped_hops_in_order() -> TestResult {
    let cluster = Cluster::new().await?;
    let (services, mut audit) = cluster.services().await?;
    let (router_node, router) = cluster.router("router").await?;
    let caller = cluster.caller().await?;
    wait_instances(&router_node, "greet", 1).await?;
    wait_instances(&router_node, "audit", 1).await?;
    wait_instances(&caller, route::ROUTER_SERVICE, 1).await?;

    let greeting = Route::new(
        "greeting",
        vec![
            Hop::new("greet", "hello").retry(true),
            Hop::new("audit", "record").fire_and_forget(),
            Hop::new("flaky", "fail").skip_on_failure(),
            Hop::new("upper", "shout"),
        ],
    );
    put_and_wait(&cluster.store(), &router, &greeting).await?;

    let reply = route::call(&caller, "greeting", json!({ "name": "World" })).await?;
    // greet's output went to upper; flaky failed and passed its input on unchanged.
    assert_eq!(reply, json!("HELLO WORLD"));
    // The async hop got a copy of the value as it was when the route reached it.
    let recorded = tokio::time::timeout(WAIT, audit.recv())
        .await
        .context("the async hop never ran")?;
    assert_eq!(recorded, Some(json!("Hello World")));

    let stats = router.stats();
    assert_eq!(
        (stats.processed, stats.errors, stats.skipped),
        (1, 0, 1),
        "{stats:?}"
    );
    assert_eq!(stats.async_started, 1);

    // The route as stored is what was written, with the store's revision.
    let stored = route::get(&cluster.store(), "greeting")
        .await?
        .context("stored")?;
    assert_eq!(stored.hops, greeting.hops);
    assert!(stored.revision.is_some());

    for node in [caller, router_node, services, cluster.seed.clone()] {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_route_while_traffic_flows_fails_no_request() -> TestResult {
    let cluster = Cluster::new().await?;
    let (services, _audit) = cluster.services().await?;
    let (router_node, router) = cluster.router("router").await?;
    let caller = cluster.caller().await?;
    wait_instances(&router_node, "greet", 1).await?;
    wait_instances(&router_node, "upper", 1).await?;
    wait_instances(&caller, route::ROUTER_SERVICE, 1).await?;
    let store = cluster.store();

    let v1 = Route::new("edit", vec![Hop::new("greet", "hello")]);
    put_and_wait(&store, &router, &v1).await?;

    // Callers that keep calling until told to stop, reporting every outcome.
    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let stop = StopFlag::default();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (caller, tx, stop) = (caller.clone(), tx.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let outcome = route::call(&caller, "edit", json!({ "name": "World" })).await;
                    if tx.send(outcome.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut errors = Vec::new();
    tokio::time::timeout(
        WAIT,
        until(&mut outcomes, &json!("Hello World"), &mut errors),
    )
    .await??;

    // A second hop, written while the calls flow: the router picks it up from its watch.
    let current = route::get(&store, "edit").await?.context("stored")?;
    let mut v2 = current.clone();
    v2.hops.push(Hop::new("upper", "shout"));
    let revision = put_and_wait(&store, &router, &v2).await?;
    tokio::time::timeout(
        WAIT,
        until(&mut outcomes, &json!("HELLO WORLD"), &mut errors),
    )
    .await??;
    // Once the router's table holds the new revision, the very next request uses it.
    assert_eq!(
        route::call(&caller, "edit", json!({ "name": "you" })).await?,
        json!("HELLO YOU")
    );

    // An edit based on a stale read is refused, not silently merged.
    let stale = route::put(&store, &current).await;
    assert!(
        matches!(stale, Err(RouteError::Conflict { expected, current: Some(now), .. })
            if expected == current.revision.unwrap_or_default() && now == revision),
        "{stale:?}"
    );

    stop.cancel();
    for task in tasks {
        task.await?;
    }
    while let Some(outcome) = outcomes.recv().await {
        if let Err(e) = outcome {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    assert_eq!(router.stats().errors, 0);

    for node in [caller, router_node, services, cluster.seed.clone()] {
        node.shutdown().await;
    }
    Ok(())
}

/// Reads outcomes until a reply equal to `want`, collecting the failures on the way.
async fn until(
    outcomes: &mut mpsc::UnboundedReceiver<Result<Value, String>>,
    want: &Value,
    errors: &mut Vec<String>,
) -> anyhow::Result<()> {
    loop {
        match outcomes.recv().await {
            Some(Ok(v)) if v == *want => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(e)) => errors.push(e),
            None => bail!("the callers stopped"),
        }
    }
}

/// A stop flag the callers check between calls.
#[derive(Clone, Default)]
struct StopFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether an error is the one a case expects.
type IsExpected = fn(&RouteError) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_are_refused_with_their_reason_and_nothing_is_written() -> TestResult {
    let cluster = Cluster::new().await?;
    let store = cluster.store();
    let mut async_stop = Hop::new("audit", "record");
    async_stop.mode = HopMode::Async;
    let cases: Vec<(Route, IsExpected)> = vec![
        (Route::new("", vec![Hop::new("s", "m")]), |e| {
            matches!(e, RouteError::BadName { .. })
        }),
        (Route::new("a b", vec![Hop::new("s", "m")]), |e| {
            matches!(e, RouteError::BadName { .. })
        }),
        (Route::new("empty", vec![]), |e| {
            matches!(e, RouteError::Empty { .. })
        }),
        (
            Route::new("many", vec![Hop::new("s", "m"); route::MAX_HOPS + 1]),
            |e| matches!(e, RouteError::TooManyHops { .. }),
        ),
        (Route::new("svc", vec![Hop::new("has space", "m")]), |e| {
            matches!(e, RouteError::BadService { hop: 1, .. })
        }),
        (
            Route::new("loop", vec![Hop::new(route::ROUTER_SERVICE, "run")]),
            |e| matches!(e, RouteError::BadService { hop: 1, .. }),
        ),
        (
            Route::new("method", vec![Hop::new("s", "m"), Hop::new("s", "")]),
            |e| matches!(e, RouteError::BadMethod { hop: 2, .. }),
        ),
        (
            Route::new("async", vec![Hop::new("s", "m"), async_stop]),
            |e| matches!(e, RouteError::AsyncCannotStop { hop: 2, .. }),
        ),
        (
            Route::new(
                "nosync",
                vec![Hop::new("audit", "record").fire_and_forget()],
            ),
            |e| matches!(e, RouteError::NoSyncHop { .. }),
        ),
    ];
    for (route, expected) in &cases {
        let err = route::put(&store, route)
            .await
            .expect_err("a bad route is refused");
        assert!(expected(&err), "{}: unexpected {err:?}", route.name);
        assert!(!err.to_string().is_empty());
    }
    assert!(route::list(&store).await?.is_empty(), "nothing was written");
    // JSON that is not a route at all.
    assert!(matches!(
        Route::from_json(r#"{"name":"x","hops":[{"service":"s"}]}"#),
        Err(RouteError::Json(m)) if m.contains("method")
    ));
    cluster.seed.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_services_without_instances_fail_readably() -> TestResult {
    let cluster = Cluster::new().await?;
    let (services, _audit) = cluster.services().await?;
    let (router_node, router) = cluster.router("router").await?;
    let caller = cluster.caller().await?;
    wait_instances(&router_node, "greet", 1).await?;
    wait_instances(&caller, route::ROUTER_SERVICE, 1).await?;
    let table = router.table().context("attached")?;
    anyhow::ensure!(table.loaded(WAIT).await, "the table never loaded");

    let nope = failure(route::call(&caller, "nope", json!(null)).await);
    assert_eq!(nope.kind, FailureKind::NoSuchRoute);
    assert_eq!(nope.to_string(), "There is no route named nope");

    let ghost = Route::new(
        "ghost",
        vec![Hop::new("greet", "hello"), Hop::new("ghost", "haunt")],
    );
    put_and_wait(&cluster.store(), &router, &ghost).await?;
    let f = failure(route::call(&caller, "ghost", json!({ "name": "x" })).await);
    assert_eq!(f.kind, FailureKind::NoInstance);
    assert_eq!(
        (f.service.as_deref(), f.hop),
        (Some("ghost"), Some(2)),
        "{f:?}"
    );
    assert_eq!(
        f.to_string(),
        "Service ghost is not available: no running instance (route ghost, hop 2)"
    );

    // A service error keeps the service's message.
    let flaky = Route::new("flaky", vec![Hop::new("flaky", "fail")]);
    put_and_wait(&cluster.store(), &router, &flaky).await?;
    let f = failure(route::call(&caller, "flaky", json!(1)).await);
    assert_eq!(f.kind, FailureKind::HopFailed);
    assert_eq!(
        f.to_string(),
        "Service flaky failed: flaky is having a bad day (route flaky, hop 1)"
    );

    // A deleted route is gone from the router too.
    route::delete(&cluster.store(), "flaky").await?;
    table
        .wait_for(WAIT, |s| s.get("flaky").is_none())
        .await
        .context("the delete never reached the router")?;
    let f = failure(route::call(&caller, "flaky", json!(1)).await);
    assert_eq!(f.kind, FailureKind::NoSuchRoute);
    assert!(matches!(
        route::delete(&cluster.store(), "flaky").await,
        Err(RouteError::NotFound(_))
    ));

    for node in [caller, router_node, services, cluster.seed.clone()] {
        node.shutdown().await;
    }
    Ok(())
}

// ===== The binary =====

/// Runs `skynet` with `args` and `stdin`, to completion.
fn skynet(args: &[String], stdin: &str) -> anyhow::Result<std::process::Output> {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn store_flags(cluster: &Cluster) -> Vec<String> {
    vec![
        "--join".into(),
        cluster.seed.local_addr().to_string(),
        "--certs".into(),
        cluster.credentials.path().to_string_lossy().into_owned(),
    ]
}

fn routes_args(cluster: &Cluster, sub: &[&str]) -> Vec<String> {
    let mut args = vec!["routes".to_owned()];
    args.extend(sub.iter().map(|s| s.to_string()));
    args.extend(store_flags(cluster));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_subcommands_set_get_list_and_delete_and_refuse_bad_routes() -> TestResult {
    let cluster = Cluster::new().await?;
    let hello = r#"{"name":"hello","hops":[{"service":"greet","method":"hello","retry":true}]}"#;
    let out = skynet(&routes_args(&cluster, &["set"]), hello)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(written["name"], "hello");
    let revision = written["revision"].as_u64().context("a revision")?;

    let out = skynet(&routes_args(&cluster, &["get", "hello"]), "")?;
    assert!(out.status.success());
    let got = Route::from_slice(&out.stdout)?;
    assert_eq!(got.revision, Some(revision));
    assert_eq!(got.hops, [Hop::new("greet", "hello").retry(true)]);

    // The output of `get` is valid input of `set`, which then checks the revision: the edit
    // after a stale read is refused, with the reason.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("hello.json");
    std::fs::write(&file, &out.stdout)?;
    let file_arg = file.to_string_lossy().into_owned();
    let out = skynet(&routes_args(&cluster, &["set", &file_arg]), "")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skynet(&routes_args(&cluster, &["set", &file_arg]), "")?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("changed since revision"), "{stderr}");

    // Bad routes: a readable reason, exit status 1, nothing written.
    for (bad, reason) in [
        ("{not json", "route JSON is invalid"),
        (r#"{"name":"x","hops":[]}"#, "has no hops"),
        (
            r#"{"name":"x","hops":[{"service":"a","method":"b","mode":"async"}]}"#,
            "on_failure",
        ),
    ] {
        let out = skynet(&routes_args(&cluster, &["set", "-"]), bad)?;
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{bad}: {stderr}");
    }
    let out = skynet(&routes_args(&cluster, &["set", "/no/such/file.json"]), "")?;
    assert_eq!(out.status.code(), Some(1));

    let out = skynet(&routes_args(&cluster, &["list"]), "")?;
    assert!(out.status.success());
    let list: Vec<Route> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        list.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["hello"]
    );

    let out = skynet(&routes_args(&cluster, &["delete", "hello"]), "")?;
    assert!(out.status.success());
    let out = skynet(&routes_args(&cluster, &["get", "hello"]), "")?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no route named \"hello\""));
    cluster.seed.shutdown().await;
    Ok(())
}

/// A `skynet router` process, killed (SIGKILL) when dropped.
struct RouterProc {
    child: Child,
    addr: SocketAddr,
    /// The admin port, if started with `--admin`.
    admin: Option<SocketAddr>,
    log: PathBuf,
}

impl RouterProc {
    async fn start(cluster: &Cluster, name: &str, dir: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_with(cluster, name, dir, &[]).await
    }

    async fn start_with(
        cluster: &Cluster,
        name: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let mut args = vec!["router".to_owned(), "--name".into(), name.into()];
        args.extend(store_flags(cluster));
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut guard = Self {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            log,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.find_map(|l| l.ok().filter(|l| l.starts_with("ready ")));
            let _ = tx.send(ready);
            // Keep reading so that the child never blocks on a full pipe.
            for _ in lines {}
        });
        let ready = tokio::time::timeout(WAIT, rx)
            .await
            .context("no ready line")??
            .context("the router exited before it was ready")?;
        let addr = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("addr="))
            .context("addr in the ready line")?;
        guard.addr = addr.parse()?;
        guard.admin = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("admin="))
            .map(str::parse)
            .transpose()?;
        anyhow::ensure!(ready.contains("service=skynet.router"), "{ready}");
        Ok(guard)
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
                "the router did not exit"
            );
            // Polling the exit status: std has no async wait for a child.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {}:\n{log}", self.log.display());
        }
    }
}

/// `skynet.router.run-processed` from the `/debug/vars` of the admin port at `admin`.
fn processed_runs(admin: SocketAddr) -> anyhow::Result<u64> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(admin)?;
    stream.set_read_timeout(Some(WAIT))?;
    write!(
        stream,
        "GET /debug/vars HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("an HTTP response")?;
    let vars: Value = serde_json::from_str(body.trim())
        .with_context(|| format!("/debug/vars is JSON: {response}"))?;
    vars["skynet.router.run-processed"]
        .as_u64()
        .with_context(|| format!("no run counter in {vars}"))
}

/// Waits until `caller` sees exactly the routers at `addrs`.
async fn wait_routers(caller: &Node, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let mut want = addrs.to_vec();
    want.sort();
    caller
        .registry()
        .context("registry")?
        .wait_for(WAIT, |s| {
            let mut seen: Vec<SocketAddr> = s
                .instances(route::ROUTER_SERVICE)
                .iter()
                .filter(|i| i.registered)
                .map(|i| i.addr)
                .collect();
            seen.sort();
            seen == want
        })
        .await
        .with_context(|| format!("never saw exactly the routers {want:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_as_processes_survive_one_killed_with_sigkill() -> TestResult {
    let cluster = Cluster::new().await?;
    let (services, _audit) = cluster.services().await?;
    let caller = cluster.caller().await?;
    let logs = tempfile::tempdir()?;
    let hello = Route::new(
        "hello",
        vec![Hop::new("greet", "hello"), Hop::new("upper", "shout")],
    );
    route::put(&cluster.store(), &hello).await?;
    let mut first = RouterProc::start(&cluster, "router-1", logs.path()).await?;
    let second = RouterProc::start_with(
        &cluster,
        "router-2",
        logs.path(),
        &["--admin", "127.0.0.1:0"],
    )
    .await?;
    wait_routers(&caller, &[first.addr, second.addr]).await?;
    wait_instances(&caller, "greet", 1).await?;

    // Both routers answer (each printed its ready line after reading the routes).
    for _ in 0..10 {
        let reply = route::call(&caller, "hello", json!({ "name": "World" })).await?;
        assert_eq!(reply, json!("HELLO WORLD"));
    }

    // SIGKILL one: its lease runs out, the registry drops it, and every call by name goes to
    // the survivor. (A call in flight on the killed router would fail: a route may have
    // non-idempotent hops, so it is not retried behind the caller's back.)
    first.kill_9();
    wait_routers(&caller, &[second.addr]).await?;
    let before = processed_runs(second.admin.context("router-2 has an admin port")?)?;
    for i in 0..20 {
        let reply = route::call(&caller, "hello", json!({ "name": format!("n{i}") })).await?;
        assert_eq!(reply, json!(format!("HELLO N{i}")));
    }
    // The survivor ran them all, as its /debug/vars says.
    let after = processed_runs(second.admin.context("admin")?)?;
    assert_eq!(after - before, 20);

    // A route edited now reaches the surviving process through its watch.
    let shout_only = Route::new("hello", vec![Hop::new("upper", "shout")]);
    route::put(&cluster.store(), &shout_only).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = route::call(&caller, "hello", json!("quiet")).await;
        if reply.as_ref().ok() == Some(&json!("QUIET")) {
            break;
        }
        // Until the router's watch delivers the edit, the old route refuses a bare string.
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the edit never took effect: {reply:?}"
        );
        tokio::task::yield_now().await;
    }

    drop(second);
    for node in [caller, services, cluster.seed.clone()] {
        node.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_stopped_with_sigterm_under_load_fails_no_request() -> TestResult {
    let cluster = Cluster::new().await?;
    let (services, _audit) = cluster.services().await?;
    let caller = cluster.caller().await?;
    let logs = tempfile::tempdir()?;
    let hello = Route::new("hello", vec![Hop::new("greet", "hello")]);
    route::put(&cluster.store(), &hello).await?;
    let mut first = RouterProc::start(&cluster, "router-1", logs.path()).await?;
    let second = RouterProc::start(&cluster, "router-2", logs.path()).await?;
    wait_routers(&caller, &[first.addr, second.addr]).await?;
    wait_instances(&caller, "greet", 1).await?;

    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let stop = StopFlag::default();
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (caller, tx, stop) = (caller.clone(), tx.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let outcome = route::call(&caller, "hello", json!({ "name": "World" })).await;
                    if tx.send(outcome.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut errors = Vec::new();
    tokio::time::timeout(
        WAIT,
        until(&mut outcomes, &json!("Hello World"), &mut errors),
    )
    .await??;

    // A graceful stop: the router leaves the rotation, refuses new requests (which callers
    // retry on the other router, since they did not run) and finishes the ones it has.
    let status = first.terminate().await?;
    assert!(status.success(), "{status}");
    wait_routers(&caller, &[second.addr]).await?;
    tokio::time::timeout(
        WAIT,
        until(&mut outcomes, &json!("Hello World"), &mut errors),
    )
    .await??;

    stop.cancel();
    for task in tasks {
        task.await?;
    }
    while let Some(outcome) = outcomes.recv().await {
        if let Err(e) = outcome {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "failed requests: {errors:?}");
    drop(second);
    for node in [caller, services, cluster.seed.clone()] {
        node.shutdown().await;
    }
    Ok(())
}
