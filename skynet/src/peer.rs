//! The calling side: one connection per peer, reused, and redialed when it is lost.
//!
//! Calls to a peer share one long-lived stream. Callers encode their request frame and queue
//! it; one writer task coalesces everything queued into a single write, and one reader task
//! hands each response to the caller waiting on its id. Requests of at least
//! [`RpcConfig::large_message`] bytes go on a stream of their own so they cannot delay small
//! calls queued behind them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::config::RpcConfig;
use crate::tls::CLUSTER_SERVER_NAME;
use crate::transport::{Incoming, read_frame};
use crate::wire::{self, FrameKind, Status};

const BATCH: usize = 64 << 10;

/// Hashes keys that are ours, request ids and the addresses of the peers this node dials:
/// sequential u64s need spreading across the table, not SipHash's protection against chosen
/// keys, and every call hashes one of each.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Mixes rather than replaces, so that keys made of several fields (an address) use
        // them all; a lone u64 from the zero state hashes to `n * K`.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by request id.
pub(crate) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A map keyed by peer address.
type AddrMap<V> = HashMap<SocketAddr, V, std::hash::BuildHasherDefault<IdHasher>>;

/// A response body: status, encoding, payload (see [`wire::parse_response`]).
pub(crate) type ResponseBody = Vec<u8>;

/// Why a request could not be completed at the connection level.
#[derive(Debug)]
pub(crate) enum PeerError {
    /// Not sent.
    Unreachable(String),
    /// Sent; the outcome is unknown.
    Lost(String),
}

/// All connections this node has dialed.
pub(crate) struct Peers {
    /// Taken at shutdown so the socket is released once the last connection is gone.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    config: RpcConfig,
    live: Mutex<AddrMap<Arc<PeerConn>>>,
    /// One dial at a time per address; concurrent callers wait for it instead of dialing too.
    dialing: Mutex<AddrMap<Arc<tokio::sync::Mutex<()>>>>,
}

impl Peers {
    pub(crate) fn new(endpoint: quinn::Endpoint, config: RpcConfig) -> Self {
        Self {
            endpoint: Mutex::new(Some(endpoint)),
            config,
            live: Mutex::default(),
            dialing: Mutex::default(),
        }
    }

    fn cached(&self, addr: SocketAddr) -> Option<Arc<PeerConn>> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(&addr).filter(|c| c.is_alive()).cloned()
    }

    /// Whether a live connection to `addr` exists (a call would not have to dial).
    pub(crate) fn is_connected(&self, addr: SocketAddr) -> bool {
        self.cached(addr).is_some()
    }

    /// The live connection to `addr`, dialing it if needed, and whether it was open already
    /// (a call that waited for a dial says nothing about the peer's latency).
    pub(crate) async fn get(&self, addr: SocketAddr) -> Result<(Arc<PeerConn>, bool), PeerError> {
        if let Some(conn) = self.cached(addr) {
            return Ok((conn, true));
        }
        let gate = self
            .dialing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(addr)
            .or_default()
            .clone();
        let _dialing = gate.lock().await;
        if let Some(conn) = self.cached(addr) {
            return Ok((conn, false));
        }
        let conn = self.dial(addr).await?;
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, conn.clone());
        Ok((conn, false))
    }

    /// Closes and forgets the connection to `addr`, if any: calls waiting on it fail as lost,
    /// and the next call redials. `reason` goes to the peer. Used when the peer seems dead (or
    /// left the registry), since a silently dead peer's connection looks alive until the idle
    /// timeout.
    pub(crate) fn forget_addr(&self, addr: SocketAddr, reason: &[u8]) {
        let conn = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&addr);
        if let Some(conn) = conn {
            conn.dead.store(true, Ordering::SeqCst);
            conn.conn.close(0u32.into(), reason);
        }
    }

    /// Forgets a connection that failed, so the next call redials.
    pub(crate) fn forget(&self, conn: &Arc<PeerConn>) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.get(&conn.addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            live.remove(&conn.addr);
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Arc<PeerConn>, PeerError> {
        let unreachable = |e: &dyn std::fmt::Display| PeerError::Unreachable(e.to_string());
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| PeerError::Unreachable("this node is shut down".to_owned()))?;
        let connecting = endpoint
            .connect(addr, CLUSTER_SERVER_NAME)
            .map_err(|e| unreachable(&e))?;
        let conn = tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| PeerError::Unreachable("connect timed out".to_owned()))?
            .map_err(|e| unreachable(&e))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| unreachable(&e))?;
        let (mux, rx) = mpsc::unbounded_channel();
        let peer = Arc::new(PeerConn {
            addr,
            conn,
            mux,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            max_frame: self.config.max_frame_size,
        });
        tokio::spawn(write_loop(send, rx));
        tokio::spawn(read_loop(recv, peer.clone()));
        Ok(peer)
    }

    /// Closes every connection this node dialed; no new ones can be made.
    pub(crate) fn close_all(&self) {
        self.endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in live.values() {
            conn.conn.close(0u32.into(), b"node shutting down");
        }
    }
}

/// One connection to a peer and its shared call stream.
pub(crate) struct PeerConn {
    addr: SocketAddr,
    conn: quinn::Connection,
    mux: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<IdMap<oneshot::Sender<ResponseBody>>>,
    next_id: AtomicU64,
    dead: AtomicBool,
    max_frame: usize,
}

impl PeerConn {
    /// Checked on every call, so it reads only our own flag: `close_reason` would take the
    /// connection's lock, which the connection's driver contends for. The reader sets the flag
    /// as soon as the connection or its call stream ends, and [`Peers::forget_addr`] when it
    /// closes the connection, so that clients that keep this connection stop using it at once.
    pub(crate) fn is_alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
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
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        // The reader marks the connection dead before it drains `pending`; checking after our
        // insert means we either see the mark or our entry is drained.
        if self.dead.load(Ordering::SeqCst) || self.mux.send(frame).is_err() {
            self.remove_pending(id);
            return Err(PeerError::Unreachable("connection closed".to_owned()));
        }
        rx.await
            .map_err(|_| PeerError::Lost(self.close_description()))
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
        match read_frame(&mut recv, self.max_frame).await {
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
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn close_description(&self) -> String {
        self.conn
            .close_reason()
            .map_or_else(|| "stream closed".to_owned(), |r| r.to_string())
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

async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
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
        if send.write_all(&batch).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

async fn read_loop(recv: quinn::RecvStream, conn: Arc<PeerConn>) {
    let mut reader = tokio::io::BufReader::with_capacity(BATCH, recv);
    loop {
        let (id, body) = match read_frame(&mut reader, conn.max_frame).await {
            Ok(Incoming::Frame(h, body)) if h.kind == FrameKind::Response => (h.id, body),
            Ok(Incoming::Oversized {
                kind: FrameKind::Response,
                id,
                body_len,
                limit,
            }) => (id, too_large_reply(body_len, limit)),
            Ok(Incoming::End) => break,
            Ok(_) => {
                tracing::debug!(peer = %conn.addr, "unexpected frame on a call stream");
                break;
            }
            Err(e) => {
                tracing::debug!(peer = %conn.addr, error = %e, "call stream failed");
                break;
            }
        };
        let waiter = conn
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(body);
        }
    }
    conn.dead.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiting caller with "connection lost".
    conn.pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    #[test]
    fn addresses_hash_by_every_field() {
        let hasher = std::hash::BuildHasherDefault::<IdHasher>::default();
        let hash = |addr: &str| hasher.hash_one(addr.parse::<SocketAddr>().expect("an address"));
        let base = hash("127.0.0.1:5000");
        for other in ["127.0.0.1:5001", "127.0.0.2:5000", "[::1]:5000"] {
            assert_ne!(base, hash(other), "{other}");
        }
        // A lone id still spreads: consecutive ids land far apart.
        let (a, b) = (hasher.hash_one(1u64), hasher.hash_one(2u64));
        assert!((a ^ b).count_ones() > 8, "{a:x} {b:x}");
    }
}
