//! A small HTTP/1.1 server shared by the admin port and the HTTP initiator: bounded request
//! heads, connection slots and deadlines ([`crate::listener`]), and a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::{BodyGuard, ListenerLimits, Mode, Slot, Table, accept_connections};

/// Bytes hyper buffers for one request head; larger heads are refused.
pub(crate) const MAX_HEAD: usize = 16 << 10;
/// How long a stop waits for responses being written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A running server. Dropping it stops the accept loop.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl HttpServer {
    /// Serves `listener` within `limits` (already validated), answering each request with
    /// `handler`; `what` names the server in logs.
    pub(crate) fn serve<H, Fut>(
        listener: TcpListener,
        limits: ListenerLimits,
        what: &'static str,
        handler: H,
    ) -> std::io::Result<Self>
    where
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            Arc::new(handler),
            limits,
            what,
            stop.clone(),
            tasks.clone(),
        ));
        Ok(Self { addr, stop, tasks })
    }

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

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The slot of the connection a request came on, in the request's extensions, so that the
/// handler can say when it reads the body ([`body_phase`]).
#[derive(Clone)]
struct ConnSlot(Arc<Slot>);

async fn accept_loop<H, Fut>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ListenerLimits,
    what: &'static str,
    stop: CancellationToken,
    tasks: TaskTracker,
) where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let serve = {
        let stop = stop.clone();
        move |stream: TcpStream, slot: Arc<Slot>| {
            let (handler, stop) = (handler.clone(), stop.clone());
            async move {
                let service = {
                    let slot = slot.clone();
                    hyper::service::service_fn(move |mut request: Request<Incoming>| {
                        // Called as soon as the head is parsed: the connection is Busy until
                        // the response is flushed.
                        let running = slot.request();
                        request.extensions_mut().insert(ConnSlot(slot.clone()));
                        let response = handler(request);
                        async move {
                            let response = response.await;
                            drop(running);
                            Ok::<_, Infallible>(response)
                        }
                    })
                };
                // The slot's sweeper enforces the phases' deadlines; hyper's own head timeout
                // runs from the moment it waits for a head, idle time included, so it is set
                // to idle + head as a backstop that never fires before the sweeper would.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.idle_timeout.saturating_add(limits.head_timeout))
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(slot.track(stream)), service);
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "HTTP connection failed");
                        }
                        return;
                    }
                    () = stop.cancelled() => {}
                    () = slot.drained() => {}
                }
                // Stopping or at the end of its lifetime: the response being written gets to
                // finish, then the connection closes (the sweeper closes it after the same
                // grace in any case).
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
            }
        }
    };
    let table = Table::new(limits, Mode::Http, what);
    accept_connections(listener, table, stop, tasks, serve).await;
}

/// A response with `body` of `content_type`.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

/// Puts the connection of `request` in the Body phase until the returned guard is dropped: a
/// handler holds it while it reads the body (so that a body that trickles in is cut off, and
/// one that arrives is not mistaken for a slow handler), and drops it before running anything.
pub(crate) fn body_phase(request: &Request<Incoming>) -> Option<BodyGuard> {
    request
        .extensions()
        .get::<ConnSlot>()
        .map(|ConnSlot(slot)| slot.body())
}
