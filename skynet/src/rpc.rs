//! The RPC core: this node's address, its dialed connections, the services it hosts and its
//! config, and the path of one call to one address (in-process when the address is this
//! node's own and it hosts the service). The node, the store and the client stand on it; it
//! knows nothing of the store, the registry or calls by name.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use crate::codec::{self, CodecError, Encoding};
use crate::config::RpcConfig;
use crate::error::{CallError, RejectReason};
use crate::peer::{PeerConn, PeerError, Peers};
use crate::service::{Context, MethodEntry, ServiceDef, Wire, panic_message};
use crate::stats::Outcome;
use crate::trace::{self, TraceId};
use crate::wire::{self, RequestHead, Status};

/// The core of one node (see the module docs). Shared: the node, its store and its clients
/// hold it.
pub(crate) struct RpcCore {
    /// The address the node's endpoint is bound to.
    pub(crate) addr: SocketAddr,
    pub(crate) config: RpcConfig,
    pub(crate) peers: Peers,
    /// The services this node hosts, by name.
    pub(crate) services: Arc<HashMap<Box<str>, ServiceDef>>,
}

/// A reply frame as a call got it: the response body starts at `body_at` (after the frame
/// header for an in-process call, which produces a whole frame; at 0 from the network).
pub(crate) struct Reply {
    pub(crate) bytes: Vec<u8>,
    pub(crate) body_at: usize,
}

impl Reply {
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[self.body_at..]
    }
}

/// A response body from the network, and whether it came over a connection that was open
/// already (a call that had to dial says nothing about the instance's latency).
pub(crate) struct Answer {
    pub(crate) body: Vec<u8>,
    pub(crate) warm: bool,
}

impl RpcCore {
    /// Calls `service.method` at `addr` with a typed request, within `deadline`: in-process
    /// when `addr` is this node's and it hosts the service. Traced as any call is.
    pub(crate) async fn call_at<Req: Wire, Resp: Wire, Err: Wire>(
        &self,
        service: &str,
        addr: SocketAddr,
        method: &str,
        request: Req,
        deadline: Duration,
    ) -> Result<Resp, CallError<Err>> {
        traced(service, method, async {
            if addr == self.addr
                && let Some(def) = self.services.get(service)
            {
                return self
                    .call_local(service, def, method, request, deadline)
                    .await;
            }
            let (frame, body_len) =
                self.request_frame(service, method, Encoding::Bincode, deadline, |out| {
                    codec::encode_into(Encoding::Bincode, &request, out)
                })?;
            let answer = self.send(addr, None, frame, body_len, deadline).await?;
            decode_reply(&answer.body, service, method, deadline)
        })
        .await
    }

    /// Same-process call: the request moves to the handler as a value, with the same deadline,
    /// panic and cancellation semantics as a remote call.
    pub(crate) async fn call_local<Req: Wire, Resp: Wire, Err: Wire>(
        &self,
        service: &str,
        def: &ServiceDef,
        method: &str,
        request: Req,
        deadline: Duration,
    ) -> Result<Resp, CallError<Err>> {
        let LocalStart {
            entry,
            now,
            at,
            trace,
            ctx,
        } = local_start(service, def, method, deadline)?;
        let fut = match entry.handler.call_local(ctx, Box::new(request)) {
            Ok(fut) => fut,
            Err(request) => {
                // The caller's types differ from the service's: go through the codec, which
                // accepts any compatible encoding, as a remote call would.
                let request = request
                    .downcast::<Req>()
                    .map_err(|_| CallError::Internal("request type changed".to_owned()))?;
                let mut payload = Vec::new();
                codec::encode_into(Encoding::Bincode, &*request, &mut payload)
                    .map_err(bad_request)?;
                let frame = self
                    .call_local_encoded(service, def, method, Encoding::Bincode, &payload, deadline)
                    .await?;
                return decode_reply(&frame[wire::HEADER_LEN..], service, method, deadline);
            }
        };
        let span = trace::serve_span(service, method, 0, trace);
        let stats = entry.stats.start_at(now, span.clone());
        let result = trace::in_span(run_guarded(fut, at, deadline), span)
            .await
            .and_then(|reply| match reply.downcast::<Result<Resp, Err>>() {
                Ok(result) => (*result).map_err(CallError::Service),
                Err(_) => Err(CallError::Protocol(format!(
                    "{service}.{method}: response or error type differs from the service's"
                ))),
            });
        stats.finish(local_outcome(&result, |_| Outcome::Ok));
        result
    }

    pub(crate) async fn call_local_encoded<E>(
        &self,
        service: &str,
        def: &ServiceDef,
        method: &str,
        encoding: Encoding,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, CallError<E>> {
        let LocalStart {
            entry,
            now,
            at,
            trace,
            ctx,
        } = local_start(service, def, method, deadline)?;
        let span = trace::serve_span(service, method, 0, trace);
        let stats = entry.stats.start_at(now, span.clone());
        let fut = match entry.handler.call_wire(ctx, encoding, payload) {
            Ok(fut) => fut,
            Err(e) => {
                stats.finish(Outcome::BadRequest);
                return Err(bad_request(e));
            }
        };
        let result = trace::in_span(run_guarded(fut, at, deadline), span).await;
        stats.finish(local_outcome(&result, |frame| Outcome::of_frame(frame)));
        result
    }

    /// Encodes a request frame and returns it with its body's length. Done before dialing, so
    /// an unencodable or oversized request is refused without touching the network. The id is
    /// filled in once the connection is known.
    pub(crate) fn request_frame<E>(
        &self,
        service: &str,
        method: &str,
        encoding: Encoding,
        deadline: Duration,
        payload: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<(Vec<u8>, usize), CallError<E>> {
        if method.is_empty()
            || method.len() > wire::MAX_NAME_LEN
            || service.len() > wire::MAX_NAME_LEN
        {
            return Err(CallError::Rejected {
                reason: RejectReason::BadRequest,
                message: "service and method names must be 1 to 255 bytes".to_owned(),
            });
        }
        let max = self.config.max_frame_size;
        let mut frame = Vec::with_capacity(256);
        let head = RequestHead {
            encoding,
            deadline: Some(deadline),
            service,
            method,
            trace_id: Some(TraceId::current_or_random()),
        };
        let body_len = wire::write_request(&mut frame, 0, &head, payload).map_err(bad_request)?;
        if body_len > max {
            return Err(CallError::Rejected {
                reason: RejectReason::TooLarge,
                message: format!("request of {body_len} bytes exceeds the limit of {max}"),
            });
        }
        Ok((frame, body_len))
    }

    /// Sends a request frame to `addr` within `deadline`. With a `kept` connection slot, a live
    /// connection in it is used without a look at the node's peer table, and an empty slot
    /// gets the connection the call used.
    pub(crate) async fn send<E>(
        &self,
        addr: SocketAddr,
        kept: Option<&OnceLock<Arc<PeerConn>>>,
        mut frame: Vec<u8>,
        body_len: usize,
        deadline: Duration,
    ) -> Result<Answer, CallError<E>> {
        let peers = &self.peers;
        let large = body_len >= self.config.large_message;
        let call = async {
            let looked_up;
            let (conn, warm) = match kept.and_then(OnceLock::get).filter(|c| c.is_alive()) {
                Some(conn) => (conn, true),
                None => {
                    looked_up = peers.get(addr).await?;
                    if let Some(slot) = kept {
                        // Full when the kept one died; the picker drops it (see `Picked`).
                        let _ = slot.set(looked_up.0.clone());
                    }
                    (&looked_up.0, looked_up.1)
                }
            };
            let id = conn.next_id();
            wire::set_request_id(&mut frame, id);
            let result = conn
                .call(id, frame, large)
                .await
                .map_err(|e| conn.refused_or(e));
            if result.is_err() {
                peers.forget(conn);
            }
            result.map(|body| Answer { body, warm })
        };
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(CallError::DeadlineExceeded(deadline)),
            Ok(Err(PeerError::Unreachable(reason))) => Err(CallError::Unreachable {
                target: addr.to_string(),
                reason,
            }),
            Ok(Err(PeerError::Lost(reason))) => Err(CallError::ConnectionLost {
                target: addr.to_string(),
                reason,
            }),
            Ok(Err(PeerError::Refused(reason))) => Err(CallError::HandshakeRefused {
                target: addr.to_string(),
                reason,
            }),
            Ok(Ok(sent)) => Ok(sent),
        }
    }
}

/// Where a same-process call starts: its method's entry, when it started, when its deadline
/// passes, its trace id and the handler's context.
struct LocalStart<'a> {
    entry: &'a MethodEntry,
    now: Instant,
    at: Instant,
    trace: TraceId,
    ctx: Context,
}

fn local_start<'a, E>(
    service: &str,
    def: &'a ServiceDef,
    method: &str,
    deadline: Duration,
) -> Result<LocalStart<'a>, CallError<E>> {
    let entry = def.method(method).ok_or_else(|| CallError::NotFound {
        service: service.to_owned(),
        method: method.to_owned(),
    })?;
    let now = Instant::now();
    let at = now + deadline;
    let trace = TraceId::current_or_random();
    let ctx = Context::new(0, Some(at), false, trace);
    Ok(LocalStart {
        entry,
        now,
        at,
        trace,
        ctx,
    })
}

/// Runs an outgoing call with a trace id in scope (the caller's, or a new one) and in a
/// `skynet.call` span that gets the outcome.
pub(crate) async fn traced<T, E>(
    service: &str,
    method: &str,
    call: impl Future<Output = Result<T, CallError<E>>>,
) -> Result<T, CallError<E>> {
    let trace = TraceId::current_or_random();
    let span = trace::call_span(service, method, trace);
    let result = trace::in_span(trace.scope(call), span.clone()).await;
    trace::record_outcome(&span, call_outcome(&result));
    result
}

/// How a call ended, as the caller saw it, for its span.
fn call_outcome<T, E>(result: &Result<T, CallError<E>>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CallError::Service(_)) => "service_error",
        Err(CallError::Unreachable { .. }) => "unreachable",
        Err(CallError::HandshakeRefused { .. }) => "handshake_refused",
        Err(CallError::ConnectionLost { .. }) => "connection_lost",
        Err(CallError::DeadlineExceeded(_)) => "deadline_exceeded",
        Err(CallError::NotFound { .. }) => "not_found",
        Err(CallError::Rejected { .. }) => "rejected",
        Err(CallError::Unavailable(_)) => "unavailable",
        Err(CallError::Stopping(_)) => "stopping",
        Err(CallError::NoInstance { .. }) => "no_instance",
        Err(CallError::Internal(_)) => "internal",
        Err(CallError::Protocol(_)) => "protocol",
    }
}

/// The served outcome of a same-process call, for the method's statistics.
fn local_outcome<T, E>(
    result: &Result<T, CallError<E>>,
    ok: impl FnOnce(&T) -> Outcome,
) -> Outcome {
    match result {
        Ok(value) => ok(value),
        Err(CallError::Service(_)) => Outcome::ServiceError,
        Err(CallError::DeadlineExceeded(_)) => Outcome::DeadlineExceeded,
        Err(CallError::Rejected { .. }) => Outcome::BadRequest,
        Err(_) => Outcome::Internal,
    }
}

pub(crate) fn bad_request<E>(e: CodecError) -> CallError<E> {
    CallError::Rejected {
        reason: RejectReason::BadRequest,
        message: e.to_string(),
    }
}

/// Runs a local handler with the deadline and panic handling a remote call gets.
async fn run_guarded<T, E>(
    fut: crate::service::BoxFuture<T>,
    at: Instant,
    deadline: Duration,
) -> Result<T, CallError<E>> {
    match tokio::time::timeout_at(at.into(), AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(CallError::Internal(format!(
            "handler panicked: {}",
            panic_message(&*panic)
        ))),
        Err(_) => Err(CallError::DeadlineExceeded(deadline)),
    }
}

/// Turns a response body into the typed outcome.
pub(crate) fn decode_reply<Resp: Wire, Err: Wire>(
    body: &[u8],
    service: &str,
    method: &str,
    deadline: Duration,
) -> Result<Resp, CallError<Err>> {
    let (status, encoding, payload) =
        wire::parse_response(body).map_err(|e| CallError::Protocol(e.to_string()))?;
    let message = || String::from_utf8_lossy(payload).into_owned();
    match status {
        Status::Ok => codec::decode(encoding, payload)
            .map_err(|e| CallError::Protocol(format!("undecodable response: {e}"))),
        Status::ServiceError => match codec::decode(encoding, payload) {
            Ok(error) => Err(CallError::Service(error)),
            Err(e) => Err(CallError::Protocol(format!(
                "undecodable service error: {e}"
            ))),
        },
        Status::NotFound => Err(CallError::NotFound {
            service: service.to_owned(),
            method: method.to_owned(),
        }),
        Status::DeadlineExceeded => Err(CallError::DeadlineExceeded(deadline)),
        Status::BadRequest => Err(CallError::Rejected {
            reason: RejectReason::BadRequest,
            message: message(),
        }),
        Status::TooLarge => Err(CallError::Rejected {
            reason: RejectReason::TooLarge,
            message: message(),
        }),
        Status::Internal => Err(CallError::Internal(message())),
        Status::Unavailable => Err(CallError::Unavailable(message())),
        Status::Stopping => Err(CallError::Stopping(message())),
    }
}
