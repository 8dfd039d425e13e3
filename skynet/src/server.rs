//! The serving side: accepted connections, their streams, and dispatch to handlers.
//!
//! Each stream is read frame by frame. A request's handler is polled once inline, on the
//! reader's task, and only spawned if it is not finished: most handlers complete at once and
//! skip the cost of a task, while a slow handler gets a task of its own and cannot hold up the
//! calls behind it. Replies go through one writer per stream that coalesces every queued frame
//! into one write, so many replies share a packet.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RpcConfig;
use crate::id_map::IdMap;
use crate::service::{Context, ServiceDef, panic_message};
use crate::stats::Outcome;
use crate::sync::Locked as _;
use crate::trace::{self, TraceId};
use crate::transport::{FrameBuf, HandshakeRefusal, Incoming, RefusalLog};
use crate::wire::{self, FrameKind, Status};

/// Bytes gathered into one write by a stream writer before it flushes.
const WRITE_BATCH: usize = 64 << 10;

/// State shared by everything that serves calls on one node.
pub(crate) struct ServerState {
    pub(crate) services: Arc<HashMap<Box<str>, ServiceDef>>,
    pub(crate) config: RpcConfig,
    pub(crate) inflight: InFlight,
    /// Cancelled once every accepted call has finished during shutdown: writers flush and
    /// finish their streams.
    pub(crate) closing: CancellationToken,
    /// Stream writers, awaited during shutdown so no queued reply is lost.
    pub(crate) writers: TaskTracker,
}

/// Counts accepted calls so a shutdown can wait for them, and refuses new ones once stopping
/// (calls to the node's own services) or draining (every call).
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    /// The shutdown has begun: calls are refused, except to services that serve until the
    /// node drains (the config store's own; see `ServiceDef::serves_until_drained`).
    stopping: AtomicBool,
    draining: AtomicBool,
    idle: Notify,
}

/// Accepted calls' places in the in-flight count, given back when the guard drops. The places
/// move between guards without ever leaving the count: a reply batch takes those of the calls
/// whose replies it holds, and a spawned handler's task takes its call's ([`Counted`]).
pub(crate) struct InFlightGuard<'a> {
    inflight: &'a InFlight,
    calls: usize,
}

impl<'a> InFlightGuard<'a> {
    /// A guard holding no call yet.
    fn empty(inflight: &'a InFlight) -> Self {
        Self { inflight, calls: 0 }
    }

    /// Takes over the calls of `other`.
    fn absorb(&mut self, mut other: InFlightGuard<'_>) {
        self.calls += std::mem::take(&mut other.calls);
    }

    /// Gives back the calls held now.
    fn release(&mut self) {
        self.inflight.release(std::mem::take(&mut self.calls));
    }
}

impl InFlight {
    /// Admits a call unless the node is draining. The increment comes before the check, and
    /// `drain` sets the flag before it reads the count (both SeqCst), so a call is either
    /// refused or counted: never accepted and missed.
    fn enter(&self, serves_until_drained: bool) -> Option<InFlightGuard<'_>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard {
            inflight: self,
            calls: 1,
        };
        let refused = self.draining.load(Ordering::SeqCst)
            || (!serves_until_drained && self.stopping.load(Ordering::SeqCst));
        (!refused).then_some(guard)
    }

    /// Refuses every new call to the node's own services from now on (see `stopping`).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Refuses new calls and waits until the accepted ones have finished or `limit` passes.
    /// Returns how many were still running at the limit.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.count.load(Ordering::SeqCst)
    }
}

impl InFlight {
    /// Ends `n` calls at once.
    fn release(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::SeqCst) == n {
            self.idle.notify_waiters();
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Per-connection state: the handlers that run in tasks, by request id, so a cancel frame or a
/// lost connection can stop them; and the number of calls running.
#[derive(Default)]
struct ConnState {
    spawned: Mutex<IdMap<AbortHandle>>,
    running: AtomicUsize,
}

impl ConnState {
    fn abort(&self, id: u64) {
        let handle = self.spawned.locked().remove(&id);
        if let Some(handle) = handle {
            handle.abort();
        }
    }

    fn abort_all(&self) {
        let handles: Vec<_> = self.spawned.locked().drain().map(|(_, h)| h).collect();
        for handle in handles {
            handle.abort();
        }
    }
}

/// Releases a connection's concurrency slot when a call ends, however it ends.
struct Slot(Arc<ConnState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<ServerState>) {
    let refusals = Arc::new(RefusalLog::new());
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, state.clone(), refusals.clone()));
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    state: Arc<ServerState>,
    refusals: Arc<RefusalLog>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // A certificate one side does not accept (a process started with another
            // cluster's credentials) is an operator's mistake to point out, not noise.
            match HandshakeRefusal::of(&e) {
                Some(refusal) => refusals.refused(remote, &refusal),
                None => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
            return;
        }
    };
    let conn_state = Arc::new(ConnState::default());
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(send, recv, state.clone(), conn_state.clone()));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection closed");
                break;
            }
        }
    }
    // The caller is gone: nobody will read these replies.
    conn_state.abort_all();
}

async fn serve_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: Arc<ServerState>,
    conn: Arc<ConnState>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let send = Arc::new(tokio::sync::Mutex::new(send));
    state
        .writers
        .spawn(write_loop(send.clone(), rx, state.closing.clone()));
    let mut frames = FrameBuf::new(state.config.max_frame_size, WRITE_BATCH);
    let mut replies = Replies {
        tx: &tx,
        send: &send,
        ready: Vec::with_capacity(WRITE_BATCH),
        held: InFlightGuard::empty(&state.inflight),
    };
    loop {
        // Replies of calls that finished inline wait here while more requests are already
        // buffered, and go to the writer together before the reader could block.
        if !frames.holds_whole_frame() || replies.ready.len() >= WRITE_BATCH {
            replies.flush().await;
        }
        match frames.read_frame(&mut recv).await {
            Ok(Incoming::Frame(header, body)) => match header.kind {
                FrameKind::Request => dispatch(header.id, &body, &mut replies, &state, &conn),
                FrameKind::Cancel => conn.abort(header.id),
                FrameKind::Response => {
                    tracing::debug!("peer sent a response frame to a server stream");
                    break;
                }
            },
            Ok(Incoming::Oversized {
                kind: FrameKind::Request,
                id,
                body_len,
                limit,
            }) => {
                let message = format!("request of {body_len} bytes exceeds the limit of {limit}");
                replies.message(id, Status::TooLarge, &message);
            }
            Ok(Incoming::Oversized { .. }) => {}
            Ok(Incoming::End) => break,
            Err(e) => {
                tracing::debug!(error = %e, "request stream failed");
                break;
            }
        }
    }
    replies.flush().await;
    // Dropping our sender lets the writer finish the stream once the last running handler of
    // this stream has replied.
}

/// Replies of one stream's reader, gathered into one buffer and written by the reader itself:
/// a call answered inline costs no hand-off to another task. (The reader is never cancelled
/// mid-write, so a frame cannot be cut in half.) Replies of spawned handlers go through `tx`
/// to the stream's writer task, which shares the stream behind the lock.
/// The calls whose replies wait here stay counted as in flight until the replies reach the
/// writer (`held`), so a graceful shutdown cannot finish the stream under them.
struct Replies<'a> {
    tx: &'a mpsc::UnboundedSender<Vec<u8>>,
    send: &'a tokio::sync::Mutex<quinn::SendStream>,
    ready: Vec<u8>,
    held: InFlightGuard<'a>,
}

impl Replies<'_> {
    /// Queues the reply of a call that finished; its place in flight is given back on flush.
    fn push(&mut self, frame: Vec<u8>, call: InFlightGuard<'_>) {
        self.ready.extend_from_slice(&frame);
        self.held.absorb(call);
    }

    fn message(&mut self, id: u64, status: Status, message: &str) {
        wire::write_response_message(&mut self.ready, id, status, message);
    }

    async fn flush(&mut self) {
        if !self.ready.is_empty() {
            if let Err(e) = self.send.lock().await.write_all(&self.ready).await {
                tracing::debug!(error = %e, "reply stream failed");
            }
            self.ready.clear();
        }
        self.held.release();
    }
}

fn dispatch(
    id: u64,
    body: &[u8],
    replies: &mut Replies<'_>,
    state: &Arc<ServerState>,
    conn: &Arc<ConnState>,
) {
    let (head, payload) = match wire::parse_request(body) {
        Ok(parts) => parts,
        Err(e) => return replies.message(id, Status::BadRequest, &e.to_string()),
    };
    let Some((def, method)) = state
        .services
        .get(head.service)
        .and_then(|def| Some((def, def.method(head.method)?)))
    else {
        let message = format!("no method {}.{} here", head.service, head.method);
        return replies.message(id, Status::NotFound, &message);
    };
    let Some(guard) = state.inflight.enter(def.serves_until_drained) else {
        return replies.message(id, Status::Stopping, "the node is stopping");
    };
    if conn.running.fetch_add(1, Ordering::Relaxed) >= state.config.max_concurrent_calls {
        conn.running.fetch_sub(1, Ordering::Relaxed);
        return replies.message(id, Status::Unavailable, "too many concurrent calls");
    }
    let slot = Slot(conn.clone());
    let now = Instant::now();
    let deadline = head.deadline.map(|d| now + d);
    // A caller of protocol version 1 sends no trace id: the chain starts here.
    let trace = head.trace_id.unwrap_or_else(TraceId::random);
    let ctx = Context::new(id, deadline, true, trace);
    let span = trace::serve_span(head.service, head.method, id, trace);
    let stats = method.stats.start_at(now, span.clone());
    let handler = match method.handler.call_wire(ctx, head.encoding, payload) {
        Ok(fut) => fut,
        Err(e) => {
            stats.finish(Outcome::BadRequest);
            return replies.message(id, Status::BadRequest, &e.to_string());
        }
    };
    let handler = trace::in_span(handler, span);
    // Hybrid dispatch: one inline poll. A no-op waker is enough because a call that is not
    // ready is handed to a task, whose first poll registers the real waker. A call that
    // finishes here never arms its deadline timer: that is most calls, and it saves a timer
    // registration and cancellation each.
    let mut handler = AssertUnwindSafe(handler).catch_unwind();
    let mut cx = std::task::Context::from_waker(Waker::noop());
    if let Poll::Ready(outcome) = Pin::new(&mut handler).poll(&mut cx) {
        let (frame, outcome) = reply_frame(id, outcome);
        stats.finish(outcome);
        replies.push(frame, guard);
        drop(slot);
        return;
    }
    // Aborting the task (cancel frame, lost connection) drops this guard: counted cancelled.
    let stats = stats.into_shared(&method.stats);
    let call = async move {
        let (frame, outcome) = match deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), handler).await {
                Ok(outcome) => reply_frame(id, outcome),
                Err(_) => {
                    let mut frame = Vec::new();
                    let message = "deadline passed while the handler ran";
                    wire::write_response_message(&mut frame, id, Status::DeadlineExceeded, message);
                    (frame, Outcome::DeadlineExceeded)
                }
            },
            None => reply_frame(id, handler.await),
        };
        stats.finish(outcome);
        frame
    };
    let tx = replies.tx.clone();
    // The call's place in the in-flight count moves into the task as it is. Counting it anew
    // when the task first runs left a gap in which a shutdown could see no call in flight
    // and finish the stream under the running handlers.
    let counted = Counted::take(guard, state.clone());
    let conn_for_task = conn.clone();
    // Hold the map lock across spawn and insert, so the task's own removal cannot run first
    // and leave a stale handle behind.
    let mut spawned = conn.spawned.locked();
    let task = tokio::spawn(async move {
        // Released when the task ends, or when it is aborted, polled or not.
        let _counted = counted;
        let _slot = slot;
        let frame = call.await;
        conn_for_task.spawned.locked().remove(&id);
        let _ = tx.send(frame);
    });
    spawned.insert(id, task.abort_handle());
    drop(spawned);
}

/// An accepted call's place in the in-flight count, owned by the task the call moved to.
struct Counted {
    state: Arc<ServerState>,
    calls: usize,
}

impl Counted {
    /// Takes over the calls of `guard` for a task that outlives the stream's reader.
    fn take(mut guard: InFlightGuard<'_>, state: Arc<ServerState>) -> Self {
        let calls = std::mem::take(&mut guard.calls);
        Self { state, calls }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.state.inflight.release(self.calls);
    }
}

/// The reply for a handler that finished, and its outcome: its own frame, or `Internal` if it
/// panicked.
fn reply_frame(id: u64, outcome: std::thread::Result<Vec<u8>>) -> (Vec<u8>, Outcome) {
    match outcome {
        Ok(frame) => {
            let outcome = Outcome::of_frame(&frame);
            (frame, outcome)
        }
        Err(panic) => {
            let what = panic_message(&*panic);
            tracing::error!(request_id = id, panic = %what, "handler panicked");
            let mut frame = Vec::new();
            let message = format!("handler panicked: {what}");
            wire::write_response_message(&mut frame, id, Status::Internal, &message);
            (frame, Outcome::Internal)
        }
    }
}

/// Writes replies, coalescing whatever is queued into one write. Ends when every sender is
/// gone (the stream is finished) or when the node closes (queued replies are flushed first).
async fn write_loop(
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut closed = false;
    loop {
        let first = tokio::select! {
            frame = rx.recv() => frame,
            () = closing.cancelled(), if !closed => { closed = true; rx.try_recv().ok() }
        };
        let Some(first) = first else { break };
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(e) = send.lock().await.write_all(&batch).await {
            tracing::debug!(error = %e, "reply stream failed");
            return;
        }
        if closed && rx.is_empty() {
            break;
        }
    }
    let mut send = send.lock().await;
    let _ = send.finish();
    if closed {
        // Wait until the peer has the replies before the connection is closed under them.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(inflight: &InFlight) -> usize {
        inflight.count.load(Ordering::SeqCst)
    }

    #[test]
    fn places_in_flight_move_between_guards_and_are_given_back_once() {
        let inflight = InFlight::default();
        let (a, b) = (inflight.enter(false), inflight.enter(false));
        let mut batch = InFlightGuard::empty(&inflight);
        batch.absorb(a.expect("admitted"));
        batch.absorb(b.expect("admitted"));
        assert_eq!(in_flight(&inflight), 2, "absorbed calls stay counted");
        batch.release();
        assert_eq!(in_flight(&inflight), 0);
        let c = inflight.enter(false).expect("admitted");
        batch.absorb(c);
        // A batch dropped before its flush gives its calls back too.
        drop(batch);
        assert_eq!(in_flight(&inflight), 0);
    }

    #[test]
    fn a_stopping_node_refuses_its_services_but_not_the_stores() {
        let inflight = InFlight::default();
        inflight.stop();
        assert!(inflight.enter(false).is_none());
        let store_call = inflight.enter(true).expect("the store's services serve on");
        assert_eq!(in_flight(&inflight), 1, "a refused call is not counted");
        drop(store_call);
        assert_eq!(in_flight(&inflight), 0);
    }
}
