//! The connection slots of one TCP listener (the HTTP and TCP initiators, the admin port):
//! how many connections it serves, how many of them one client address may hold, and how long
//! a connection may sit in each phase of its life before the listener closes it.
//!
//! Every accepted connection takes a slot in its listener's [`Table`] and is in one phase:
//!
//! - **Idle**: waiting for a request; nothing of one has arrived (a new connection, a
//!   keep-alive connection between requests, a TCP connection with nothing in flight).
//! - **Head**: part of a request head (HTTP) or of a line (TCP) has arrived, not all of it.
//! - **Body**: the handler is reading an HTTP request body.
//! - **Busy**: a request is being handled or its answer written.
//!
//! Phases change as bytes move: [`Tracked`] wraps the socket and sees every read and write
//! (the first byte read while Idle starts a Head; in line mode a newline ends a line); the
//! HTTP server says when a handler starts, reads the body and returns, and the TCP initiator
//! when it owes an answer and when it has written one. One sweeper per
//! listener (a tick in the accept loop, not a task per connection: the table is already there
//! and one scan of a thousand entries costs microseconds) closes every connection over its
//! phase's deadline, whose writes have made no progress for too long, or that has outlived its
//! lifetime.
//!
//! When every slot is taken, a new connection does not simply bounce: the listener closes the
//! Idle connection that has waited longest, else the Head or Body connection that has been in
//! its phase longest (it is slower than anyone who may be waiting), and admits the new one.
//! A Busy connection is never closed to make room: its request is being served. A client
//! address that already holds its share of the slots is closed at once, so one address cannot
//! keep the others out.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::sync::Locked as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection past its lifetime may take to finish what it is doing (the response
/// being written, the answers of lines already read) before it is closed anyway.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// The longest any limit may be: long enough for anything sensible, short enough that adding
/// it to an instant cannot overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The limits of one listener: connection slots and the deadlines that keep slow or silent
/// clients from holding them.
///
/// Each deadline ends the connection (the socket is closed, nothing more is answered on it);
/// [`ListenerLimits::max_lifetime`] instead lets the request in progress finish (for at most a
/// second) first. [`Default`] holds the HTTP initiator's values; [`TcpConfig`] and the admin
/// port start from their own (see their docs).
///
/// [`TcpConfig`]: crate::initiator::tcp::TcpConfig
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once. When all are taken, a new connection closes the one that
    /// has been idle longest, else the one that has been receiving a head or body longest; if
    /// every connection is busy serving a request, the new one is closed. Default 1,024.
    pub max_connections: usize,
    /// Connections one client IP address may hold at once; more from it are closed on accept.
    /// `None`: a quarter of `max_connections`, at least 1. Default `None`.
    pub max_per_address: Option<usize>,
    /// How long a request head (HTTP) or a request line (TCP) may take to arrive, from its
    /// first byte to its end. Default 10 s.
    pub head_timeout: Duration,
    /// How long a connection may wait with nothing in flight: before its first request,
    /// between keep-alive requests, between TCP lines. Default 60 s.
    pub idle_timeout: Duration,
    /// How long an HTTP request body may take to arrive, in all. Default 60 s.
    pub body_timeout: Duration,
    /// From `body_grace` into a body on, the body must have arrived at `min_body_rate` bytes a
    /// second on average, or the connection is closed. Default 5 s.
    pub body_grace: Duration,
    /// The slowest an HTTP body may arrive after `body_grace`, in bytes a second; 0 turns the
    /// check off. Default 1,024.
    pub min_body_rate: u64,
    /// How long a write may make no progress (a client that does not read its answers, or
    /// half-closed and went away) before the connection is closed. Default 30 s.
    pub write_timeout: Duration,
    /// How long a connection may stay open, however it behaves: then it stops taking requests,
    /// finishes the one in progress (for at most a second) and is closed. Default 300 s.
    pub max_lifetime: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_per_address: None,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_grace: Duration::from_secs(5),
            min_body_rate: 1024,
            write_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(300),
        }
    }
}

/// Why a [`ListenerLimits`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `max_connections` is 0.
    #[error("max_connections must be at least 1")]
    NoConnections,
    /// `max_per_address` is `Some(0)`.
    #[error("max_per_address must be at least 1")]
    NoShare,
    /// A duration is zero or longer than a year.
    #[error("{name} must be longer than zero and at most a year, not {value:?}")]
    Duration {
        /// The field.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
}

impl ListenerLimits {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        if self.max_per_address == Some(0) {
            return Err(LimitsError::NoShare);
        }
        for (name, value) in [
            ("head_timeout", self.head_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_timeout", self.body_timeout),
            ("body_grace", self.body_grace),
            ("write_timeout", self.write_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(LimitsError::Duration { name, value });
            }
        }
        Ok(())
    }

    /// Connections one address may hold: `max_per_address`, else a quarter of the slots (at
    /// least one). A share above `max_connections` is no different from `max_connections`.
    pub fn per_address(&self) -> usize {
        self.max_per_address
            .unwrap_or(self.max_connections / 4)
            .max(1)
    }

    /// How often the sweeper looks: a quarter of the shortest deadline, so that a connection
    /// is closed at most a quarter late, between 10 ms and half a second.
    fn sweep_period(&self) -> Duration {
        let shortest = [
            self.head_timeout,
            self.idle_timeout,
            self.body_timeout,
            self.body_grace,
            self.write_timeout,
            self.max_lifetime,
        ]
        .into_iter()
        .min()
        .unwrap_or(MAX_TIMEOUT);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// How a connection's bytes map to phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// HTTP/1.1 through hyper: the server reports handler start and end, and the body.
    Http,
    /// Newline-delimited requests: bytes after the last newline read are a line begun (Head);
    /// the server reports the answers it owes (Busy).
    Lines,
}

/// A connection's phase (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    Head,
    Body,
    Busy,
}

/// What the sweeper does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Past its lifetime: stop taking requests.
    Drain,
    /// Close it now, for this reason.
    Close(&'static str),
}

/// The moving part of a slot: its phase and what the deadlines are measured from.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// When the phase began; for a Head, when its first byte arrived.
    since: Instant,
    /// Bytes read since a Body began.
    received: u64,
    /// Since when a write has been waiting for the client to read.
    write_blocked: Option<Instant>,
    /// Handlers running (HTTP): a flush with none running means the answer is out.
    handlers: u32,
    /// Line mode: when the line that has begun but not ended got its first byte.
    partial_line: Option<Instant>,
    /// Line mode: answers owed (requests taken, answers not yet written).
    owed: u64,
}

impl State {
    fn new(now: Instant) -> Self {
        Self {
            phase: Phase::Idle,
            since: now,
            received: 0,
            write_blocked: None,
            handlers: 0,
            partial_line: None,
            owed: 0,
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        if self.phase != phase {
            self.phase = phase;
            self.since = now;
            self.received = 0;
        }
    }

    /// Line mode: a line begun is a Head (timed from its first byte), else answers owed make
    /// the connection Busy, else it is Idle.
    fn settle_lines(&mut self, now: Instant) {
        if let Some(first_byte) = self.partial_line {
            self.phase = Phase::Head;
            self.since = first_byte;
        } else if self.owed > 0 {
            self.enter(Phase::Busy, now);
        } else {
            self.enter(Phase::Idle, now);
        }
    }

    fn verdict(&self, limits: &ListenerLimits, opened: Instant, now: Instant) -> Verdict {
        let age = now.saturating_duration_since(opened);
        if age > limits.max_lifetime.saturating_add(DRAIN_GRACE) {
            return Verdict::Close("its lifetime is over");
        }
        if let Some(blocked) = self.write_blocked
            && now.saturating_duration_since(blocked) > limits.write_timeout
        {
            return Verdict::Close("the client has not read its answer");
        }
        let in_phase = now.saturating_duration_since(self.since);
        match self.phase {
            Phase::Idle if in_phase > limits.idle_timeout => {
                return Verdict::Close("idle for too long");
            }
            Phase::Head if in_phase > limits.head_timeout => {
                return Verdict::Close("the request head took too long");
            }
            Phase::Body if in_phase > limits.body_timeout => {
                return Verdict::Close("the request body took too long");
            }
            Phase::Body
                if limits.min_body_rate > 0
                    && in_phase > limits.body_grace
                    && (self.received as f64)
                        < limits.min_body_rate as f64 * in_phase.as_secs_f64() =>
            {
                return Verdict::Close("the request body is arriving too slowly");
            }
            _ => {}
        }
        if age > limits.max_lifetime {
            Verdict::Drain
        } else {
            Verdict::Keep
        }
    }
}

/// One connection's slot, shared by the table, the connection's task, its socket wrapper(s)
/// and (HTTP) its requests.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    peer: SocketAddr,
    mode: Mode,
    opened: Instant,
    /// Cancelled to close the connection at once.
    close: CancellationToken,
    /// Cancelled to make the connection stop taking requests and close when done.
    drain: CancellationToken,
    state: Mutex<State>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields, valid after any panic.
        self.state.locked()
    }

    /// Wraps the connection's socket (or one half of it) so that its reads and writes move
    /// the phase.
    pub(crate) fn track<T>(self: &Arc<Self>, io: T) -> Tracked<T> {
        Tracked {
            io,
            slot: self.clone(),
        }
    }

    /// Completes when the connection has outlived its lifetime and should stop taking
    /// requests.
    pub(crate) fn drained(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.drain.clone().cancelled_owned()
    }

    /// HTTP: a handler starts (its request's head is complete); the returned guard marks its
    /// end.
    pub(crate) fn request(self: &Arc<Self>) -> RequestGuard {
        let mut state = self.state();
        state.handlers += 1;
        state.enter(Phase::Busy, Instant::now());
        RequestGuard(self.clone())
    }

    /// HTTP: the handler reads the request body until the returned guard is dropped.
    pub(crate) fn body(self: &Arc<Self>) -> BodyGuard {
        self.state().enter(Phase::Body, Instant::now());
        BodyGuard(self.clone())
    }

    fn read(&self, bytes: &[u8]) {
        let now = Instant::now();
        let mut state = self.state();
        match self.mode {
            Mode::Http => match state.phase {
                _ if bytes.is_empty() => {}
                Phase::Idle => state.enter(Phase::Head, now),
                Phase::Body => state.received += bytes.len() as u64,
                Phase::Head | Phase::Busy => {}
            },
            Mode::Lines => {
                match bytes.iter().rposition(|&b| b == b'\n') {
                    // End of input: a line begun is over (the reader hands it on as a request).
                    _ if bytes.is_empty() => state.partial_line = None,
                    // A newline ends the line begun; bytes after the last one begin the next.
                    Some(last) if last + 1 == bytes.len() => state.partial_line = None,
                    Some(_) => state.partial_line = Some(now),
                    None => {
                        state.partial_line.get_or_insert(now);
                    }
                }
                state.settle_lines(now);
            }
        }
    }

    /// Lines: a request was taken; its answer is owed until [`Slot::answer_written`].
    pub(crate) fn answer_owed(&self) {
        let mut state = self.state();
        state.owed += 1;
        state.settle_lines(Instant::now());
    }

    /// Lines: an owed answer was written.
    pub(crate) fn answer_written(&self) {
        let mut state = self.state();
        state.owed = state.owed.saturating_sub(1);
        state.settle_lines(Instant::now());
    }

    fn wrote(&self) {
        let mut state = self.state();
        state.write_blocked = None;
        // A write with no handler running begins an answer hyper writes on its own (one it
        // could not hand to a handler, e.g. 400 for a bad head, after which it closes).
        if self.mode == Mode::Http && state.phase == Phase::Idle && state.handlers == 0 {
            state.enter(Phase::Busy, Instant::now());
        }
    }

    fn write_pending(&self) {
        self.state().write_blocked.get_or_insert_with(Instant::now);
    }

    /// HTTP: hyper flushes once an answer is out; with no handler running the connection
    /// is Idle again.
    fn flushed(&self) {
        if self.mode == Mode::Http {
            let mut state = self.state();
            if state.phase == Phase::Busy && state.handlers == 0 {
                state.enter(Phase::Idle, Instant::now());
            }
        }
    }
}

/// Marks the end of a handler ([`Slot::request`]).
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Slot>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.handlers = state.handlers.saturating_sub(1);
    }
}

/// Marks the end of a request body ([`Slot::body`]).
#[derive(Debug)]
pub(crate) struct BodyGuard(Arc<Slot>);

impl Drop for BodyGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if state.phase == Phase::Body {
            state.enter(Phase::Busy, Instant::now());
        }
    }
}

/// A socket (or half of one) whose reads and writes move its slot's phase.
#[derive(Debug)]
pub(crate) struct Tracked<T> {
    io: T,
    slot: Arc<Slot>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.slot.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        match &polled {
            Poll::Ready(Ok(_)) => this.slot.wrote(),
            Poll::Pending => this.slot.write_pending(),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        match &polled {
            Poll::Ready(Ok(_)) => this.slot.wrote(),
            Poll::Pending => this.slot.write_pending(),
            Poll::Ready(Err(_)) => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.slot.flushed();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The slots of one listener.
#[derive(Debug)]
pub(crate) struct Table {
    limits: ListenerLimits,
    mode: Mode,
    /// What the listener is, for logs.
    what: &'static str,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<u64, Arc<Slot>>,
    per_address: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.slots.remove(&id)?;
        let ip = slot.peer.ip();
        if let Some(count) = self.per_address.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&ip);
            }
        }
        Some(slot)
    }

    /// The connection to close to make room: the Idle one that has waited longest, else the
    /// Head or Body one that has been in its phase longest. Never a Busy one.
    fn victim(&self) -> Option<(u64, Phase)> {
        let oldest = |wanted: &dyn Fn(Phase) -> bool| {
            self.slots
                .values()
                .filter_map(|slot| {
                    let state = slot.state();
                    wanted(state.phase).then_some((state.since, slot.id, state.phase))
                })
                .min_by_key(|&(since, id, _)| (since, id))
        };
        oldest(&|phase| phase == Phase::Idle)
            .or_else(|| oldest(&|phase| matches!(phase, Phase::Head | Phase::Body)))
            .map(|(_, id, phase)| (id, phase))
    }
}

/// A connection's hold on its slot: dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Admitted {
    table: Arc<Table>,
    slot: Arc<Slot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table.inner.locked().remove(self.slot.id);
    }
}

impl Table {
    /// The slots of a listener with `limits` (already validated), for logs called `what`.
    pub(crate) fn new(limits: ListenerLimits, mode: Mode, what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            limits,
            mode,
            what,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Gives a new connection from `peer` a slot, closing another connection to make room if
    /// needed; `None` if it must be closed instead.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr, now: Instant) -> Option<Admitted> {
        let mut inner = self.inner.locked();
        let held = inner.per_address.get(&peer.ip()).copied().unwrap_or(0);
        if held >= self.limits.per_address() {
            tracing::debug!(
                listener = self.what,
                %peer,
                held,
                "closing a new connection: its address holds its share of the slots"
            );
            return None;
        }
        if inner.slots.len() >= self.limits.max_connections {
            let Some((id, phase)) = inner.victim() else {
                tracing::debug!(
                    listener = self.what,
                    %peer,
                    "closing a new connection: every slot is serving a request"
                );
                return None;
            };
            if let Some(victim) = inner.remove(id) {
                tracing::debug!(
                    listener = self.what,
                    peer = %victim.peer,
                    ?phase,
                    "every slot is taken; closing the slowest connection to make room"
                );
                victim.close.cancel();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let slot = Arc::new(Slot {
            id,
            peer,
            mode: self.mode,
            opened: now,
            close: CancellationToken::new(),
            drain: CancellationToken::new(),
            state: Mutex::new(State::new(now)),
        });
        inner.slots.insert(id, slot.clone());
        *inner.per_address.entry(peer.ip()).or_default() += 1;
        Some(Admitted {
            table: self.clone(),
            slot,
        })
    }

    /// Closes every connection over a deadline and drains those past their lifetime.
    fn sweep(&self, now: Instant) {
        let mut inner = self.inner.locked();
        let mut closing = Vec::new();
        for slot in inner.slots.values() {
            match slot.state().verdict(&self.limits, slot.opened, now) {
                Verdict::Keep => {}
                Verdict::Drain => slot.drain.cancel(),
                Verdict::Close(why) => closing.push((slot.id, why)),
            }
        }
        for (id, why) in closing {
            if let Some(slot) = inner.remove(id) {
                tracing::debug!(listener = self.what, peer = %slot.peer, why, "closing a connection");
                slot.close.cancel();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.locked().slots.len()
    }
}

/// Accepts connections until `stop`, each into a slot of `table` and a task of `tasks`
/// running `serve`; sweeps the table as it goes. A connection whose slot is closed (deadline,
/// eviction) has its task dropped, which closes the socket.
pub(crate) async fn accept_connections<S, Fut>(
    listener: TcpListener,
    table: Arc<Table>,
    stop: CancellationToken,
    tasks: TaskTracker,
    serve: S,
) where
    S: Fn(TcpStream, Arc<Slot>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut sweep = tokio::time::interval(table.limits.sweep_period());
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            _ = sweep.tick() => {
                table.sweep(Instant::now());
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, typically: pause rather than spin on the error.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        // Dropping a refused stream closes it.
        let Some(admitted) = table.admit(peer, Instant::now()) else {
            continue;
        };
        let slot = admitted.slot.clone();
        let connection = serve(stream, slot.clone());
        tasks.spawn(async move {
            let _admitted = admitted;
            tokio::select! {
                () = connection => {}
                () = slot.close.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: 4,
            max_per_address: Some(2),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_grace: Duration::from_secs(5),
            min_body_rate: 100,
            write_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(300),
        }
    }

    fn peer(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    #[test]
    fn limits_are_validated() {
        assert_eq!(ListenerLimits::default().validate(), Ok(()));
        assert_eq!(ListenerLimits::default().per_address(), 256);
        let bad = ListenerLimits {
            max_connections: 0,
            ..limits()
        };
        assert_eq!(bad.validate(), Err(LimitsError::NoConnections));
        let bad = ListenerLimits {
            max_per_address: Some(0),
            ..limits()
        };
        assert_eq!(bad.validate(), Err(LimitsError::NoShare));
        let bad = ListenerLimits {
            idle_timeout: Duration::ZERO,
            ..limits()
        };
        assert!(matches!(
            bad.validate(),
            Err(LimitsError::Duration {
                name: "idle_timeout",
                ..
            })
        ));
        let bad = ListenerLimits {
            max_lifetime: Duration::MAX,
            ..limits()
        };
        assert!(bad.validate().is_err());
        let one = ListenerLimits {
            max_connections: 3,
            max_per_address: None,
            ..limits()
        };
        assert_eq!(one.per_address(), 1);
    }

    #[tokio::test]
    async fn a_full_table_closes_the_longest_idle_then_the_slowest_sender_never_a_busy_one() {
        let table = Table::new(limits(), Mode::Http, "test");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let a = table.admit(peer(2, 1), at(0)).expect("a");
        let b = table.admit(peer(2, 2), at(1)).expect("b");
        let c = table.admit(peer(3, 1), at(2)).expect("c");
        let d = table.admit(peer(3, 2), at(3)).expect("d");
        // The share of one address is full, whatever the free slots.
        assert!(table.admit(peer(2, 3), at(4)).is_none());
        {
            let set = |slot: &Admitted, phase, since| {
                let mut state = slot.slot.state();
                state.phase = phase;
                state.since = since;
            };
            set(&a, Phase::Busy, at(0));
            set(&b, Phase::Head, at(1));
            set(&c, Phase::Body, at(2));
            set(&d, Phase::Idle, at(3));
        }
        // Full: the idle one goes first, though it is the newest.
        let e = table.admit(peer(4, 1), at(5)).expect("e");
        assert!(d.slot.close.is_cancelled());
        e.slot.state().phase = Phase::Busy;
        // Then the one that has been receiving longest.
        let f = table.admit(peer(4, 2), at(6)).expect("f");
        assert!(b.slot.close.is_cancelled() && !c.slot.close.is_cancelled());
        f.slot.state().phase = Phase::Busy;
        let g = table.admit(peer(5, 1), at(7)).expect("g");
        assert!(c.slot.close.is_cancelled());
        g.slot.state().phase = Phase::Busy;
        // Everyone is busy: the newcomer is refused and nobody is closed.
        assert!(table.admit(peer(5, 2), at(8)).is_none());
        assert!(!a.slot.close.is_cancelled());
        assert_eq!(table.len(), 4);
        // Dropping a closed connection's hold does not free someone else's slot.
        drop((b, c, d));
        assert_eq!(table.len(), 4);
        drop(a);
        assert_eq!(table.len(), 3);
        assert!(table.admit(peer(5, 3), at(9)).is_some());
    }

    #[tokio::test]
    async fn each_phase_has_its_deadline() {
        let limits = limits();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut state = State::new(t0);
        assert_eq!(state.verdict(&limits, t0, at(60)), Verdict::Keep);
        assert!(matches!(
            state.verdict(&limits, t0, at(61)),
            Verdict::Close(_)
        ));
        state.enter(Phase::Head, at(0));
        assert_eq!(state.verdict(&limits, t0, at(10)), Verdict::Keep);
        assert!(matches!(
            state.verdict(&limits, t0, at(11)),
            Verdict::Close(_)
        ));
        // A body: any pace during the grace, then at least 100 bytes a second on average.
        state.enter(Phase::Body, at(0));
        assert_eq!(state.verdict(&limits, t0, at(5)), Verdict::Keep);
        assert!(matches!(
            state.verdict(&limits, t0, at(6)),
            Verdict::Close(_)
        ));
        state.received = 1000;
        assert_eq!(state.verdict(&limits, t0, at(10)), Verdict::Keep);
        assert!(matches!(
            state.verdict(&limits, t0, at(11)),
            Verdict::Close(_)
        ));
        state.received = 1 << 30;
        assert!(matches!(
            state.verdict(&limits, t0, at(61)),
            Verdict::Close(_)
        ));
        // Busy has no deadline of its own; a write that does not move has.
        state.enter(Phase::Busy, at(0));
        assert_eq!(state.verdict(&limits, t0, at(200)), Verdict::Keep);
        state.write_blocked = Some(at(200));
        assert_eq!(state.verdict(&limits, t0, at(230)), Verdict::Keep);
        assert!(matches!(
            state.verdict(&limits, t0, at(231)),
            Verdict::Close(_)
        ));
        state.write_blocked = None;
        // Past its lifetime a connection drains, and a second later it is closed.
        assert_eq!(state.verdict(&limits, t0, at(301)), Verdict::Drain);
        assert!(matches!(
            state.verdict(&limits, t0, at(302)),
            Verdict::Close(_)
        ));
    }

    #[tokio::test]
    async fn lines_move_the_phase() {
        let table = Table::new(limits(), Mode::Lines, "test");
        let admitted = table.admit(peer(2, 1), Instant::now()).expect("admitted");
        let slot = &admitted.slot;
        let phase = || slot.state().phase;
        assert_eq!(phase(), Phase::Idle);
        slot.read(b"{\"a\":");
        assert_eq!(phase(), Phase::Head);
        let first_byte = slot.state().since;
        slot.read(b"1");
        assert_eq!((phase(), slot.state().since), (Phase::Head, first_byte));
        // One line ends and the next begins: still a Head, timed from the new line.
        slot.read(b"}\n{\"b\"");
        slot.answer_owed();
        assert_eq!(phase(), Phase::Head);
        slot.read(b":2}\n");
        slot.answer_owed();
        assert_eq!(phase(), Phase::Busy);
        slot.wrote();
        slot.answer_written();
        assert_eq!(phase(), Phase::Busy);
        slot.answer_written();
        assert_eq!(phase(), Phase::Idle);
        // Blank lines owe nothing.
        slot.read(b"\n\r\n");
        assert_eq!(phase(), Phase::Idle);
        // A last line without a newline is over at the end of input.
        slot.read(b"{}");
        assert_eq!(phase(), Phase::Head);
        slot.read(b"");
        slot.answer_owed();
        assert_eq!(phase(), Phase::Busy);
    }

    #[tokio::test]
    async fn http_handlers_and_flushes_move_the_phase() {
        let table = Table::new(limits(), Mode::Http, "test");
        let admitted = table.admit(peer(2, 1), Instant::now()).expect("admitted");
        let slot = &admitted.slot;
        let phase = || slot.state().phase;
        slot.read(b"POST / HTTP/1.1\r\n");
        assert_eq!(phase(), Phase::Head);
        let request = slot.request();
        assert_eq!(phase(), Phase::Busy);
        let body = slot.body();
        slot.read(b"abc");
        assert_eq!((phase(), slot.state().received), (Phase::Body, 3));
        drop(body);
        assert_eq!(phase(), Phase::Busy);
        slot.flushed();
        assert_eq!(phase(), Phase::Busy, "the handler still runs");
        drop(request);
        slot.wrote();
        slot.flushed();
        assert_eq!(phase(), Phase::Idle);
    }
}
