//! The router: the `skynet.router` service, which runs stored routes by making each hop's call
//! by name through the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::exec::{self, FailureKind, HopCaller, HopError, RouteFailure};
use super::{Hop, ROUTER_SERVICE, ROUTER_VERSION, RUN_METHOD, Route, RouteTable};
use crate::codec::Encoding;
use crate::error::CallError;
use crate::node::{Node, WeakNode};
use crate::service::{Context, ServiceDef};
use crate::trace::TraceId;

/// The router's request: run route `route` on `input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRoute {
    /// The route's name.
    pub route: String,
    /// The first hop's input.
    #[serde(default)]
    pub input: Value,
}

/// Counters of one router since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RouterStats {
    /// Routes run to the end.
    pub processed: u64,
    /// Routes that failed (including unknown routes).
    pub errors: u64,
    /// Sync hops that failed and were skipped.
    pub skipped: u64,
    /// Async hops started.
    pub async_started: u64,
    /// Async hops that failed (logged, otherwise ignored).
    pub async_errors: u64,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    async_started: AtomicU64,
    async_errors: AtomicU64,
}

/// How the router holds the node it calls through. The hosting node holds the router (in its
/// service table), so a router attached to its own host holds it weakly: no cycle.
#[derive(Clone)]
enum NodeRef {
    Strong(Node),
    Weak(WeakNode),
}

impl NodeRef {
    fn get(&self) -> Option<Node> {
        match self {
            NodeRef::Strong(node) => Some(node.clone()),
            NodeRef::Weak(weak) => weak.upgrade(),
        }
    }
}

#[derive(Clone)]
struct Attached {
    node: NodeRef,
    table: RouteTable,
}

struct Shared {
    attached: tokio::sync::watch::Sender<Option<Attached>>,
    counters: Counters,
}

/// Runs routes: hosts the `skynet.router` service (version [`ROUTER_VERSION`], method
/// [`RUN_METHOD`], not idempotent) and calls each hop by name through a node's registry,
/// following the routes in the store through a [`RouteTable`]. Cheap to clone.
///
/// A node's services are fixed when it starts, and the router calls through a started node,
/// so hosting one takes two steps:
///
/// ```no_run
/// # async fn run(seed: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
/// use skynet::route::Router;
/// use skynet::{Node, StoreConfig};
///
/// let router = Router::new();
/// let node = Node::builder()
///     .name("router")
///     .development_credentials("/tmp/skynet-dev")
///     .store(StoreConfig::client(vec![seed]))
///     .service(router.service())
///     .start()
///     .await?;
/// router.attach(&node)?;
/// # Ok(()) }
/// ```
///
/// Calls that arrive between the two wait for [`Router::attach`] (within their deadline).
/// [`router_service`] is the one-step form for a router that calls through another node.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("attached", &self.shared.attached.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a router could not be attached to a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The node has no config store, so there are no routes and no registry to call through.
    #[error("the router's node has no config store (start it with .store(..))")]
    NoStore,
    /// The router already calls through a node.
    #[error("the router is already attached to a node")]
    AlreadyAttached,
}

impl Router {
    /// A router that is not attached to a node yet.
    pub fn new() -> Self {
        let (attached, _) = tokio::sync::watch::channel(None);
        Self {
            shared: Arc::new(Shared {
                attached,
                counters: Counters::default(),
            }),
        }
    }

    /// The `skynet.router` service, to host on a node.
    pub fn service(&self) -> ServiceDef {
        let shared = self.shared.clone();
        ServiceDef::builder(ROUTER_SERVICE, ROUTER_VERSION)
            .method(RUN_METHOD, move |ctx: Context, req: RunRoute| {
                let shared = shared.clone();
                async move { run(&shared, &ctx, req).await }
            })
            .build()
            // A fixed name, version and method table: it is valid.
            .unwrap_or_else(|e| unreachable!("the router's service is valid: {e}"))
    }

    /// Makes the router call through `node` and follow the routes in its store. Attach it to
    /// the node that hosts it (held weakly, so that the two do not keep each other alive) or
    /// to any other node with a store.
    pub fn attach(&self, node: &Node) -> Result<(), RouterError> {
        let hosted = node.local_service(ROUTER_SERVICE).is_some();
        let node_ref = if hosted {
            NodeRef::Weak(node.downgrade())
        } else {
            NodeRef::Strong(node.clone())
        };
        self.attach_ref(node, node_ref)
    }

    fn attach_ref(&self, node: &Node, node_ref: NodeRef) -> Result<(), RouterError> {
        let store = node.store().ok_or(RouterError::NoStore)?;
        if self.shared.attached.borrow().is_some() {
            return Err(RouterError::AlreadyAttached);
        }
        let table = RouteTable::start(store);
        self.shared.attached.send_replace(Some(Attached {
            node: node_ref,
            table,
        }));
        Ok(())
    }

    /// The routes this router runs, once attached.
    pub fn table(&self) -> Option<RouteTable> {
        self.shared
            .attached
            .borrow()
            .as_ref()
            .map(|a| a.table.clone())
    }

    /// The router's counters.
    pub fn stats(&self) -> RouterStats {
        let c = &self.shared.counters;
        RouterStats {
            processed: c.processed.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            async_started: c.async_started.load(Ordering::Relaxed),
            async_errors: c.async_errors.load(Ordering::Relaxed),
        }
    }
}

/// The router service for a router that calls through `node`, which must have a store: host
/// it on another node. (To host the router on the node it calls through, use [`Router`].) A
/// node without a store gives a service whose every call fails with
/// [`FailureKind::RouterUnavailable`].
pub fn router_service(node: &Node) -> ServiceDef {
    let router = Router::new();
    if let Err(e) = router.attach_ref(node, NodeRef::Strong(node.clone())) {
        tracing::error!(error = %e, "the router cannot run routes");
    }
    router.service()
}

/// Runs route `route` on `input` through a router found by name (or hosted by `node`), with
/// the node's default deadline. See [`RouteClient`] for other deadlines.
pub async fn call(
    node: &Node,
    route: &str,
    input: Value,
) -> Result<Value, CallError<RouteFailure>> {
    RouteClient::new(node).run(route, input).await
}

/// A client of the routers: sends [`RunRoute`] to `skynet.router` by name (discovered,
/// balanced, failing over to another router when one dies), in JSON, which is what a route's
/// free-form values need.
#[derive(Clone, Debug)]
pub struct RouteClient {
    client: crate::ServiceClient,
}

impl RouteClient {
    /// Calls routers through `node`.
    pub fn new(node: &Node) -> Self {
        let requirement = semver::VersionReq::parse("^1").unwrap_or(semver::VersionReq::STAR);
        Self {
            client: node
                .client(ROUTER_SERVICE)
                .with_encoding(Encoding::Json)
                .with_version(requirement),
        }
    }

    /// Each call's deadline, which is the whole route's deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.client = self.client.with_deadline(deadline);
        self
    }

    /// Runs route `route` on `input`; the reply is the route's output. The router's failure
    /// comes back as [`CallError::Service`]; no router at all as [`CallError::NoInstance`].
    pub async fn run(&self, route: &str, input: Value) -> Result<Value, CallError<RouteFailure>> {
        let request = RunRoute {
            route: route.to_owned(),
            input,
        };
        self.client.call(RUN_METHOD, request).await
    }
}

/// The `run` method.
async fn run(shared: &Arc<Shared>, ctx: &Context, req: RunRoute) -> Result<Value, RouteFailure> {
    let result = run_inner(shared, ctx, req).await;
    let counter = match &result {
        Ok(_) => &shared.counters.processed,
        Err(_) => &shared.counters.errors,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    result
}

async fn run_inner(
    shared: &Arc<Shared>,
    ctx: &Context,
    req: RunRoute,
) -> Result<Value, RouteFailure> {
    // Calls through a client always carry a deadline; a raw request without one gets the
    // deadline clients use by default.
    let until = ctx
        .deadline()
        .unwrap_or_else(|| Instant::now() + crate::RpcConfig::default().default_deadline);
    let remaining = || until.saturating_duration_since(Instant::now());
    let name = req.route.as_str();
    let mut rx = shared.attached.subscribe();
    let attached = match tokio::time::timeout(remaining(), rx.wait_for(Option::is_some)).await {
        Ok(Ok(attached)) => attached.clone(),
        _ => None,
    };
    let Some(attached) = attached else {
        return Err(RouteFailure::route(
            name,
            FailureKind::RouterUnavailable,
            "the router is still starting",
        ));
    };
    let Some(node) = attached.node.get() else {
        return Err(RouteFailure::route(
            name,
            FailureKind::RouterUnavailable,
            "the router's node has stopped",
        ));
    };
    let caller = NodeCaller {
        node,
        shared: shared.clone(),
    };
    let table = &attached.table;
    // Only before the first read of the store: afterwards the view answers at once.
    if !table.loaded(remaining()).await {
        return Err(RouteFailure::route(
            name,
            FailureKind::Deadline,
            "the router has not read its routes from the config store yet",
        ));
    }
    let Some(route) = table.get(name) else {
        return Err(RouteFailure::route(
            name,
            FailureKind::NoSuchRoute,
            "no such route in the config store",
        ));
    };
    tracing::debug!(route = name, revision = ?route.revision, "running route");
    exec::execute(&caller, &route, req.input, until).await
}

/// Makes hops' calls by name through the node.
struct NodeCaller {
    node: Node,
    shared: Arc<Shared>,
}

fn client(node: &Node, hop: &Hop, deadline: Duration) -> crate::ServiceClient {
    let client = node.client(&hop.service).with_deadline(deadline);
    match &hop.version {
        Some(requirement) => client.with_version(requirement.clone()),
        None => client,
    }
}

impl HopCaller for NodeCaller {
    async fn call(&self, hop: &Hop, input: &Value, deadline: Duration) -> Result<Value, HopError> {
        client(&self.node, hop, deadline)
            .call_json(&hop.method, input)
            .await
            .map_err(HopError::from_call)
    }

    fn fire(&self, route: &Route, number: usize, input: Value) {
        let counters = &self.shared.counters;
        counters.async_started.fetch_add(1, Ordering::Relaxed);
        let hop = route.hops[number - 1].clone();
        // Nobody waits for an async hop, so it does not share the request's deadline (which
        // may end as soon as the reply is sent): it gets the node's default.
        let client = client(&self.node, &hop, self.node.config().default_deadline);
        let shared = self.shared.clone();
        let route_name = route.name.clone();
        let hop_call = async move {
            if let Err(e) = client.call_json(&hop.method, &input).await {
                tracing::warn!(route = %route_name, hop = number, target = %hop.target(),
                    error = %e, "async hop failed");
                shared.counters.async_errors.fetch_add(1, Ordering::Relaxed);
            }
        };
        // The spawned task is outside the handler's trace scope: the async hop keeps the
        // request's trace id only if it is carried over.
        match TraceId::current() {
            Some(trace) => tokio::spawn(trace.scope(hop_call)),
            None => tokio::spawn(hop_call),
        };
    }

    fn skipped(&self, route: &Route, number: usize, error: &HopError) {
        self.shared.counters.skipped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(route = %route.name, hop = number, error = %error.message,
            "hop failed; skipped");
    }
}
