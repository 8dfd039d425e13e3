//! The admin HTTP port of a node ([`NodeBuilder::admin`](crate::NodeBuilder::admin)): plain
//! HTTP/1.1 for operators and scrapers on loopback or an operator network.
//!
//! - `GET /debug/vars`: JSON counters in the spirit of Go's expvar.
//! - `GET /metrics`: the Prometheus text format.
//!
//! Any other path is 404, another method on these paths 405. Requests are small by
//! construction: request heads are capped at [`MAX_HEAD`] bytes, bodies are never read, and
//! at most [`MAX_CONNECTIONS`] connections are served at once, each for at most
//! [`MAX_CONNECTION_TIME`]. The server stops with the node.

mod render;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::ServiceDef;
use crate::stats::StatsSnapshot;

/// Bytes hyper buffers for one request head; larger heads are refused.
const MAX_HEAD: usize = 16 << 10;
/// Connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;
/// How long one connection may stay open, so slow or idle clients cannot keep every slot.
const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);
/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shutdown waits for responses being written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What the admin port reports on.
struct AdminState {
    node: String,
    services: Arc<HashMap<Box<str>, ServiceDef>>,
    started: Instant,
}

/// A bound admin port that is not serving yet: binding comes first so that a port in use
/// fails the node's start before anything else is running.
pub(crate) struct Bound(TcpListener);

/// Binds the admin port.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
    TcpListener::bind(addr).await.map(Bound)
}

/// A running admin port. Dropping it stops the accept loop.
pub(crate) struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Bound {
    /// Starts serving the statistics of `services`.
    pub(crate) fn serve(
        self,
        node: &str,
        services: Arc<HashMap<Box<str>, ServiceDef>>,
    ) -> std::io::Result<AdminServer> {
        let addr = self.0.local_addr()?;
        let state = Arc::new(AdminState {
            node: node.to_owned(),
            services,
            started: Instant::now(),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(self.0, state, stop.clone(), tasks.clone()));
        tracing::info!(%addr, "admin port listening");
        Ok(AdminServer { addr, stop, tasks })
    }
}

impl AdminServer {
    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets responses being written finish (for at most a second) and closes
    /// every connection.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE * 2, self.tasks.wait()).await;
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: pause rather than spin on the error.
                tracing::warn!(error = %e, "admin port cannot accept");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin port at its connection limit");
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "admin connection failed");
                    }
                    return;
                }
                () = stop.cancelled() => {}
                () = tokio::time::sleep(MAX_CONNECTION_TIME) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        });
    }
}

/// Answers one request. Pure apart from reading the process's memory and command line.
fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let render: fn(&StatsSnapshot, &render::ProcessInfo) -> String;
    let content_type = match request.uri().path() {
        "/debug/vars" => {
            render = render::vars;
            "application/json"
        }
        "/metrics" => {
            render = render::prometheus;
            render::PROMETHEUS_CONTENT_TYPE
        }
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let body = render(&StatsSnapshot::of(&state.services), &process_info(state));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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
