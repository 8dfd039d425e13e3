//! A small HTTP/1.1 server shared by the admin port and the HTTP initiator: bounded request
//! heads and connection counts, a time limit per connection, and a graceful stop.

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
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes hyper buffers for one request head; larger heads are refused.
pub(crate) const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for responses being written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The limits of one server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; more are closed on accept.
    pub(crate) connections: usize,
    /// How long one connection may stay open, so slow or idle clients cannot keep every slot.
    pub(crate) connection_time: Duration,
}

/// A running server. Dropping it stops the accept loop.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl HttpServer {
    /// Serves `listener`, answering each request with `handler`.
    pub(crate) fn serve<H, Fut>(
        listener: TcpListener,
        limits: Limits,
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

async fn accept_loop<H, Fut>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    stop: CancellationToken,
    tasks: TaskTracker,
) where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let serve = {
        let stop = stop.clone();
        move |stream: TcpStream| {
            let (handler, stop) = (handler.clone(), stop.clone());
            async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
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
                            tracing::debug!(error = %e, "HTTP connection failed");
                        }
                        return;
                    }
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(limits.connection_time) => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
            }
        }
    };
    accept_connections(listener, limits.connections, stop, tasks, serve).await;
}

/// Accepts connections until `stop`, serving at most `connections` at once (more are closed
/// on accept), each in a task of `tasks` running `serve`.
pub(crate) async fn accept_connections<S, Fut>(
    listener: TcpListener,
    connections: usize,
    stop: CancellationToken,
    tasks: TaskTracker,
    serve: S,
) where
    S: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(connections));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: pause rather than spin on the error.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("at the connection limit; closing a new connection");
            continue;
        };
        let connection = serve(stream);
        tasks.spawn(async move {
            let _slot = slot;
            connection.await;
        });
    }
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
