//! The errors at skynet's public boundaries, one enum each: making a call ([`CallError`]),
//! running a node ([`NodeError`]) and using the config store ([`StoreError`]; how Raft's errors
//! map onto it is in `store/error.rs`). Kept together, below every layer that returns them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::service::{ServiceDefError, ServiceError};
use crate::tls::TlsError;

/// Why a call did not produce the service's response. `E` is the service's own error type.
///
/// The variants separate what a caller acts on differently: [`CallError::Unreachable`] means
/// the request never left, so any call may be retried; [`CallError::ConnectionLost`] means it
/// may have run, so only idempotent calls may be retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E = ServiceError> {
    /// The request was not sent: no connection could be made, or there is no address to call.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// The address or service that could not be reached.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// The request was not sent: the TLS handshake with the peer was refused, by this node or
    /// by the peer, for a reason another attempt will not change: a certificate that is not
    /// signed by the cluster CA (a process started with another credentials directory),
    /// expired, or missing. Fails at once instead of waiting out the deadline.
    #[error("TLS handshake with {target} refused: {reason}")]
    HandshakeRefused {
        /// The peer's address.
        target: String,
        /// Who refused what, with the TLS library's words.
        reason: String,
    },
    /// The request was sent but the connection broke before the reply came; it may have run.
    #[error("connection to {target} lost during the call: {reason}")]
    ConnectionLost {
        /// The peer.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// The service ran and returned its own error value.
    #[error("service error: {0}")]
    Service(E),
    /// The deadline passed before the reply came; the handler has been cancelled.
    #[error("deadline of {0:?} exceeded")]
    DeadlineExceeded(Duration),
    /// The node has no such service or method.
    #[error("no such service or method {service}.{method}")]
    NotFound {
        /// The service asked for.
        service: String,
        /// The method asked for.
        method: String,
    },
    /// The request was refused before it ran.
    #[error("request rejected ({reason}): {message}")]
    Rejected {
        /// The class of refusal.
        reason: RejectReason,
        /// The detail.
        message: String,
    },
    /// No registered instance of the service (at the asked-for version) is known to this node.
    #[error("no instance of {service}{} is available", version.as_ref().map(|v| format!(" {v}")).unwrap_or_default())]
    NoInstance {
        /// The service asked for.
        service: String,
        /// The version requirement, if the caller gave one.
        version: Option<String>,
    },
    /// The node is at its concurrency limit; the call did not run and may be retried
    /// elsewhere.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The node is stopping: it refuses new calls from the moment its shutdown begins. The call
    /// did not run and may be retried elsewhere; calls by name do so by themselves.
    #[error("service stopping: {0}")]
    Stopping(String),
    /// The handler panicked or its reply could not be encoded.
    #[error("handler failed: {0}")]
    Internal(String),
    /// The reply could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The request could not be decoded as the method's request type, or was malformed.
    BadRequest,
    /// The request was larger than the receiver's frame limit.
    TooLarge,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::BadRequest => "bad request",
            RejectReason::TooLarge => "too large",
        })
    }
}

impl<E> CallError<E> {
    /// Whether the request certainly did not run, so that retrying it anywhere is safe. A
    /// [`CallError::HandshakeRefused`] did not run either, but is not counted: the same peer
    /// refuses it again, so it is an error to report, not one to retry.
    pub fn is_safe_to_retry(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. } | CallError::Unavailable(_) | CallError::Stopping(_)
        )
    }

    /// Converts the service's error type, keeping every other variant.
    pub fn map_service<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            CallError::Service(e) => CallError::Service(f(e)),
            CallError::Unreachable { target, reason } => CallError::Unreachable { target, reason },
            CallError::HandshakeRefused { target, reason } => {
                CallError::HandshakeRefused { target, reason }
            }
            CallError::ConnectionLost { target, reason } => {
                CallError::ConnectionLost { target, reason }
            }
            CallError::DeadlineExceeded(d) => CallError::DeadlineExceeded(d),
            CallError::NotFound { service, method } => CallError::NotFound { service, method },
            CallError::Rejected { reason, message } => CallError::Rejected { reason, message },
            CallError::Unavailable(m) => CallError::Unavailable(m),
            CallError::Stopping(m) => CallError::Stopping(m),
            CallError::NoInstance { service, version } => {
                CallError::NoInstance { service, version }
            }
            CallError::Internal(m) => CallError::Internal(m),
            CallError::Protocol(m) => CallError::Protocol(m),
        }
    }
}

/// A node could not be configured, started or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No credentials were given.
    #[error("no credentials: call .credentials(..) or .development_credentials(..)")]
    NoCredentials,
    /// Credentials could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A hosted service is invalid.
    #[error(transparent)]
    Service(#[from] ServiceDefError),
    /// Two hosted services share a name.
    #[error("service {0:?} is hosted twice")]
    DuplicateService(String),
    /// The config store member could not start, bootstrap or join.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address tried (the last one, for a range).
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The admin HTTP port could not be bound.
    #[error("cannot bind the admin port {addr}: {source}")]
    Admin {
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The configuration is invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// No member could be reached (for a join: no seed), or one refused the TLS handshake (a
    /// certificate from another cluster's CA: the text says which, and this fails at once).
    #[error("store unreachable: {0}")]
    Unreachable(String),
    /// No leader was found, or the request did not finish, within the deadline. A write that
    /// timed out may still be applied later.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The write is larger than the store takes (its keys and values over 1 MiB); nothing changed.
    #[error("too large: {size} bytes over the {limit} byte limit")]
    TooLarge {
        /// The write's size (its keys and values).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The command was rejected by the state machine (unknown lease, ...); nothing changed.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A watcher fell behind the kept history; read again and watch from that read's revision.
    #[error("watch history compacted up to revision {0}")]
    Compacted(skynet_raft::state::Revision),
    /// A keep-alive named a lease that is unknown or already expired.
    #[error("lease: {0}")]
    Lease(String),
    /// A membership change was refused.
    #[error("membership: {0}")]
    Membership(String),
    /// The data directory or the on-disk store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The local member has stopped.
    #[error("store stopped: {0}")]
    Stopped(String),
    /// The request may or may not have been applied (the connection broke after sending it).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// Another failure of a call between members.
    #[error("store call failed: {0}")]
    Remote(String),
    /// The operation needs a replica, and this node is a client of the store
    /// ([`StoreConfig::client`](crate::StoreConfig::client)).
    #[error("this node is a store client, not a member: {0}")]
    NotMember(String),
}
