//! The admin HTTP port of a node ([`NodeBuilder::admin`](crate::NodeBuilder::admin)): plain
//! HTTP/1.1 for operators and scrapers on loopback or an operator network.
//!
//! - `GET /debug/vars`: JSON counters in the spirit of Go's expvar.
//! - `GET /metrics`: the Prometheus text format.
//!
//! Any other path is 404, another method on these paths 405. Requests are small by
//! construction: request heads are capped at [`http::MAX_HEAD`] bytes and bodies are never
//! read; connections have the slots and deadlines of [`LIMITS`] unless
//! [`NodeBuilder::admin_limits`](crate::NodeBuilder::admin_limits) says otherwise. The server
//! stops with the node.

mod render;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::error::NodeError;
use crate::health::{Health, Readiness};
use crate::http::{self, HttpServer, plain};
use crate::listener::ListenerLimits;
use crate::service::ServiceDef;
use crate::stats::StatsSnapshot;

/// The admin port's default limits: 64 connections (16 per client address), a head within
/// 10 s, idle at most 30 s, a stalled write at most 10 s, 60 s in all. A scraper needs one
/// connection for a moment; these only have to keep a flood of silent or slow clients from
/// locking monitoring out. Bodies are never read, so their limits do not matter.
pub(crate) const LIMITS: ListenerLimits = ListenerLimits {
    max_connections: 64,
    max_per_address: None,
    head_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(30),
    body_timeout: Duration::from_secs(10),
    body_grace: Duration::from_secs(5),
    min_body_rate: 1024,
    write_timeout: Duration::from_secs(10),
    max_lifetime: Duration::from_secs(60),
};

/// What the admin port reports on.
struct AdminState {
    node: String,
    health: Arc<Health>,
    services: Arc<HashMap<Box<str>, ServiceDef>>,
    started: Instant,
}

/// A bound admin port that is not serving yet: binding comes first so that a port in use
/// fails the node's start before anything else is running.
pub(crate) struct Bound {
    listener: TcpListener,
    requested: SocketAddr,
}

/// Binds the admin port.
pub(crate) async fn bind(addr: SocketAddr) -> Result<Bound, NodeError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Bound {
            listener,
            requested: addr,
        }),
        Err(source) => Err(NodeError::Admin { addr, source }),
    }
}

/// A running admin port. Dropping it stops the accept loop.
pub(crate) struct AdminServer(HttpServer);

impl Bound {
    /// Starts serving the statistics of `services`, within `limits` (already validated).
    pub(crate) fn serve(
        self,
        node: &str,
        health: Arc<Health>,
        services: Arc<HashMap<Box<str>, ServiceDef>>,
        limits: ListenerLimits,
    ) -> Result<AdminServer, NodeError> {
        let state = Arc::new(AdminState {
            node: node.to_owned(),
            health,
            services,
            started: Instant::now(),
        });
        let requested = self.requested;
        let server = HttpServer::serve(self.listener, limits, "admin port", move |request| {
            let response = respond(&state, &request);
            std::future::ready(response)
        })
        .map_err(|source| NodeError::Admin {
            addr: requested,
            source,
        })?;
        tracing::info!(addr = %server.addr(), "admin port listening");
        Ok(AdminServer(server))
    }
}

impl AdminServer {
    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Stops accepting, lets responses being written finish (for at most a second) and closes
    /// every connection.
    pub(crate) async fn shutdown(&self) {
        self.0.shutdown().await;
    }
}

/// The admin port's pages.
enum Page {
    Vars,
    Metrics,
    Alive,
    Ready,
}

/// Answers one request. Pure apart from reading the process's memory and command line.
fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let page = match request.uri().path() {
        "/debug/vars" => Page::Vars,
        "/metrics" => Page::Metrics,
        "/healthz" => Page::Alive,
        "/readyz" => Page::Ready,
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (render, content_type): (fn(&StatsSnapshot, &render::ProcessInfo) -> String, _) = match page
    {
        Page::Vars => (render::vars, "application/json"),
        Page::Metrics => (render::prometheus, render::PROMETHEUS_CONTENT_TYPE),
        // Answering at all is being alive.
        Page::Alive => {
            let body = serde_json::json!({ "alive": true, "node": state.node });
            return http::respond(
                StatusCode::OK,
                "application/json",
                Bytes::from(body.to_string()),
            );
        }
        Page::Ready => return readiness(state),
    };
    let body = render(
        &crate::service::stats_of(&state.services),
        &process_info(state),
    );
    http::respond(StatusCode::OK, content_type, Bytes::from(body))
}

/// `/readyz`: 200 while the node serves, 503 with its state and why otherwise.
fn readiness(state: &AdminState) -> Response<Full<Bytes>> {
    let readiness = state.health.get();
    let ready = readiness == Readiness::Serving;
    let mut body = serde_json::json!({ "ready": ready, "state": readiness.name() });
    if let Readiness::Unregistered(why) = &readiness {
        body["reason"] = serde_json::Value::from(why.as_str());
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::respond(status, "application/json", Bytes::from(body.to_string()))
}

fn process_info(state: &AdminState) -> render::ProcessInfo {
    let memory = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| render::parse_proc_status(&text));
    render::ProcessInfo {
        node: state.node.clone(),
        cmdline: std::env::args_os()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect(),
        memory,
        uptime: state.started.elapsed(),
    }
}
