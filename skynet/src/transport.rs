//! The QUIC endpoint (one UDP socket that both serves and dials) and frame reading.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Arc;

use bytes::{Buf as _, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::AsyncRead;

use crate::config::RpcConfig;
use crate::error::NodeError;
use crate::sync::Locked as _;
use crate::tls::{Credentials, TlsError};
use crate::wire::{self, FrameKind, HEADER_LEN, Header, HeaderError};

/// ALPN of skynet's RPC protocol; the version in it changes only with an incompatible frame
/// format.
pub(crate) const ALPN: &[u8] = b"skynet/1";

/// Where a node listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    /// One address; port 0 asks the OS for a free port.
    Addr(SocketAddr),
    /// The first free port of a range on one IP, tried in order.
    Range(IpAddr, RangeInclusive<u16>),
}

impl Default for Bind {
    fn default() -> Self {
        Bind::Addr(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

fn transport_config(config: &RpcConfig) -> Result<Arc<quinn::TransportConfig>, NodeError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| NodeError::Config("idle_timeout out of range".to_owned()))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .max_concurrent_bidi_streams(1024u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // Loopback and LAN round trips are far below quinn's 333 ms default guess; a low
        // initial estimate keeps the first loss-recovery timers short.
        .initial_rtt(std::time::Duration::from_millis(10));
    Ok(Arc::new(t))
}

/// Builds the endpoint: mutual TLS 1.3 with the cluster CA, the ring provider passed
/// explicitly, large socket buffers, and the node's bind policy.
pub(crate) fn endpoint(
    creds: &Credentials,
    config: &RpcConfig,
    bind: &Bind,
) -> Result<quinn::Endpoint, NodeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let transport = transport_config(config)?;

    let server_tls = creds.server_config(ALPN, &provider)?;
    let server_tls = QuicServerConfig::try_from(server_tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport.clone());

    let client_tls = creds.client_config(ALPN, &provider)?;
    let client_tls = QuicClientConfig::try_from(client_tls)
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport);

    let socket = bind_socket(bind, config.socket_buffer)?;
    let addr = socket.local_addr().map_err(|source| NodeError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    // The stateless reset key is derived from the node's key rather than drawn at random, so a
    // node restarted on the same address answers packets of its predecessor's connections with
    // a reset its peers accept: they drop those connections at once and redial, instead of
    // waiting out the idle timeout on a connection nobody serves.
    let reset_key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &creds.derived_secret("quic stateless reset"),
    );
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // The connection ids are keyed the same way. quinn only resets packets whose connection id
    // passes the endpoint's validation, and with a random key per process every id of the
    // predecessor fails it: its packets would be dropped in silence, never reset.
    let cid_key = creds.derived_secret("quic connection id");
    let cid_key = u64::from_le_bytes([
        cid_key[0], cid_key[1], cid_key[2], cid_key[3], cid_key[4], cid_key[5], cid_key[6],
        cid_key[7],
    ]);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| NodeError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A TLS handshake that failed for a reason another attempt will not change: one side does not
/// accept the other's certificate (signed by another CA, expired, missing), or they share no
/// protocol. QUIC carries a TLS alert as a "crypto" error code (0x100 + the alert), either in
/// the local error (this node refused) or in the peer's CONNECTION_CLOSE (the peer refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandshakeRefusal {
    /// This node refused the peer (else the peer refused this node).
    by_us: bool,
    /// The TLS alert.
    alert: u8,
    /// The TLS library's words: ours, or the peer's as it sent them (cleaned, bounded).
    detail: String,
}

/// Longest reason text kept from a peer's CONNECTION_CLOSE: it is the peer's, so it is
/// bounded and cleaned before it reaches an error or a log line.
const MAX_PEER_REASON: usize = 200;

/// TLS alerts (RFC 8446 section 6) that a certificate check sends.
mod alert {
    pub(super) const BAD_CERTIFICATE: u8 = 42;
    pub(super) const UNSUPPORTED_CERTIFICATE: u8 = 43;
    pub(super) const CERTIFICATE_REVOKED: u8 = 44;
    pub(super) const CERTIFICATE_EXPIRED: u8 = 45;
    pub(super) const CERTIFICATE_UNKNOWN: u8 = 46;
    pub(super) const UNKNOWN_CA: u8 = 48;
    pub(super) const ACCESS_DENIED: u8 = 49;
    /// rustls's alert for a certificate whose signature does not verify: what a certificate
    /// from another skynet CA gets, since every skynet CA has the same name.
    pub(super) const DECRYPT_ERROR: u8 = 51;
    pub(super) const PROTOCOL_VERSION: u8 = 70;
    pub(super) const CERTIFICATE_REQUIRED: u8 = 116;
    pub(super) const NO_APPLICATION_PROTOCOL: u8 = 120;
}

impl HandshakeRefusal {
    /// The refusal in a connection's error, if it is one.
    pub(crate) fn of(error: &quinn::ConnectionError) -> Option<Self> {
        let (by_us, code, detail) = match error {
            quinn::ConnectionError::TransportError(e) => {
                (true, u64::from(e.code), e.reason.clone())
            }
            quinn::ConnectionError::ConnectionClosed(close) => (
                false,
                u64::from(close.error_code),
                String::from_utf8_lossy(&close.reason)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_PEER_REASON)
                    .collect(),
            ),
            _ => return None,
        };
        // QUIC's crypto error codes: 0x100 + a TLS alert.
        let alert = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok())?;
        Some(Self {
            by_us,
            alert,
            detail,
        })
    }
}

impl std::fmt::Display for HandshakeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use alert::*;
        let what = match (self.by_us, self.alert) {
            (true, UNKNOWN_CA | DECRYPT_ERROR) => {
                "the peer's certificate is not signed by this cluster's CA".to_owned()
            }
            (true, CERTIFICATE_EXPIRED) => {
                "the peer's certificate has expired or is not valid yet".to_owned()
            }
            (true, CERTIFICATE_REVOKED) => "the peer's certificate is revoked".to_owned(),
            (true, CERTIFICATE_REQUIRED) => "the peer presented no certificate".to_owned(),
            (
                true,
                BAD_CERTIFICATE | UNSUPPORTED_CERTIFICATE | CERTIFICATE_UNKNOWN | ACCESS_DENIED,
            ) => "the peer's certificate is not accepted".to_owned(),
            (false, UNKNOWN_CA | DECRYPT_ERROR) => {
                "the peer refused this node's certificate: it is not signed by the peer's CA"
                    .to_owned()
            }
            (false, CERTIFICATE_EXPIRED) => {
                "the peer refused this node's certificate as expired or not valid yet".to_owned()
            }
            (false, CERTIFICATE_REVOKED) => {
                "the peer refused this node's certificate as revoked".to_owned()
            }
            (false, CERTIFICATE_REQUIRED) => {
                "the peer wants a certificate and this node presented none".to_owned()
            }
            (
                false,
                BAD_CERTIFICATE | UNSUPPORTED_CERTIFICATE | CERTIFICATE_UNKNOWN | ACCESS_DENIED,
            ) => "the peer refused this node's certificate".to_owned(),
            (_, NO_APPLICATION_PROTOCOL) => {
                "no common protocol: the peer runs an incompatible skynet version".to_owned()
            }
            (_, PROTOCOL_VERSION) => "no common TLS version".to_owned(),
            (by_us, other) => format!(
                "{} the handshake (TLS alert {other})",
                if by_us {
                    "this node ended"
                } else {
                    "the peer ended"
                }
            ),
        };
        f.write_str(&what)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// Logs refused handshakes on the accepting side, one line per remote IP address a minute at
/// most: a misconfigured client redials on every call, and a hostile one from many ports.
pub(crate) struct RefusalLog {
    /// When each address was last logged, and how many refusals went unlogged since.
    seen: std::sync::Mutex<std::collections::HashMap<IpAddr, (std::time::Instant, u64)>>,
}

/// How often one address's refusals are logged at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Addresses remembered at once; past it, refusals from new addresses go unlogged until the
/// remembered ones age out, so the log and this table stay bounded.
const REFUSAL_LOG_ADDRESSES: usize = 4096;

impl RefusalLog {
    pub(crate) fn new() -> Self {
        Self {
            seen: std::sync::Mutex::default(),
        }
    }

    /// Logs one WARN for a handshake with `remote` that `refusal` ended, unless that address
    /// was logged less than a minute ago.
    pub(crate) fn refused(&self, remote: SocketAddr, refusal: &HandshakeRefusal) {
        match self.admit(remote.ip(), std::time::Instant::now()) {
            None => {}
            Some(0) => tracing::warn!("TLS handshake with {remote} refused: {refusal}"),
            Some(unlogged) => tracing::warn!(
                "TLS handshake with {remote} refused: {refusal} ({unlogged} more from {} \
                 since the last one logged)",
                remote.ip()
            ),
        }
    }

    /// Whether a refusal from `ip` at `now` is logged, and if so how many before it were not.
    fn admit(&self, ip: IpAddr, now: std::time::Instant) -> Option<u64> {
        let mut seen = self.seen.locked();
        if let Some((last, unlogged)) = seen.get_mut(&ip) {
            if now.saturating_duration_since(*last) < REFUSAL_LOG_EVERY {
                *unlogged += 1;
                return None;
            }
            let before = *unlogged;
            *last = now;
            *unlogged = 0;
            return Some(before);
        }
        if seen.len() >= REFUSAL_LOG_ADDRESSES {
            seen.retain(|_, (last, _)| now.saturating_duration_since(*last) < REFUSAL_LOG_EVERY);
            if seen.len() >= REFUSAL_LOG_ADDRESSES {
                return None;
            }
        }
        seen.insert(ip, (now, 0));
        Some(0)
    }
}

fn bind_socket(bind: &Bind, buffer: usize) -> Result<UdpSocket, NodeError> {
    let candidates: Vec<SocketAddr> = match bind {
        Bind::Addr(addr) => vec![*addr],
        Bind::Range(ip, ports) => ports.clone().map(|p| SocketAddr::new(*ip, p)).collect(),
    };
    let mut last = None;
    for addr in candidates {
        match bind_one(addr, buffer) {
            Ok(socket) => return Ok(socket),
            Err(source) => last = Some(NodeError::Bind { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| NodeError::Config("empty port range".to_owned())))
}

fn bind_one(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The OS may cap these (net.core.rmem_max); a smaller buffer is a slower node, not an
    // error, so failures are ignored.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// What came off a stream.
pub(crate) enum Incoming {
    /// A whole frame.
    Frame(Header, Vec<u8>),
    /// A frame over the limit; its body has been read and thrown away.
    Oversized {
        kind: FrameKind,
        id: u64,
        body_len: usize,
        limit: usize,
    },
    /// The peer finished the stream cleanly between frames.
    End,
}

/// A stream broke or carried something unreadable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Header(HeaderError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Frames cut out of a stream's bytes as they arrive, in pieces of any size. The partial frame
/// (header, part of a body, what is left to skip of an oversized one) lives here, so whoever
/// reads the next piece carries on where the last reader stopped: the poller of a stream may
/// change between pieces, and one that goes away mid-frame loses nothing.
pub(crate) struct FrameBuf {
    buf: BytesMut,
    limit: usize,
    /// Room asked for before each read.
    read_ahead: usize,
    /// The oversized frame whose body is being thrown away, and how much of it is left.
    skipping: Option<(Incoming, usize)>,
}

impl FrameBuf {
    /// Frames with bodies over `limit` are reported as [`Incoming::Oversized`] without being
    /// kept. Each read asks for `read_ahead` bytes of room.
    pub(crate) fn new(limit: usize, read_ahead: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(read_ahead),
            limit,
            read_ahead,
            skipping: None,
        }
    }

    /// Reads what `reader` has into the buffer: `Ok(0)` when the stream has ended.
    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        reader: &mut R,
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.buf.reserve(self.read_ahead);
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            std::pin::Pin::new(reader),
            cx,
            &mut self.buf
        ))?;
        if let Some((_, left)) = &mut self.skipping {
            // An oversized body is dropped as it comes, never kept; the buffer held nothing
            // else before this read.
            let n = (*left).min(self.buf.len());
            *left -= n;
            self.buf.advance(n);
        }
        std::task::Poll::Ready(Ok(n))
    }

    /// The next frame from `reader`, reading as much as it takes. `Pending` leaves every
    /// partial state here, so a later poll, by anyone, carries on.
    pub(crate) fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        reader: &mut R,
    ) -> std::task::Poll<Result<Incoming, ReadError>> {
        loop {
            if let Some(frame) = self.next_frame() {
                return std::task::Poll::Ready(frame);
            }
            match std::task::ready!(self.poll_read(cx, reader)) {
                Ok(0) => return std::task::Poll::Ready(self.end()),
                Ok(_) => {}
                Err(e) => return std::task::Poll::Ready(Err(ReadError::Io(e))),
            }
        }
    }

    /// The next frame from `reader`, reading as much as it takes.
    pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<Incoming, ReadError> {
        std::future::poll_fn(|cx| self.poll_frame(cx, reader)).await
    }

    /// Whether a whole frame is buffered, so that the next [`FrameBuf::read_frame`] returns
    /// without waiting.
    pub(crate) fn holds_whole_frame(&self) -> bool {
        self.skipping.is_none()
            && self
                .buf
                .first_chunk::<4>()
                .is_some_and(|length| self.buf.len() >= 4 + u32::from_be_bytes(*length) as usize)
    }

    /// The next whole frame, if the bytes so far hold one. After an error the stream is
    /// unusable.
    pub(crate) fn next_frame(&mut self) -> Option<Result<Incoming, ReadError>> {
        if let Some((_, left)) = &self.skipping {
            if *left > 0 {
                return None;
            }
            return self.skipping.take().map(|(oversized, _)| Ok(oversized));
        }
        let header = self.buf.first_chunk::<HEADER_LEN>()?;
        match wire::parse_header(header, self.limit) {
            Ok(h) => {
                let body = self.buf.get(HEADER_LEN..HEADER_LEN + h.body_len)?.to_vec();
                self.buf.advance(HEADER_LEN + h.body_len);
                Some(Ok(Incoming::Frame(h, body)))
            }
            Err(HeaderError::TooLarge {
                kind,
                id,
                body_len,
                limit,
            }) => {
                let here = body_len.min(self.buf.len() - HEADER_LEN);
                self.buf.advance(HEADER_LEN + here);
                let oversized = Incoming::Oversized {
                    kind,
                    id,
                    body_len,
                    limit,
                };
                self.skipping = Some((oversized, body_len - here));
                self.next_frame()
            }
            Err(e) => Some(Err(ReadError::Header(e))),
        }
    }

    /// What the stream's clean end means here: [`Incoming::End`] between frames, a truncated
    /// frame otherwise.
    pub(crate) fn end(&self) -> Result<Incoming, ReadError> {
        if self.buf.is_empty() && self.skipping.is_none() {
            Ok(Incoming::End)
        } else {
            Err(ReadError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A stream that gives its bytes in the pieces it was made of, one piece per read.
    struct Pieces(VecDeque<Vec<u8>>);

    impl Pieces {
        fn of(bytes: &[u8], size: usize) -> Self {
            Self(bytes.chunks(size).map(<[u8]>::to_vec).collect())
        }
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads `stream` to its end, taking every frame out as soon as it is whole.
    fn read_all(frames: &mut FrameBuf, stream: &mut Pieces) -> Vec<(FrameKind, u64, usize)> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            while let Some(frame) = frames.next_frame() {
                match frame.expect("a good frame") {
                    Incoming::Frame(h, body) => {
                        assert_eq!(body.len(), h.body_len);
                        out.push((h.kind, h.id, h.body_len));
                    }
                    Incoming::Oversized {
                        kind, id, body_len, ..
                    } => out.push((kind, id, body_len)),
                    Incoming::End => unreachable!("next_frame never says End"),
                }
            }
            match frames.poll_read(&mut cx, stream) {
                Poll::Ready(Ok(0)) => return out,
                Poll::Ready(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// A response, a cancel and a longer response frame, back to back.
    fn three_frames() -> Vec<u8> {
        let mut bytes = Vec::new();
        wire::write_response_message(&mut bytes, 7, wire::Status::Ok, "first");
        wire::write_cancel(&mut bytes, 8);
        wire::write_response_message(&mut bytes, 9, wire::Status::NotFound, &"x".repeat(300));
        bytes
    }

    fn closed_by_peer(code: quinn::TransportErrorCode, reason: &[u8]) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: bytes::Bytes::copy_from_slice(reason),
        })
    }

    fn refused_here(code: quinn::TransportErrorCode, reason: &str) -> quinn::ConnectionError {
        quinn::ConnectionError::TransportError(quinn_proto::TransportError {
            code,
            frame: None,
            reason: reason.to_owned(),
        })
    }

    #[test]
    fn refused_handshakes_are_told_by_side_and_alert() {
        use quinn::TransportErrorCode as Code;
        let ours = HandshakeRefusal::of(&refused_here(
            Code::crypto(alert::DECRYPT_ERROR),
            "invalid peer certificate: BadSignature",
        ))
        .expect("a refusal");
        assert_eq!(
            ours.to_string(),
            "the peer's certificate is not signed by this cluster's CA \
             (invalid peer certificate: BadSignature)"
        );
        let theirs = HandshakeRefusal::of(&closed_by_peer(
            Code::crypto(alert::CERTIFICATE_EXPIRED),
            b"invalid peer certificate: Expired",
        ))
        .expect("a refusal");
        assert_eq!(
            theirs.to_string(),
            "the peer refused this node's certificate as expired or not valid yet \
             (invalid peer certificate: Expired)"
        );
        let missing =
            HandshakeRefusal::of(&refused_here(Code::crypto(alert::CERTIFICATE_REQUIRED), ""))
                .expect("a refusal");
        assert_eq!(missing.to_string(), "the peer presented no certificate");
        let other = HandshakeRefusal::of(&closed_by_peer(Code::crypto(80), b""));
        assert_eq!(
            other.map(|r| r.to_string()).as_deref(),
            Some("the peer ended the handshake (TLS alert 80)")
        );

        // Not handshake refusals: other transport errors, and everything else.
        for error in [
            refused_here(Code::PROTOCOL_VIOLATION, "TLS error: nope"),
            closed_by_peer(Code::NO_ERROR, b""),
            quinn::ConnectionError::TimedOut,
            quinn::ConnectionError::Reset,
        ] {
            assert_eq!(HandshakeRefusal::of(&error), None, "{error}");
        }
    }

    #[test]
    fn a_peers_reason_is_cleaned_and_bounded() {
        let mut reason = b"bad\x1b[31m\nline\r".to_vec();
        reason.extend([0xff, b'x']);
        reason.extend(std::iter::repeat_n(b'y', 5000));
        let refusal = HandshakeRefusal::of(&closed_by_peer(
            quinn::TransportErrorCode::crypto(alert::BAD_CERTIFICATE),
            &reason,
        ))
        .expect("a refusal");
        assert!(refusal.detail.chars().all(|c| !c.is_control()));
        assert!(
            refusal.detail.starts_with("bad[31mline\u{fffd}x"),
            "{}",
            refusal.detail
        );
        assert_eq!(refusal.detail.chars().count(), MAX_PEER_REASON);
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_address() {
        let log = RefusalLog::new();
        let start = std::time::Instant::now();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert_eq!(log.admit(a, start), Some(0));
        // The same address again (any port) within the minute: counted, not logged.
        let soon = start + REFUSAL_LOG_EVERY / 2;
        assert_eq!(log.admit(a, soon), None);
        assert_eq!(log.admit(a, soon), None);
        // Another address is its own.
        assert_eq!(log.admit(b, soon), Some(0));
        // A minute on, the next one is logged with the count of those that were not.
        assert_eq!(log.admit(a, start + REFUSAL_LOG_EVERY), Some(2));
        assert_eq!(log.admit(a, start + REFUSAL_LOG_EVERY), None);
    }

    #[test]
    fn the_refusal_log_forgets_old_addresses_and_stays_bounded() {
        let log = RefusalLog::new();
        let start = std::time::Instant::now();
        let ip = |n: usize| IpAddr::from(std::net::Ipv6Addr::from(n as u128));
        for n in 0..REFUSAL_LOG_ADDRESSES {
            assert_eq!(log.admit(ip(n), start), Some(0));
        }
        // Full of addresses logged this minute: a new one is not logged (nor remembered).
        let new = ip(REFUSAL_LOG_ADDRESSES);
        assert_eq!(log.admit(new, start), None);
        assert_eq!(log.seen.lock().expect("lock").len(), REFUSAL_LOG_ADDRESSES);
        // Once they are a minute old, they make room.
        assert_eq!(log.admit(new, start + REFUSAL_LOG_EVERY), Some(0));
        assert_eq!(log.seen.lock().expect("lock").len(), 1);
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_are_cut() {
        let bytes = three_frames();
        let mut whole = FrameBuf::new(1 << 20, 1 << 16);
        let expected = read_all(&mut whole, &mut Pieces::of(&bytes, bytes.len()));
        assert_eq!(expected.len(), 3);
        assert!(matches!(whole.end(), Ok(Incoming::End)));
        for piece in [1, 2, 5, 13, 14, 100] {
            for read_ahead in [1, 16, 1 << 16] {
                let mut frames = FrameBuf::new(1 << 20, read_ahead);
                let got = read_all(&mut frames, &mut Pieces::of(&bytes, piece));
                assert_eq!(
                    got, expected,
                    "pieces of {piece} bytes, reads of {read_ahead}"
                );
                assert!(matches!(frames.end(), Ok(Incoming::End)));
            }
        }
    }

    #[test]
    fn an_oversized_frame_is_skipped_without_being_kept() {
        let mut bytes = Vec::new();
        wire::write_response_message(&mut bytes, 1, wire::Status::Ok, &"y".repeat(10_000));
        wire::write_cancel(&mut bytes, 2);
        let mut frames = FrameBuf::new(1000, 700);
        let mut stream = Pieces::of(&bytes, 700);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        while let Poll::Ready(Ok(n)) = frames.poll_read(&mut cx, &mut stream) {
            assert!(frames.buf.len() <= 700, "the body is not kept");
            while let Some(frame) = frames.next_frame() {
                if let Ok(
                    Incoming::Oversized { id, body_len, .. }
                    | Incoming::Frame(Header { id, body_len, .. }, _),
                ) = frame
                {
                    got.push((id, body_len));
                }
            }
            if n == 0 {
                break;
            }
        }
        assert_eq!(got, [(1, bytes.len() - 2 * HEADER_LEN), (2, 0)]);
        assert!(matches!(frames.end(), Ok(Incoming::End)));
    }

    #[test]
    fn an_end_mid_frame_is_truncation_and_a_bad_header_an_error() {
        let bytes = three_frames();
        let mut frames = FrameBuf::new(1 << 20, 64);
        let got = read_all(&mut frames, &mut Pieces::of(&bytes[..bytes.len() - 1], 64));
        assert_eq!(got.len(), 2);
        assert!(matches!(frames.end(), Err(ReadError::Truncated)));

        let mut frames = FrameBuf::new(1 << 20, 64);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut stream = Pieces::of(&[0, 0, 0, 9, 42, 0, 0, 0, 0, 0, 0, 0, 1], 64);
        assert!(matches!(
            frames.poll_read(&mut cx, &mut stream),
            Poll::Ready(Ok(13))
        ));
        assert!(matches!(
            frames.next_frame(),
            Some(Err(ReadError::Header(HeaderError::UnknownKind(42))))
        ));
    }
}
