//! A node: one process's membership in the cluster. It hosts services and calls others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminServer};
use crate::client::ServiceClient;
use crate::config::RpcConfig;
use crate::error::NodeError;
use crate::peer::Peers;
use crate::server::{self, InFlight, ServerState};
use crate::service::{IntoService, ServiceDef, ServiceDefError};
use crate::stats::StatsSnapshot;
use crate::store::{self, ClientShared, Store, StoreCell, StoreConfig};
use crate::tls::Credentials;
use crate::transport::{self, Bind};

enum CredentialSource {
    Given(Credentials),
    Development(PathBuf),
}

/// Configures and starts a [`Node`].
#[must_use = "a builder does nothing until start() is awaited"]
pub struct NodeBuilder {
    name: String,
    bind: Bind,
    credentials: Option<CredentialSource>,
    services: Vec<Result<ServiceDef, ServiceDefError>>,
    config: RpcConfig,
    store: Option<StoreConfig>,
    admin: Option<SocketAddr>,
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

    /// Hosts a service: a `#[skynet::service]` value or a [`ServiceDef`].
    pub fn service(mut self, service: impl IntoService) -> Self {
        self.services.push(service.into_service());
        self
    }

    /// Transport limits and timers.
    pub fn config(mut self, config: RpcConfig) -> Self {
        self.config = config;
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

    /// Validates everything, binds the socket and starts serving. Must run inside a Tokio
    /// runtime.
    pub async fn start(self) -> Result<Node, NodeError> {
        self.config.validate()?;
        let credentials = match self.credentials {
            Some(CredentialSource::Given(c)) => c,
            Some(CredentialSource::Development(dir)) => Credentials::development(dir, &self.name)?,
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
        let server = Arc::new(ServerState {
            services: services.clone(),
            config: self.config.clone(),
            inflight: InFlight::default(),
            closing: CancellationToken::new(),
            writers: TaskTracker::new(),
        });
        let admin = admin_port
            .map(|port| port.serve(&self.name, services.clone()))
            .transpose()?;
        tokio::spawn(server::accept_loop(endpoint.clone(), server.clone()));
        tracing::info!(name = %self.name, %addr, services = services.len(), "node started");
        let node = Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                addr,
                peers: Peers::new(endpoint.clone(), self.config.clone()),
                endpoint: Mutex::new(Some(endpoint)),
                services,
                server,
                config: self.config,
                store: store_cell,
                store_client,
                admin,
            }),
        };
        if let Some(config) = member
            && let Err(e) = store::start(&node, config, &node.inner.store).await
        {
            node.shutdown().await;
            return Err(e.into());
        }
        Ok(node)
    }
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

pub(crate) struct NodeInner {
    name: String,
    addr: SocketAddr,
    /// Taken at shutdown: the UDP socket is released once every handle is dropped.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    services: Arc<HashMap<Box<str>, ServiceDef>>,
    server: Arc<ServerState>,
    pub(crate) peers: Peers,
    pub(crate) config: RpcConfig,
    store: StoreCell,
    /// Set when the node is a client of the store rather than a member.
    store_client: Option<Arc<ClientShared>>,
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
            .field("addr", &self.inner.addr)
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
            config: RpcConfig::default(),
            store: None,
            admin: None,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address peers reach this node at.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The transport settings in force.
    pub fn config(&self) -> &RpcConfig {
        &self.inner.config
    }

    /// The address of the admin HTTP port, if [`NodeBuilder::admin`] asked for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner.admin.as_ref().map(AdminServer::addr)
    }

    /// The call statistics of every method this node hosts, counted for remote and
    /// same-process calls alike.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::of(&self.inner.services)
    }

    /// A client for `service`, by name. Generated clients wrap one of these.
    pub fn client(&self, service: &str) -> ServiceClient {
        ServiceClient::new(self, service)
    }

    pub(crate) fn local_service(&self, name: &str) -> Option<&ServiceDef> {
        self.inner.services.get(name)
    }

    /// This node's handle on the replicated config store, if it was started with
    /// [`NodeBuilder::store`].
    pub fn store(&self) -> Option<Store> {
        self.inner
            .store
            .get()
            .map(|shared| Store::member(shared.clone(), self.clone()))
            .or_else(|| {
                self.inner
                    .store_client
                    .as_ref()
                    .map(|client| Store::client(client.clone(), self.clone()))
            })
    }

    pub(crate) fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    pub(crate) fn inner(&self) -> &NodeInner {
        &self.inner
    }

    /// Stops gracefully: stops the config store member first (if any), then refuses new
    /// connections and calls (callers see `Unavailable` and may go elsewhere), waits up to
    /// [`RpcConfig::drain_timeout`] for accepted calls to finish, delivers their replies, then
    /// closes every connection. Idempotent.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return;
        }
        store::shutdown(&inner.store).await;
        let Some(endpoint) = inner
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        endpoint.set_server_config(None);
        let left = inner
            .server
            .inflight
            .drain(inner.config.drain_timeout)
            .await;
        if left > 0 {
            tracing::warn!(left, "drain timeout passed with calls still running");
        }
        inner.server.closing.cancel();
        inner.server.writers.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), inner.server.writers.wait()).await;
        inner.peers.close_all();
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

impl Drop for NodeInner {
    fn drop(&mut self) {
        // Without this the accept loop keeps the endpoint, and the port, alive.
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"node dropped");
        }
    }
}
