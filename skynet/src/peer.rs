//! The calling side: one connection per peer, reused, and redialed when it is lost.
//!
//! Calls to a peer share one long-lived stream. A call alone on the connection writes its
//! request frame and reads its reply itself. Calls that overlap queue their frames for one
//! writer task, which coalesces everything queued into a single write, and one reader task
//! hands each response to the caller waiting on its id. Requests of at least
//! [`RpcConfig::large_message`] bytes go on a stream of their own so they cannot delay small
//! calls queued behind them.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};

use futures_util::FutureExt as _;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::RpcConfig;
use crate::id_map::{AddrMap, IdMap};
use crate::sync::Locked as _;
use crate::tls::CLUSTER_SERVER_NAME;
use crate::transport::{FrameBuf, HandshakeRefusal, Incoming, ReadError};
use crate::wire::{self, FrameKind, Status};

const BATCH: usize = 64 << 10;

/// A response body: status, encoding, payload (see [`wire::parse_response`]).
pub(crate) type ResponseBody = Vec<u8>;

/// Why a request could not be completed at the connection level.
#[derive(Debug, Clone)]
pub(crate) enum PeerError {
    /// Not sent.
    Unreachable(String),
    /// Sent; the outcome is unknown.
    Lost(String),
    /// Not sent: the TLS handshake was refused for a reason redialing will not change (see
    /// [`HandshakeRefusal`]).
    Refused(String),
}

/// A dial's outcome, `None` while it runs.
type DialOutcome = Option<Result<Arc<PeerConn>, PeerError>>;

/// All connections this node has dialed.
pub(crate) struct Peers {
    shared: Arc<PeersShared>,
}

/// What the dial tasks share with the node.
struct PeersShared {
    /// Taken at shutdown so the socket is released once the last connection is gone.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    config: RpcConfig,
    live: Mutex<AddrMap<Arc<PeerConn>>>,
    /// The dial in progress per address. A dial runs in a task of its own and every caller
    /// that needs the address waits for its outcome: a caller that gives up (its deadline
    /// passed) leaves the dial to finish for the next one. Were the dial the caller's own
    /// future, a peer too busy to finish a handshake within callers' deadlines would get a new
    /// handshake from every call, each one costing it more than the last (with 200 processes
    /// starting at once, the store members drowned in handshakes and none finished).
    dialing: Mutex<AddrMap<tokio::sync::watch::Receiver<DialOutcome>>>,
}

impl PeersShared {
    fn cached(&self, addr: SocketAddr) -> Option<Arc<PeerConn>> {
        let live = self.live.locked();
        live.get(&addr).filter(|c| c.is_alive()).cloned()
    }

    /// Dials `addr`, records the connection if it is made (unless the node shut down
    /// meanwhile), and tells the waiting callers.
    async fn dial(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        outcome: tokio::sync::watch::Sender<DialOutcome>,
    ) {
        let result = dial(&endpoint, &self.config, addr).await;
        if let Ok(conn) = &result {
            let shut = self.endpoint.locked().is_none();
            if shut {
                conn.conn.close(0u32.into(), b"node shutting down");
            } else {
                self.live.locked().insert(addr, conn.clone());
            }
        }
        // After the insert: a caller that finds no dial in progress finds the connection.
        self.dialing.locked().remove(&addr);
        outcome.send_replace(Some(result));
    }
}

impl Peers {
    pub(crate) fn new(endpoint: quinn::Endpoint, config: RpcConfig) -> Self {
        Self {
            shared: Arc::new(PeersShared {
                endpoint: Mutex::new(Some(endpoint)),
                config,
                live: Mutex::default(),
                dialing: Mutex::default(),
            }),
        }
    }

    /// Whether a live connection to `addr` exists (a call would not have to dial).
    pub(crate) fn is_connected(&self, addr: SocketAddr) -> bool {
        self.shared.cached(addr).is_some()
    }

    /// The live connection to `addr`, dialing it if needed, and whether it was open already
    /// (a call that waited for a dial says nothing about the peer's latency). Dropping the
    /// future leaves a dial it started to finish (see [`PeersShared::dialing`]).
    pub(crate) async fn get(&self, addr: SocketAddr) -> Result<(Arc<PeerConn>, bool), PeerError> {
        let shared = &self.shared;
        if let Some(conn) = shared.cached(addr) {
            return Ok((conn, true));
        }
        let mut outcome = {
            let mut dialing = shared.dialing.locked();
            // Again under the dialing lock: a dial that ended meanwhile recorded its
            // connection before it left the map.
            if let Some(conn) = shared.cached(addr) {
                return Ok((conn, false));
            }
            match dialing.get(&addr) {
                Some(outcome) => outcome.clone(),
                None => {
                    let endpoint = shared.endpoint.locked().clone().ok_or_else(|| {
                        PeerError::Unreachable("this node is shut down".to_owned())
                    })?;
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    dialing.insert(addr, rx.clone());
                    tokio::spawn(shared.clone().dial(endpoint, addr, tx));
                    rx
                }
            }
        };
        let result = outcome
            .wait_for(Option::is_some)
            .await
            .map(|result| result.clone());
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                // The dial task ended without an outcome (the runtime is shutting down, or it
                // panicked): its entry must not answer every later caller so.
                let mut dialing = shared.dialing.locked();
                if dialing.get(&addr).is_some_and(|o| o.same_channel(&outcome)) {
                    dialing.remove(&addr);
                }
                None
            }
        };
        match result {
            Some(Ok(conn)) => Ok((conn, false)),
            Some(Err(e)) => Err(e),
            None => Err(PeerError::Unreachable("the dial was abandoned".to_owned())),
        }
    }

    /// Closes and forgets the connection to `addr`, if any: calls waiting on it fail as lost,
    /// and the next call redials. `reason` goes to the peer. Used when the peer seems dead (or
    /// left the registry), since a silently dead peer's connection looks alive until the idle
    /// timeout.
    pub(crate) fn forget_addr(&self, addr: SocketAddr, reason: &[u8]) {
        let conn = self.shared.live.locked().remove(&addr);
        if let Some(conn) = conn {
            conn.dead.store(true, Ordering::SeqCst);
            conn.conn.close(0u32.into(), reason);
        }
    }

    /// Forgets a connection that failed, so the next call redials.
    pub(crate) fn forget(&self, conn: &Arc<PeerConn>) {
        let mut live = self.shared.live.locked();
        if live.get(&conn.addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            live.remove(&conn.addr);
        }
    }

    /// Closes every connection this node dialed; no new ones can be made.
    pub(crate) fn close_all(&self) {
        self.shared.endpoint.locked().take();
        let live = std::mem::take(&mut *self.shared.live.locked());
        for conn in live.values() {
            conn.conn.close(0u32.into(), b"node shutting down");
        }
    }
}

/// Dials `addr` and opens the connection's call stream, within `config.connect_timeout`.
async fn dial(
    endpoint: &quinn::Endpoint,
    config: &RpcConfig,
    addr: SocketAddr,
) -> Result<Arc<PeerConn>, PeerError> {
    let unreachable = |e: &dyn std::fmt::Display| PeerError::Unreachable(e.to_string());
    // A refused handshake is told apart from an unreachable peer: it says which
    // certificate is wrong, and callers give up on it at once instead of redialing.
    let failed = |e: &quinn::ConnectionError| match HandshakeRefusal::of(e) {
        Some(refusal) => PeerError::Refused(refusal.to_string()),
        None => unreachable(e),
    };
    let connecting = endpoint
        .connect(addr, CLUSTER_SERVER_NAME)
        .map_err(|e| unreachable(&e))?;
    let conn = tokio::time::timeout(config.connect_timeout, connecting)
        .await
        .map_err(|_| PeerError::Unreachable("connect timed out".to_owned()))?
        .map_err(|e| failed(&e))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
    let (mux, rx) = mpsc::unbounded_channel();
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let peer = Arc::new(PeerConn {
        addr,
        conn,
        mux,
        send: send.clone(),
        calls: Mutex::default(),
        read: Mutex::new(ReadSide::new(recv, config.max_frame_size)),
        reader_wanted: Notify::new(),
        next_id: AtomicU64::new(1),
        dead: AtomicBool::new(false),
        max_frame: config.max_frame_size,
    });
    tokio::spawn(write_loop(send, rx));
    tokio::spawn(read_loop(peer.clone()));
    Ok(peer)
}

/// One connection to a peer and its shared call stream.
///
/// A call alone on the connection writes its own request and reads its own reply, so that its
/// reply reaches it straight from quinn's connection driver: with the writer and reader tasks
/// in between, the chain of tasks one reply wakes is longer than Tokio runs on one worker (it
/// runs a woken task next at most three times in a row), and every lone call paid a hand-over
/// to the other worker. Calls that overlap go through the writer task (which batches) and the
/// reader task.
pub(crate) struct PeerConn {
    addr: SocketAddr,
    conn: quinn::Connection,
    mux: mpsc::UnboundedSender<Vec<u8>>,
    /// Shared with the writer task, which holds it while it writes a batch.
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    calls: Mutex<PendingCalls>,
    /// Taken only for the length of a poll, by the reader task or a lone caller.
    read: Mutex<ReadSide>,
    /// Wakes the reader task when calls overlap.
    reader_wanted: Notify,
    next_id: AtomicU64,
    dead: AtomicBool,
    max_frame: usize,
}

/// The calls waiting for a reply on a connection, and who reads the replies: the call itself
/// while it is alone, the reader task once calls overlap.
#[derive(Default)]
struct PendingCalls {
    waiting: IdMap<oneshot::Sender<ResponseBody>>,
    /// Whether the reader task reads; when not, at most one call waits, and it reads for
    /// itself.
    reader_active: bool,
}

/// Who reads the reply of a call just added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The call itself: it is alone on the connection.
    Itself,
    /// The reader task, which was idle: wake it.
    WakeTask,
    /// The reader task, which is reading already.
    Task,
}

impl PendingCalls {
    /// Registers call `id`, whose reply goes to `reply`.
    fn add(&mut self, id: u64, reply: oneshot::Sender<ResponseBody>) -> Reader {
        self.waiting.insert(id, reply);
        if self.reader_active {
            Reader::Task
        } else if self.waiting.len() == 1 {
            Reader::Itself
        } else {
            self.reader_active = true;
            Reader::WakeTask
        }
    }

    /// Takes the reply channel of call `id`, if it still waits.
    fn take(&mut self, id: u64) -> Option<oneshot::Sender<ResponseBody>> {
        self.waiting.remove(&id)
    }

    /// Whether the reader task goes on reading: once no call waits it stops, and the next call
    /// alone reads for itself.
    fn reader_goes_on(&mut self) -> bool {
        if self.waiting.is_empty() {
            self.reader_active = false;
        }
        self.reader_active
    }

    /// The connection ended: every waiting call is dropped, which tells it so.
    fn close(&mut self) {
        self.waiting.clear();
        self.reader_active = false;
    }
}

/// What became of a frame a lone call tried to write itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectWrite {
    /// It went (or its rest is being finished by a task holding the stream).
    Written,
    /// The stream was busy: the writer task takes the frame.
    ForWriter,
    /// The stream is broken: the call fails as not sent.
    Broken,
}

/// The read half of the call stream, and who polls it.
struct ReadSide {
    recv: quinn::RecvStream,
    frames: FrameBuf,
    /// The call whose task the stream wakes next (it polled last), or `None` for the reader task.
    last_poller: Option<u64>,
    /// The reader task's waker, for a lone caller that leaves as the last poller while other
    /// calls wait.
    reader_waker: Option<Waker>,
    /// The lone call that may read the stream for itself: the last call that started alone.
    /// An older lone call that is still polled (its reply was handed to it by the reader task,
    /// but it has not seen it yet) must not poll the stream any more; see [`LoneRead::poll`].
    owner: Option<u64>,
}

impl ReadSide {
    fn new(recv: quinn::RecvStream, limit: usize) -> Self {
        Self {
            recv,
            frames: FrameBuf::new(limit, BATCH),
            last_poller: None,
            reader_waker: None,
            owner: None,
        }
    }

    /// The next frame, polled by the reader task (`poller` is `None`) or by the lone call
    /// `poller`.
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        poller: Option<u64>,
    ) -> Poll<Result<Incoming, ReadError>> {
        let frame = self.frames.poll_frame(cx, &mut self.recv);
        if frame.is_pending() {
            self.last_poller = poller;
            if poller.is_none() {
                self.reader_waker = Some(cx.waker().clone());
            }
        }
        frame
    }
}

impl PeerConn {
    /// Checked on every call, so it reads only our own flag: `close_reason` would take the
    /// connection's lock, which the connection's driver contends for. The reader sets the flag
    /// as soon as the connection or its call stream ends, and [`Peers::forget_addr`] when it
    /// closes the connection, so that clients that keep this connection stop using it at once.
    pub(crate) fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    /// Waits until the connection is closed and this side has marked it dead.
    #[cfg(test)]
    pub(crate) async fn until_dead(&self) {
        self.conn.closed().await;
        // The reader task marks it on the same event; let it run.
        while self.is_alive() {
            tokio::task::yield_now().await;
        }
    }

    /// Who polled the call stream last: `Some(id)` for a lone call, `None` for the reader
    /// task (or nobody yet).
    #[cfg(test)]
    fn last_poller(&self) -> Option<u64> {
        self.read.locked().last_poller
    }

    /// `error`, or [`PeerError::Refused`] if the peer closed the connection because it refused
    /// this node's certificate. A dialing client finishes its side of the handshake before the
    /// server has checked the client's certificate, so that refusal ends the first call on the
    /// connection rather than the dial; the server never accepted the connection, so the call
    /// did not run.
    pub(crate) fn refused_or(&self, error: PeerError) -> PeerError {
        match self
            .conn
            .close_reason()
            .as_ref()
            .and_then(HandshakeRefusal::of)
        {
            Some(refusal) => PeerError::Refused(refusal.to_string()),
            None => error,
        }
    }

    /// Whether call `id` still waits for its reply, and whether the reader task reads.
    #[cfg(test)]
    fn waits(&self, id: u64) -> (bool, bool) {
        let calls = self.calls.locked();
        (calls.waiting.contains_key(&id), calls.reader_active)
    }

    /// A fresh request id for this connection.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request frame for call `id` and waits for its response body. Dropping the
    /// returned future cancels the call on the server.
    pub(crate) async fn call(
        self: &Arc<Self>,
        id: u64,
        frame: Vec<u8>,
        large: bool,
    ) -> Result<ResponseBody, PeerError> {
        let mut guard = CancelOnDrop {
            conn: self,
            id,
            armed: true,
        };
        let result = if large {
            self.call_on_own_stream(id, frame).await
        } else {
            self.call_on_shared_stream(id, frame).await
        };
        // Completed one way or another: nothing left to cancel.
        guard.armed = false;
        result
    }

    async fn call_on_shared_stream(
        &self,
        id: u64,
        frame: Vec<u8>,
    ) -> Result<ResponseBody, PeerError> {
        let (tx, mut rx) = oneshot::channel();
        let lone = {
            let mut calls = self.calls.locked();
            match calls.add(id, tx) {
                Reader::Itself => {
                    // Taken in the same step that finds the call alone (locks are always
                    // taken calls first, then read), so that from here every poll of an older
                    // lone call is refused (see [`LoneRead::poll`]).
                    self.read.locked().owner = Some(id);
                    true
                }
                Reader::WakeTask => {
                    self.reader_wanted.notify_one();
                    false
                }
                Reader::Task => false,
            }
        };
        // `shut` marks the connection dead before it drains `pending`; checking after our
        // insert means we either see the mark or our entry is drained.
        let sent = !self.dead.load(Ordering::SeqCst)
            && match lone.then(|| self.write_directly(&frame)) {
                Some(DirectWrite::Written) => true,
                Some(DirectWrite::Broken) => false,
                Some(DirectWrite::ForWriter) | None => self.mux.send(frame).is_ok(),
            };
        if !sent {
            self.remove_pending(id);
            return Err(PeerError::Unreachable("connection closed".to_owned()));
        }
        if lone {
            let mut reading = LoneRead { conn: self, id };
            std::future::poll_fn(|cx| reading.poll(cx, &mut rx)).await
        } else {
            rx.await
                .map_err(|_| PeerError::Lost(self.close_description()))
        }
    }

    /// Writes `frame` from the caller's task when the stream is free. A frame quinn takes only
    /// part of (flow control) is finished by a task that holds the stream, so no other frame
    /// can come between its parts.
    fn write_directly(&self, frame: &[u8]) -> DirectWrite {
        let Ok(mut send) = self.send.clone().try_lock_owned() else {
            return DirectWrite::ForWriter;
        };
        // quinn's `write` is cancel-safe: when it is not ready, nothing was written.
        match send.write(frame).now_or_never() {
            None => DirectWrite::ForWriter,
            Some(Err(_)) => DirectWrite::Broken,
            Some(Ok(n)) if n == frame.len() => DirectWrite::Written,
            Some(Ok(n)) => {
                let rest = frame[n..].to_vec();
                tokio::spawn(async move {
                    let _ = send.write_all(&rest).await;
                });
                DirectWrite::Written
            }
        }
    }

    /// Hands a response to the call waiting on `id`, if it still waits.
    fn deliver(&self, id: u64, body: ResponseBody) {
        let waiter = self.calls.locked().take(id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(body);
        }
    }

    /// The connection or its call stream ended: every waiting call fails as lost.
    fn shut(&self) {
        self.dead.store(true, Ordering::SeqCst);
        // Dropping the senders wakes every waiting caller with "connection lost".
        self.calls.locked().close();
    }

    /// What one poll of the stream gave: a response to deliver (its call's id and body), or
    /// `None` when the stream is done for (ended, broken, or carrying something that is not a
    /// response).
    fn response(&self, frame: Result<Incoming, ReadError>) -> Option<(u64, ResponseBody)> {
        match frame {
            Ok(Incoming::Frame(h, body)) if h.kind == FrameKind::Response => Some((h.id, body)),
            Ok(Incoming::Oversized {
                kind: FrameKind::Response,
                id,
                body_len,
                limit,
            }) => Some((id, too_large_reply(body_len, limit))),
            Ok(Incoming::End) => None,
            Ok(_) => {
                tracing::debug!(peer = %self.addr, "unexpected frame on a call stream");
                None
            }
            Err(e) => {
                tracing::debug!(peer = %self.addr, error = %e, "call stream failed");
                None
            }
        }
    }

    /// The reader task's work while calls overlap: reads and delivers until no call waits
    /// (`Ready(true)`) or the stream is done for (`Ready(false)`).
    fn poll_reader(&self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            {
                if !self.calls.locked().reader_goes_on() {
                    // Idle, the reader wants no wake from the stream: with its waker kept,
                    // every lone call that polled last would wake it for nothing, and a
                    // second wake in a row hands a task to the other worker.
                    self.read.locked().reader_waker = None;
                    return Poll::Ready(true);
                }
            }
            let frame = ready!(self.read.locked().poll_frame(cx, None));
            match self.response(frame) {
                Some((id, body)) => self.deliver(id, body),
                None => return Poll::Ready(false),
            }
        }
    }

    async fn call_on_own_stream(&self, id: u64, frame: Vec<u8>) -> Result<ResponseBody, PeerError> {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| PeerError::Unreachable(e.to_string()))?;
        let lost = |e: &dyn std::fmt::Display| PeerError::Lost(e.to_string());
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        let _ = send.finish();
        let mut recv = recv;
        let mut frames = FrameBuf::new(self.max_frame, BATCH);
        match frames.read_frame(&mut recv).await {
            Ok(Incoming::Frame(h, body)) if h.kind == FrameKind::Response && h.id == id => Ok(body),
            Ok(Incoming::Oversized { body_len, .. }) => {
                Ok(too_large_reply(body_len, self.max_frame))
            }
            Ok(_) => Err(PeerError::Lost(
                "stream ended without a response".to_owned(),
            )),
            Err(e) => Err(lost(&e)),
        }
    }

    fn remove_pending(&self, id: u64) {
        self.calls.locked().take(id);
    }

    fn close_description(&self) -> String {
        self.conn
            .close_reason()
            .map_or_else(|| "stream closed".to_owned(), |r| r.to_string())
    }
}

/// A lone call reading its own reply; when it goes (answered or dropped) as the stream's last
/// poller while other calls wait, it wakes the reader task, which the stream would not wake.
struct LoneRead<'a> {
    conn: &'a PeerConn,
    id: u64,
}

impl LoneRead<'_> {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut oneshot::Receiver<ResponseBody>,
    ) -> Poll<Result<ResponseBody, PeerError>> {
        let conn = self.conn;
        loop {
            // Another poller (the reader task, once calls overlap) may have read our reply.
            if let Poll::Ready(reply) = Pin::new(&mut *rx).poll(cx) {
                return Poll::Ready(reply.map_err(|_| PeerError::Lost(conn.close_description())));
            }
            let frame = {
                let mut read = conn.read.locked();
                if read.owner != Some(self.id) {
                    // A newer call started alone, so ours is no longer waiting: the reader
                    // task read our reply and handed it over, and the oneshot said `Pending`
                    // only because Tokio's budget for this task is spent (it wakes the task
                    // again), or the reply was handed over between the two polls. Polling the
                    // stream now would take quinn's one waker for the stream from the call
                    // that reads it: we would leave with it, and its reply would wake nobody.
                    return Poll::Pending;
                }
                ready!(read.poll_frame(cx, Some(self.id)))
            };
            match conn.response(frame) {
                Some((id, body)) if id == self.id => {
                    // Closed first, dropping our sender does not wake this very task: a task
                    // woken while it runs is queued behind the others and wakes the other
                    // worker to take it.
                    rx.close();
                    conn.remove_pending(id);
                    return Poll::Ready(Ok(body));
                }
                Some((id, body)) => conn.deliver(id, body),
                None => {
                    conn.shut();
                    return Poll::Ready(Err(PeerError::Lost(conn.close_description())));
                }
            }
        }
    }
}

impl Drop for LoneRead<'_> {
    fn drop(&mut self) {
        let mut read = self.conn.read.locked();
        if read.owner == Some(self.id) {
            read.owner = None;
        }
        if read.last_poller == Some(self.id)
            && let Some(waker) = &read.reader_waker
        {
            waker.wake_by_ref();
        }
    }
}

/// Sends a cancel frame if the call is dropped before its response arrived.
struct CancelOnDrop<'a> {
    conn: &'a Arc<PeerConn>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.conn.remove_pending(self.id);
        let mut frame = Vec::with_capacity(wire::HEADER_LEN);
        wire::write_cancel(&mut frame, self.id);
        let _ = self.conn.mux.send(frame);
    }
}

fn too_large_reply(body_len: usize, limit: usize) -> ResponseBody {
    let mut frame = Vec::new();
    let message = format!("response of {body_len} bytes exceeds this caller's limit of {limit}");
    wire::write_response_message(&mut frame, 0, Status::TooLarge, &message);
    frame.split_off(wire::HEADER_LEN)
}

async fn write_loop(
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if send.lock().await.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = send.lock().await.finish();
}

/// Reads for the calls while they overlap; otherwise waits to be wanted, and marks the
/// connection dead as soon as it closes.
async fn read_loop(conn: Arc<PeerConn>) {
    loop {
        tokio::select! {
            () = conn.reader_wanted.notified() => {}
            _ = conn.conn.closed() => break,
        }
        if !std::future::poll_fn(|cx| conn.poll_reader(cx)).await {
            break;
        }
    }
    conn.shut();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::{Node, ServiceDef, ServiceError};

    /// A lone call that polls the stream after the reader task did (here a spurious poll, as a
    /// `select!` in the caller's code gives) is the stream's only registered reader. When it
    /// leaves with its reply, it must wake the reader task for the calls still waiting, or
    /// their replies are never read.
    #[tokio::test]
    async fn a_lone_call_leaving_as_the_last_poller_wakes_the_reader() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let gates = [Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0))];
        let mut service = ServiceDef::builder("gate", "1.0.0");
        for (method, gate) in ["a", "b"].into_iter().zip(gates.clone()) {
            service = service.method(method, move |_, ()| {
                let gate = gate.clone();
                async move {
                    let _pass = gate.acquire().await;
                    Ok::<(), ServiceError>(())
                }
            });
        }
        let server = Node::builder()
            .name("server")
            .development_credentials(dir.path())
            .service(service.build()?)
            .start()
            .await?;
        let caller = Node::builder()
            .name("caller")
            .development_credentials(dir.path())
            .start()
            .await?;
        let client = caller.client("gate").at(server.local_addr());
        let deadline = Duration::from_secs(10);
        // Dials the connection, so that call a's first poll is on the call stream.
        let _ = client.call::<(), (), ServiceError>("none", ()).await;

        let mut a = std::pin::pin!(client.call::<(), (), ServiceError>("a", ()));
        assert!(futures_util::poll!(&mut a).is_pending());
        let (conn, _) = caller
            .rpc()
            .peers
            .get(server.local_addr())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let a_id = conn.last_poller().expect("call a reads for itself");

        // Call b overlaps: the reader task takes over the stream...
        let b = tokio::spawn({
            let client = client.clone();
            async move { client.call::<(), (), ServiceError>("b", ()).await }
        });
        tokio::time::timeout(deadline, async {
            while conn.last_poller().is_some() {
                tokio::task::yield_now().await;
            }
        })
        .await?;
        // ...until call a polls again and is the stream's registered reader once more.
        assert!(futures_util::poll!(&mut a).is_pending());
        assert_eq!(conn.last_poller(), Some(a_id));

        gates[0].add_permits(1);
        tokio::time::timeout(deadline, a).await??;
        gates[1].add_permits(1);
        tokio::time::timeout(deadline, b).await???;

        caller.shutdown().await;
        server.shutdown().await;
        Ok(())
    }

    /// A lone call whose reply the reader task read for it (calls overlapped meanwhile), polled
    /// again before it sees that reply (here Tokio's budget for the task is spent, so its
    /// oneshot says `Pending`; on a multi-thread runtime the reader can also deliver between
    /// the two polls) must not poll the stream: a newer lone call reads it now, and quinn
    /// keeps one waker per stream. The old call left with the stream's waker, and the new
    /// call's reply woke nobody: it waited until its deadline.
    #[tokio::test]
    async fn a_lone_call_answered_by_the_reader_leaves_the_stream_to_the_next_lone_call()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let gates = [
            Arc::new(Semaphore::new(0)),
            Arc::new(Semaphore::new(0)),
            Arc::new(Semaphore::new(0)),
        ];
        let mut service = ServiceDef::builder("gate", "1.0.0");
        for (method, gate) in ["a", "b", "c"].into_iter().zip(gates.clone()) {
            service = service.method(method, move |_, ()| {
                let gate = gate.clone();
                async move {
                    let _pass = gate.acquire().await;
                    Ok::<(), ServiceError>(())
                }
            });
        }
        let server = Node::builder()
            .name("server")
            .development_credentials(dir.path())
            .service(service.build()?)
            .start()
            .await?;
        let caller = Node::builder()
            .name("caller")
            .development_credentials(dir.path())
            .start()
            .await?;
        let client = caller.client("gate").at(server.local_addr());
        let deadline = Duration::from_secs(10);
        let _ = client.call::<(), (), ServiceError>("none", ()).await;
        let (conn, _) = caller
            .rpc()
            .peers
            .get(server.local_addr())
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // Call a reads for itself, polled by this task.
        let mut a = std::pin::pin!(client.call::<(), (), ServiceError>("a", ()));
        assert!(futures_util::poll!(&mut a).is_pending());
        let a_id = conn.last_poller().expect("call a reads for itself");
        // Call b overlaps: the reader task reads, and hands a its reply.
        let b = tokio::spawn({
            let client = client.clone();
            async move { client.call::<(), (), ServiceError>("b", ()).await }
        });
        until("the reader reads", || conn.last_poller().is_none()).await?;
        gates[0].add_permits(1);
        until("a's reply is delivered", || !conn.waits(a_id).0).await?;
        gates[1].add_permits(1);
        tokio::time::timeout(deadline, b).await???;
        until("the reader is idle", || !conn.waits(a_id).1).await?;

        // Call c, in a task of its own, is alone and reads for itself.
        let c = tokio::spawn({
            let client = client.clone();
            async move { client.call::<(), (), ServiceError>("c", ()).await }
        });
        until("c reads", || {
            conn.last_poller().is_some_and(|id| id != a_id)
        })
        .await?;

        // Call a is polled once more with the task's budget spent, then finishes.
        std::future::poll_fn(|cx| {
            while let Poll::Ready(progress) = tokio::task::coop::poll_proceed(cx) {
                progress.made_progress();
            }
            assert!(a.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        tokio::time::timeout(deadline, &mut a).await??;

        gates[2].add_permits(1);
        tokio::time::timeout(deadline, c)
            .await
            .map_err(|_| anyhow::anyhow!("call c never saw its reply"))???;

        caller.shutdown().await;
        server.shutdown().await;
        Ok(())
    }

    /// Yields until `done`, for at most 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("timed out waiting until {what}"))
    }

    fn reply() -> oneshot::Sender<ResponseBody> {
        oneshot::channel().0
    }

    #[test]
    fn a_call_alone_reads_for_itself_and_the_next_wakes_the_reader_once() {
        let mut calls = PendingCalls::default();
        assert_eq!(calls.add(1, reply()), Reader::Itself);
        assert_eq!(calls.add(2, reply()), Reader::WakeTask);
        assert_eq!(calls.add(3, reply()), Reader::Task);
        // The reader reads while any call waits, and only then gives reading back.
        assert!(calls.take(1).is_some() && calls.take(3).is_some());
        assert!(calls.reader_goes_on());
        assert!(calls.take(2).is_some());
        assert!(!calls.reader_goes_on());
        assert_eq!(calls.add(4, reply()), Reader::Itself);
    }

    #[test]
    fn a_call_that_went_is_not_answered_twice() {
        let mut calls = PendingCalls::default();
        calls.add(7, reply());
        assert!(calls.take(7).is_some());
        assert!(calls.take(7).is_none());
    }

    #[test]
    fn a_closed_connection_drops_every_waiting_call_and_the_reader() {
        let mut calls = PendingCalls::default();
        let (tx, mut rx) = oneshot::channel();
        calls.add(1, tx);
        calls.add(2, reply());
        calls.close();
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "the waiting call was not told"
        );
        assert!(!calls.reader_goes_on());
        assert_eq!(calls.add(3, reply()), Reader::Itself);
    }
}
