//! A node: one process's membership in the cluster. It hosts services and calls others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminServer};
use crate::balance::{self, Balancer, Locality};
use crate::config::RpcConfig;
use crate::error::NodeError;
use crate::health::{Health, Readiness};
use crate::listener::ListenerLimits;
use crate::peer::Peers;
use crate::registry::{self, Instance, Registration, RegistrationConfig, Registry};
use crate::rpc::RpcCore;
use crate::server::{self, InFlight, ServerState};
use crate::service::{IntoService, ServiceDef, ServiceDefError};
use crate::stats::StatsSnapshot;
use crate::store::{self, ClientShared, Store, StoreCell, StoreConfig};
use crate::sync::Locked as _;
use crate::tls::Credentials;
use crate::transport::{self, Bind};

enum CredentialSource {
    Given(Credentials),
    Development(PathBuf),
    /// Development credentials whose CA must exist already.
    DevelopmentExisting(PathBuf),
}

/// Configures and starts a [`Node`].
#[must_use = "a builder does nothing until start() is awaited"]
pub struct NodeBuilder {
    name: String,
    bind: Bind,
    credentials: Option<CredentialSource>,
    services: Vec<Result<ServiceDef, ServiceDefError>>,
    /// Hosted services that are not registered in the registry.
    unlisted: std::collections::HashSet<String>,
    config: RpcConfig,
    store: Option<StoreConfig>,
    host: Option<String>,
    region: String,
    registration: RegistrationConfig,
    admin: Option<SocketAddr>,
    admin_limits: ListenerLimits,
}

impl NodeBuilder {
    /// The node's name: used in its certificate and in logs. Default `"node"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Listens on `addr`; port 0 picks a free port. Default `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = Bind::Addr(addr);
        self
    }

    /// Listens on the first free port of `ports` on `ip`.
    pub fn bind_range(
        mut self,
        ip: std::net::IpAddr,
        ports: std::ops::RangeInclusive<u16>,
    ) -> Self {
        self.bind = Bind::Range(ip, ports);
        self
    }

    /// The cluster credentials this node presents and verifies peers against.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(CredentialSource::Given(credentials));
        self
    }

    /// Development mode: keeps a cluster CA in `dir` (created on first use) and issues this
    /// node's certificate from it. Every process pointed at the same directory joins the same
    /// cluster. See [`Credentials::development`].
    pub fn development_credentials(mut self, dir: impl Into<PathBuf>) -> Self {
        self.credentials = Some(CredentialSource::Development(dir.into()));
        self
    }

    /// Development mode for a node that joins an existing cluster: uses the cluster CA in
    /// `dir`, which must be there already, and issues this node's certificate from it. Without
    /// a CA in `dir`, [`NodeBuilder::start`] fails with
    /// [`TlsError::NoClusterCa`](crate::tls::TlsError::NoClusterCa) and writes nothing: a CA
    /// made here would sign a certificate no member accepts, and the node could never join.
    /// See [`Credentials::development_existing`].
    pub fn development_credentials_existing(mut self, dir: impl Into<PathBuf>) -> Self {
        self.credentials = Some(CredentialSource::DevelopmentExisting(dir.into()));
        self
    }

    /// Hosts a service: a `#[skynet::service]` value or a [`ServiceDef`].
    pub fn service(mut self, service: impl IntoService) -> Self {
        self.services.push(service.into_service());
        self
    }

    /// Hosts `service` for this process only: calls from this node reach it in-process and a
    /// caller that knows the address can call it, but it is not registered, so calls by name
    /// from other nodes never choose it. An initiator that runs routes itself, without a
    /// router process, hosts its router this way.
    pub fn unlisted_service(mut self, service: impl IntoService) -> Self {
        let service = service.into_service();
        if let Ok(def) = &service {
            self.unlisted.insert(def.name().to_owned());
        }
        self.services.push(service);
        self
    }

    /// Transport limits and timers.
    pub fn config(mut self, config: RpcConfig) -> Self {
        self.config = config;
        self
    }

    /// The host this node runs on, for locality (callers prefer instances on their own host).
    /// Default: the machine's host name.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The region this node runs in, for locality (callers prefer their own region after their
    /// own host). Default `"unknown"`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// How this node registers its services in the store (lease TTL, shutdown grace).
    pub fn registration(mut self, config: RegistrationConfig) -> Self {
        self.registration = config;
        self
    }

    /// Connects this node to the replicated config store (see [`Node::store`]): as a member that
    /// bootstraps a new cluster or joins one through seeds, or as a client of the members, as
    /// `config` says. For a member, [`Self::start`] returns once it follows a leader.
    pub fn store(mut self, config: StoreConfig) -> Self {
        self.store = Some(config);
        self
    }

    /// Serves the admin HTTP port on `addr` (TCP; port 0 picks a free one, see
    /// [`Node::admin_addr`]): `GET /debug/vars` (JSON counters) and `GET /metrics`
    /// (Prometheus). Plain HTTP without authentication: bind it to loopback or an operator
    /// network. Default: no admin port.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// The admin port's connection slots and deadlines. Default: 64 connections (16 per
    /// client address), a request head within 10 s, idle at most 30 s, a stalled write at
    /// most 10 s, 60 s in all.
    pub fn admin_limits(mut self, limits: ListenerLimits) -> Self {
        self.admin_limits = limits;
        self
    }

    /// Validates everything, binds the socket and starts serving. Must run inside a Tokio
    /// runtime.
    pub async fn start(self) -> Result<Node, NodeError> {
        self.config.validate()?;
        if self.registration.ttl < Duration::from_millis(300) {
            return Err(NodeError::Config(
                "the registration lease TTL must be at least 300 ms".into(),
            ));
        }
        let credentials = match self.credentials {
            Some(CredentialSource::Given(c)) => c,
            Some(CredentialSource::Development(dir)) => Credentials::development(dir, &self.name)?,
            Some(CredentialSource::DevelopmentExisting(dir)) => {
                Credentials::development_existing(dir, &self.name)?
            }
            None => return Err(NodeError::NoCredentials),
        };
        let store_cell = StoreCell::default();
        let mut defs = self.services;
        let mut store_client = None;
        let mut member = None;
        if let Some(config) = self.store {
            config.validate()?;
            if config.is_client() {
                store_client = Some(ClientShared::new(config));
            } else {
                defs.extend(store::services(&store_cell)?.into_iter().map(Ok));
                member = Some(config);
            }
        }
        let mut services = HashMap::new();
        for def in defs {
            let mut def = def?;
            def.reset_stats();
            let name: Box<str> = def.name().into();
            if services.contains_key(&name) {
                return Err(NodeError::DuplicateService(name.into()));
            }
            services.insert(name, def);
        }
        self.admin_limits
            .validate()
            .map_err(|e| NodeError::Config(format!("admin port: {e}")))?;
        // Before the endpoint, so that a port in use fails the start with nothing running.
        let admin_port = match self.admin {
            Some(addr) => Some(admin::bind(addr).await?),
            None => None,
        };
        let endpoint = transport::endpoint(&credentials, &self.config, &self.bind)?;
        let addr = endpoint.local_addr().map_err(|source| NodeError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let services = Arc::new(services);
        let health = Arc::new(Health::default());
        let server = Arc::new(ServerState {
            services: services.clone(),
            config: self.config.clone(),
            inflight: InFlight::default(),
            closing: CancellationToken::new(),
            writers: TaskTracker::new(),
        });
        let admin = admin_port
            .map(|port| {
                port.serve(
                    &self.name,
                    health.clone(),
                    services.clone(),
                    self.admin_limits,
                )
            })
            .transpose()?;
        tokio::spawn(server::accept_loop(endpoint.clone(), server.clone()));
        tracing::info!(name = %self.name, %addr, services = services.len(), "node started");
        let locality = Locality {
            host: self.host.unwrap_or_else(host_name),
            region: self.region,
        };
        let node = Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                rpc: Arc::new(RpcCore {
                    addr,
                    peers: Peers::new(endpoint.clone(), self.config.clone()),
                    services,
                    config: self.config,
                }),
                endpoint: Mutex::new(Some(endpoint)),
                health,
                server,
                store: store_cell,
                store_client,
                balancer: Balancer::new(locality.clone()),
                locality,
                started_at_ms: unix_ms(),
                registry: OnceLock::new(),
                registration_config: self.registration,
                unlisted: self.unlisted,
                registration: OnceLock::new(),
                background: CancellationToken::new(),
                admin,
            }),
        };
        if let Some(config) = member
            && let Err(e) = store::start(
                &node.inner.rpc,
                &node.inner.background,
                config,
                &node.inner.store,
            )
            .await
        {
            node.shutdown().await;
            return Err(e.into());
        }
        if let Err(e) = node.start_registry().await {
            node.shutdown().await;
            return Err(e.into());
        }
        node.inner.health.set(Readiness::Serving);
        Ok(node)
    }
}

/// The machine's host name, or `"unknown"`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A running member of the cluster: hosts services and calls others over QUIC with mutual
/// TLS. Cheap to clone; the node runs until [`Node::shutdown`] or until the last clone drops.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let node = skynet::Node::builder()
///     .name("greeter")
///     .development_credentials("/tmp/skynet-dev")
///     .start()
///     .await?;
/// println!("listening on {}", node.local_addr());
/// node.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    name: String,
    /// The address, connections, hosted services and config the layers stand on.
    rpc: Arc<RpcCore>,
    /// Whether the node serves, for the admin port's `/readyz`.
    health: Arc<Health>,
    /// Taken at shutdown: the UDP socket is released once every handle is dropped.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    server: Arc<ServerState>,
    store: StoreCell,
    /// Set when the node is a client of the store rather than a member.
    store_client: Option<Arc<ClientShared>>,
    balancer: Balancer,
    locality: Locality,
    started_at_ms: u64,
    /// Set once the node has a store: the live view of every instance.
    registry: OnceLock<Registry>,
    registration_config: RegistrationConfig,
    /// Hosted services left out of the registry ([`NodeBuilder::unlisted_service`]).
    unlisted: std::collections::HashSet<String>,
    /// Set once this node's services are registered.
    registration: OnceLock<Arc<Registration>>,
    /// Ends the node's background tasks (registry view, probes) at shutdown.
    background: CancellationToken,
    admin: Option<AdminServer>,
}

/// A node that does not keep it running: held by parts of the node itself (the store's Raft
/// transport), so that they do not form a reference cycle with it.
#[derive(Clone)]
pub(crate) struct WeakNode(Weak<NodeInner>);

impl WeakNode {
    /// The node, unless every handle to it has dropped.
    pub(crate) fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.rpc.addr)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts configuring a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            name: "node".to_owned(),
            bind: Bind::default(),
            credentials: None,
            services: Vec::new(),
            unlisted: std::collections::HashSet::new(),
            config: RpcConfig::default(),
            store: None,
            host: None,
            region: "unknown".to_owned(),
            registration: RegistrationConfig::default(),
            admin: None,
            admin_limits: admin::LIMITS,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address peers reach this node at.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.rpc.addr
    }

    /// The transport settings in force.
    pub fn config(&self) -> &RpcConfig {
        &self.inner.rpc.config
    }

    /// The address of the admin HTTP port, if [`NodeBuilder::admin`] asked for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin.as_ref().map(AdminServer::addr)
    }

    /// The call statistics of every method this node hosts, counted for remote and
    /// same-process calls alike.
    pub fn stats(&self) -> StatsSnapshot {
        crate::service::stats_of(&self.inner.rpc.services)
    }

    pub(crate) fn local_service(&self, name: &str) -> Option<&ServiceDef> {
        self.inner.rpc.services.get(name)
    }

    /// This node's handle on the replicated config store, if it was started with
    /// [`NodeBuilder::store`].
    pub fn store(&self) -> Option<Store> {
        self.inner
            .store
            .get()
            .map(|shared| {
                Store::member(
                    shared.clone(),
                    self.inner.rpc.clone(),
                    self.inner.background.clone(),
                )
            })
            .or_else(|| {
                self.inner.store_client.as_ref().map(|client| {
                    Store::client(
                        client.clone(),
                        self.inner.rpc.clone(),
                        self.inner.background.clone(),
                    )
                })
            })
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// What this node's clients share for calls by name: the retry budget, ejections, probes.
    pub(crate) fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }

    /// The core the node's layers stand on.
    pub(crate) fn rpc(&self) -> &Arc<RpcCore> {
        &self.inner.rpc
    }

    /// The live registry view, once the node has a store.
    pub(crate) fn registry_view(&self) -> Option<&Registry> {
        self.inner.registry.get()
    }

    /// This node's live view of the service registry; `None` without a store.
    pub fn registry(&self) -> Option<Registry> {
        self.inner.registry.get().cloned()
    }

    /// Marks this node's instance of `service` as taking new traffic or not (it keeps running
    /// and answers calls already routed to it). Returns whether this node hosts `service`.
    pub async fn set_registered(&self, service: &str, registered: bool) -> Result<bool, NodeError> {
        match self.inner.registration.get() {
            Some(registration) => Ok(registration.set_registered(service, registered).await?),
            None => Ok(false),
        }
    }

    /// With a store: starts the registry view, forgets callers' stats of instances that leave,
    /// and registers the application services this node hosts.
    async fn start_registry(&self) -> Result<(), crate::store::StoreError> {
        let Some(store) = self.store() else {
            return Ok(());
        };
        let inner = &self.inner;
        store::learn_members(store.clone(), inner.background.clone());
        let view = registry::start_view(store.clone(), inner.background.clone());
        let _ = inner.registry.set(view.clone());
        let weak = self.downgrade();
        let mut snapshots = view.subscribe();
        let stop = inner.background.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let Some(node) = weak.upgrade() else { return };
                let live: std::collections::HashSet<SocketAddr> =
                    snapshot.all().map(|i| i.addr).collect();
                for addr in node.inner.balancer.retain(|addr| live.contains(&addr)) {
                    // Calls still waiting on an instance that left the registry (killed, its
                    // lease expired) fail now as a lost connection, and are retried elsewhere
                    // when they may be, rather than wait out the connection's idle timeout.
                    // Done here, once, instead of racing every call against a signal.
                    node.inner
                        .rpc
                        .peers
                        .forget_addr(addr, b"the instance left the registry");
                }
            }
        });
        let records: Vec<Instance> = inner
            .rpc
            .services
            .values()
            .filter(|def| !store::is_internal(def.name()) && !inner.unlisted.contains(def.name()))
            .map(|def| self.instance_record(def))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let registration = Registration::start(
            store,
            inner.registration_config.clone(),
            records,
            inner.health.clone(),
        )
        .await?;
        let _ = inner.registration.set(registration);
        Ok(())
    }

    fn instance_record(&self, def: &ServiceDef) -> Instance {
        let inner = &self.inner;
        let mut methods: Vec<String> = def.methods().map(str::to_owned).collect();
        methods.sort();
        let idempotent = methods
            .iter()
            .filter(|m| def.is_idempotent(m) == Some(true))
            .cloned()
            .collect();
        Instance {
            service: def.name().to_owned(),
            version: def.version().clone(),
            node: inner.name.clone(),
            addr: inner.rpc.addr,
            host: inner.locality.host.clone(),
            region: inner.locality.region.clone(),
            started_at_ms: inner.started_at_ms,
            registered: true,
            methods,
            idempotent,
        }
    }

    /// Takes `addr` out of this node's rotation after a connection-level failure, and probes it
    /// in the background until it answers again or leaves the registry.
    pub(crate) fn eject(&self, addr: SocketAddr) {
        let weak = self.downgrade();
        self.inner.rpc.peers.forget_addr(addr, b"peer ejected");
        self.inner.balancer.eject(addr, move |stats| async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                let Some(node) = weak.upgrade() else { return };
                if stats.gone().is_cancelled() || node.inner.background.is_cancelled() {
                    balance::stop_probing(&stats);
                    return;
                }
                if node.inner.rpc.peers.get(addr).await.is_ok() {
                    tracing::info!(%addr, "ejected instance answers again");
                    balance::readmit(&stats);
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }

    /// Stops gracefully. From the first moment every new call to this node's services is
    /// refused with [`CallError::Stopping`](crate::CallError::Stopping), which callers by name
    /// retry on another instance at once; then it marks its instances unregistered (callers stop
    /// choosing them) and waits the registration grace, waits up to
    /// [`RpcConfig::drain_timeout`] for accepted calls to finish and delivers their replies,
    /// revokes the registration lease, stops the config store member (if any), then closes every
    /// connection. Everything that waits on the config store is bounded by
    /// [`RpcConfig::shutdown_grace`] in all: a store that is down or sick costs a stopping node
    /// that long at most, and what was given up is logged. Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.endpoint.locked().is_none() {
            return;
        }
        inner.health.set(Readiness::Stopping);
        inner.server.inflight.stop();
        let store_deadline = tokio::time::Instant::now() + inner.rpc.config.shutdown_grace;
        let registration = inner.registration.get();
        if let Some(registration) = registration {
            let unregistered = bounded(
                store_deadline,
                "mark this node's instances unregistered",
                async { registration.unregister_all().await },
            )
            .await;
            if unregistered {
                // Calls are refused already; the grace lets callers' registry views catch up
                // before the endpoint closes, so that they stop choosing this node rather than
                // find it gone.
                tokio::time::sleep(inner.registration_config.grace).await;
            }
        }
        store::stop_polls(&inner.store);
        let Some(endpoint) = inner.endpoint.locked().take() else {
            return;
        };
        let left = inner
            .server
            .inflight
            .drain(inner.rpc.config.drain_timeout)
            .await;
        if left > 0 {
            tracing::warn!(left, "drain timeout passed with calls still running");
        }
        if let Some(registration) = registration {
            bounded(store_deadline, "revoke the registration lease", async {
                registration.deregister().await
            })
            .await;
        }
        inner.background.cancel();
        if tokio::time::timeout_at(store_deadline, store::shutdown(&inner.store))
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?inner.rpc.config.shutdown_grace,
                "gave up waiting for the config store member to stop: the shutdown grace passed"
            );
        }
        inner.server.closing.cancel();
        inner.server.writers.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), inner.server.writers.wait()).await;
        inner.rpc.peers.close_all();
        endpoint.close(0u32.into(), b"node shut down");
        // The close frames are sent by now; waiting out the draining period only absorbs
        // stray packets, and a peer that vanished first would make it take the idle timeout.
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        if let Some(admin) = &inner.admin {
            admin.shutdown().await;
        }
        tracing::info!(name = %inner.name, "node stopped");
    }
}

/// Runs a step of the shutdown that needs the config store until `deadline`; logs what was
/// given up, and why. Returns whether the step was done.
async fn bounded(
    deadline: tokio::time::Instant,
    what: &str,
    step: impl std::future::Future<Output = Result<(), store::StoreError>>,
) -> bool {
    match tokio::time::timeout_at(deadline, step).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stopping: could not {what}; gave up");
            false
        }
        Err(_) => {
            tracing::warn!(
                "stopping: could not {what} within the shutdown grace (the config store does not \
                 answer); gave up"
            );
            false
        }
    }
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        // Without this the accept loop keeps the endpoint, and the port, alive.
        let endpoint = self.endpoint.locked().take();
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"node dropped");
        }
    }
}
