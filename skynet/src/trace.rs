//! Trace ids: one id for a whole chain of calls, carried from node to node in the request head.
//!
//! A call made while a trace id is in scope carries that id; any other call starts a new one.
//! The server puts the id of each request it serves in scope around the handler's future (and
//! the same-process fast path does the same), so the calls a handler makes carry the id of the
//! call it serves without the handler passing anything along.
//!
//! The scope is a Tokio task-local, so it covers the handler's future and what it awaits, not a
//! task the handler spawns: wrap such a task's future in [`TraceId::scope`] to keep the id.
//!
//! ```
//! # async fn run(node: skynet::Node) {
//! use skynet::trace::TraceId;
//!
//! let trace = TraceId::random();
//! trace
//!     .scope(async {
//!         assert_eq!(TraceId::current(), Some(trace));
//!         // Every call made here carries `trace`.
//!     })
//!     .await;
//! assert_eq!(TraceId::current(), None);
//! # }
//! ```

use std::fmt;
use std::future::Future;

tokio::task_local! {
    static CURRENT: TraceId;
}

/// Identifies one chain of calls across nodes: 128 bits, shown as 32 lowercase hex digits, the
/// size and form of a W3C trace-context trace id. Never zero when made by skynet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(u128);

impl TraceId {
    /// A new random id, for a chain of calls that starts here.
    pub fn random() -> Self {
        // A thread-local generator: no lock and no system call on the call path. Trace ids
        // need to be unique, not unpredictable.
        Self(fastrand::u128(1..))
    }

    /// The id with these 128 bits (as read from a log, a header or another system).
    pub const fn from_u128(raw: u128) -> Self {
        Self(raw)
    }

    /// The 128 bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id in scope on this task, if any: inside a handler, the id of the call it serves.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|trace| *trace).ok()
    }

    /// Runs `fut` with this id in scope: calls made inside it carry this id.
    pub fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// The id in scope, or a new one.
    pub(crate) fn current_or_random() -> Self {
        Self::current().unwrap_or_else(Self::random)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// The span of one call served on this node, remote or same-process. `outcome` is recorded
/// when the call ends (see `stats::CallGuard`).
pub(crate) fn serve_span(
    service: &str,
    method: &str,
    request_id: u64,
    trace: TraceId,
) -> tracing::Span {
    tracing::debug_span!(
        "skynet.serve",
        service,
        method,
        request_id,
        trace_id = %trace,
        outcome = tracing::field::Empty,
    )
}

/// `fut`, run in `span` unless no subscriber wants the span. Entering and leaving a disabled
/// span on every poll is not free (with `tracing`'s `log` feature, which other crates in a
/// program may switch on, each is a check of the `log` level), and calls poll often.
pub(crate) fn in_span<F: Future>(
    fut: F,
    span: tracing::Span,
) -> futures_util::future::Either<tracing::instrument::Instrumented<F>, F> {
    use tracing::Instrument as _;
    if span.is_disabled() {
        futures_util::future::Either::Right(fut)
    } else {
        futures_util::future::Either::Left(fut.instrument(span))
    }
}

/// Records how a call ended in its span, if the span is wanted at all.
pub(crate) fn record_outcome(span: &tracing::Span, outcome: &str) {
    if !span.is_disabled() {
        span.record("outcome", outcome);
    }
}

/// The span of one call this node makes.
pub(crate) fn call_span(service: &str, method: &str, trace: TraceId) -> tracing::Span {
    tracing::debug_span!(
        "skynet.call",
        service,
        method,
        trace_id = %trace,
        outcome = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_as_32_hex_digits() {
        let trace = TraceId::from_u128(0xab);
        assert_eq!(trace.to_string(), format!("{}ab", "0".repeat(30)));
        assert_eq!(format!("{trace:?}"), format!("TraceId({trace})"));
        assert_ne!(TraceId::random().as_u128(), 0);
    }

    #[tokio::test]
    async fn scopes_nest_and_end() {
        assert_eq!(TraceId::current(), None);
        let (outer, inner) = (TraceId::from_u128(1), TraceId::from_u128(2));
        outer
            .scope(async {
                assert_eq!(TraceId::current(), Some(outer));
                inner
                    .scope(async { assert_eq!(TraceId::current_or_random(), inner) })
                    .await;
                assert_eq!(TraceId::current(), Some(outer));
            })
            .await;
        assert_eq!(TraceId::current(), None);
    }
}
