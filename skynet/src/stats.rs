//! Call statistics per service method: counters and a latency histogram, with no I/O.
//!
//! Every method a node hosts has one set of counters, created when the node starts and reached
//! from the method table the dispatcher already looks up, so counting a call costs no lookup,
//! no lock and no allocation: a few relaxed atomic additions and one clock read when the call
//! ends. [`Node::stats`](crate::Node::stats) copies them into a [`StatsSnapshot`].

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::wire::{self, Status};

/// Upper bounds of the latency buckets, in nanoseconds: 1, 2.5 and 5 of every decade from 1 µs
/// to 10 s. One more bucket takes everything slower.
const BOUNDS_NANOS: [u64; 22] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// Buckets of a histogram: one per bound plus the overflow bucket.
const BUCKETS: usize = BOUNDS_NANOS.len() + 1;

/// How a served call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler returned `Ok`.
    Ok,
    /// The handler returned the service's own error.
    ServiceError,
    /// The handler panicked, or its reply could not be encoded.
    Internal,
    /// The deadline passed while the handler ran; it was stopped.
    DeadlineExceeded,
    /// The request reached the method but did not decode as its request type.
    BadRequest,
    /// The caller cancelled the call or its connection was lost; the handler was stopped.
    /// Neither processed nor an error.
    Cancelled,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::ServiceError,
        Outcome::Internal,
        Outcome::DeadlineExceeded,
        Outcome::BadRequest,
        Outcome::Cancelled,
    ];

    /// The lowercase name used in metric labels and logs, e.g. `"service_error"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ServiceError => "service_error",
            Outcome::Internal => "internal",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::BadRequest => "bad_request",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Whether the outcome counts as an error: every outcome but `Ok` and `Cancelled`.
    pub const fn is_error(self) -> bool {
        !matches!(self, Outcome::Ok | Outcome::Cancelled)
    }

    const fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::ServiceError => 1,
            Outcome::Internal => 2,
            Outcome::DeadlineExceeded => 3,
            Outcome::BadRequest => 4,
            Outcome::Cancelled => 5,
        }
    }

    /// The outcome a handler's reply frame reports.
    pub(crate) fn of_frame(frame: &[u8]) -> Self {
        match frame
            .get(wire::HEADER_LEN..)
            .and_then(|body| wire::parse_response(body).ok())
        {
            Some((Status::Ok, ..)) => Outcome::Ok,
            Some((Status::ServiceError, ..)) => Outcome::ServiceError,
            Some((Status::DeadlineExceeded, ..)) => Outcome::DeadlineExceeded,
            Some((Status::BadRequest, ..)) => Outcome::BadRequest,
            _ => Outcome::Internal,
        }
    }
}

// ===== counting =====

/// A latency histogram of atomics: fixed buckets, so recording is one addition per bucket
/// count and one for the sum.
#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // A value equal to a bound belongs to that bound's bucket (`le` in Prometheus terms).
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)),
            sum: Duration::from_nanos(self.sum_nanos.load(Relaxed)),
        }
    }
}

/// The counters of one hosted method on one node.
#[derive(Default)]
pub(crate) struct MethodStats {
    /// Calls that reached the method. In flight = started − finished, so a call costs one
    /// addition when it starts rather than two.
    started: AtomicU64,
    finished: [AtomicU64; Outcome::ALL.len()],
    latency: Histogram,
}

impl MethodStats {
    /// Counts a call that started at `at` as in flight until the guard is finished or dropped
    /// (dropped unfinished: cancelled). `span` is the call's span, which gets the outcome.
    pub(crate) fn start_at(&self, at: Instant, span: tracing::Span) -> CallGuard<&Self> {
        self.started.fetch_add(1, Relaxed);
        CallGuard {
            stats: self,
            start: at,
            span,
            done: false,
        }
    }

    fn finish(&self, outcome: Outcome, elapsed: Duration) {
        self.latency.record(elapsed);
        self.finished[outcome.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, service: &str, method: &str) -> MethodSnapshot {
        // Finished before started: both only grow, so the difference does not go negative
        // for lack of an increment that the other load already saw.
        let outcomes: [u64; Outcome::ALL.len()] =
            std::array::from_fn(|i| self.finished[i].load(Relaxed));
        let started = self.started.load(Relaxed);
        MethodSnapshot {
            service: service.to_owned(),
            method: method.to_owned(),
            in_flight: started.saturating_sub(outcomes.iter().sum()),
            outcomes,
            latency: self.latency.snapshot(),
        }
    }
}

/// One call in flight. Finish it with its outcome; dropping it unfinished (the handler's task
/// was aborted, or the caller dropped a same-process call) counts it as cancelled.
pub(crate) struct CallGuard<S: Deref<Target = MethodStats>> {
    stats: S,
    start: Instant,
    span: tracing::Span,
    done: bool,
}

impl<S: Deref<Target = MethodStats>> CallGuard<S> {
    /// Ends the call now.
    pub(crate) fn finish(self, outcome: Outcome) {
        self.finish_at(outcome, Instant::now());
    }

    fn finish_at(mut self, outcome: Outcome, now: Instant) {
        self.record(outcome, now);
    }

    fn record(&mut self, outcome: Outcome, now: Instant) {
        self.done = true;
        self.stats
            .finish(outcome, now.saturating_duration_since(self.start));
        crate::trace::record_outcome(&self.span, outcome.as_str());
    }
}

impl CallGuard<&MethodStats> {
    /// The same call, held by a task that outlives the borrow. `stats` must be the counters
    /// this guard borrows.
    pub(crate) fn into_shared(mut self, stats: &Arc<MethodStats>) -> CallGuard<Arc<MethodStats>> {
        debug_assert!(std::ptr::eq(self.stats, &**stats));
        self.done = true;
        CallGuard {
            stats: stats.clone(),
            start: self.start,
            span: std::mem::replace(&mut self.span, tracing::Span::none()),
            done: false,
        }
    }
}

impl<S: Deref<Target = MethodStats>> Drop for CallGuard<S> {
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome::Cancelled, Instant::now());
        }
    }
}

// ===== snapshots =====

/// The call statistics of every method a node hosts, copied at one moment.
///
/// ```
/// # async fn run(node: skynet::Node) {
/// let stats = node.stats();
/// if let Some(say) = stats.method("echo", "say") {
///     println!("{} ok, {} errors, {} running", say.processed(), say.errors(), say.in_flight);
///     println!("p99 {:?}", say.latency.quantile(0.99));
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// One entry per hosted method, sorted by service, then method.
    pub methods: Vec<MethodSnapshot>,
}

impl StatsSnapshot {
    /// The statistics of `service.method`, if this node hosts it.
    pub fn method(&self, service: &str, method: &str) -> Option<&MethodSnapshot> {
        self.methods
            .iter()
            .find(|m| m.service == service && m.method == method)
    }

    /// A snapshot of `methods`, sorted by service, then method.
    pub(crate) fn from_methods(methods: impl IntoIterator<Item = MethodSnapshot>) -> Self {
        let mut methods: Vec<_> = methods.into_iter().collect();
        methods.sort_by(|a, b| (&a.service, &a.method).cmp(&(&b.service, &b.method)));
        Self { methods }
    }
}

/// The statistics of one hosted method.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MethodSnapshot {
    /// The service.
    pub service: String,
    /// The method.
    pub method: String,
    /// Calls running now.
    pub in_flight: u64,
    outcomes: [u64; Outcome::ALL.len()],
    /// Time from dispatch to the reply, of every finished call whatever its outcome.
    pub latency: LatencySnapshot,
}

impl MethodSnapshot {
    /// Calls that ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()]
    }

    /// Calls that succeeded.
    pub fn processed(&self) -> u64 {
        self.count(Outcome::Ok)
    }

    /// Calls that failed: service errors, panics, deadlines exceeded and bad requests.
    pub fn errors(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|&o| self.count(o))
            .sum()
    }
}

/// A latency histogram: counts per fixed bucket and the sum of all latencies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: [u64; BUCKETS],
    sum: Duration,
}

impl LatencySnapshot {
    /// Calls recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the recorded latencies.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// The mean latency, if anything was recorded.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| {
            Duration::from_nanos(
                u64::try_from(self.sum.as_nanos() / u128::from(count)).unwrap_or(u64::MAX),
            )
        })
    }

    /// Cumulative buckets, as Prometheus has them: `(upper bound, calls at or below it)`, the
    /// last with bound `None` (+Inf) and the total count.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = BOUNDS_NANOS
            .iter()
            .map(|&b| Some(Duration::from_nanos(b)))
            .chain([None]);
        bounds.zip(self.counts.iter().scan(0, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }

    /// An estimate of quantile `q` (0 to 1), interpolating linearly inside the bucket it falls
    /// in, as Prometheus' `histogram_quantile` does. `None` if nothing was recorded; the largest
    /// finite bound if it falls in the overflow bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        let mut lower = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            let Some(&upper) = BOUNDS_NANOS.get(i) else {
                return Some(Duration::from_nanos(lower));
            };
            if n > 0 && (below + n) as f64 >= rank {
                let within = (rank - below as f64) / n as f64;
                let nanos = lower as f64 + within * (upper - lower) as f64;
                return Some(Duration::from_nanos(nanos as u64));
            }
            below += n;
            lower = upper;
        }
        Some(Duration::from_nanos(lower))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn values_land_in_the_bucket_whose_bound_they_do_not_exceed() {
        let h = Histogram::default();
        for d in [
            Duration::ZERO,
            micros(1),
            Duration::from_nanos(1_001),
            micros(10_000_000),
            micros(10_000_001),
            Duration::MAX,
        ] {
            h.record(d);
        }
        let s = h.snapshot();
        assert_eq!(s.counts[0], 2, "0 and exactly 1 µs");
        assert_eq!(s.counts[1], 1, "just over 1 µs");
        assert_eq!(s.counts[BUCKETS - 2], 1, "exactly 10 s");
        assert_eq!(s.counts[BUCKETS - 1], 2, "over 10 s");
        assert_eq!(s.count(), 6);
        let cumulative: Vec<_> = s.cumulative().collect();
        assert_eq!(cumulative.len(), BUCKETS);
        assert_eq!(cumulative[0], (Some(micros(1)), 2));
        assert_eq!(cumulative[1], (Some(Duration::from_nanos(2_500)), 3));
        assert_eq!(cumulative[BUCKETS - 1], (None, 6));
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        // Ten calls in (100 µs, 250 µs]: the median is halfway through that bucket.
        for _ in 0..10 {
            h.record(micros(200));
        }
        let s = h.snapshot();
        assert_eq!(s.quantile(0.5), Some(micros(175)));
        assert_eq!(s.quantile(1.0), Some(micros(250)));
        assert_eq!(s.quantile(0.0), Some(micros(100)));
        assert_eq!(s.mean(), Some(micros(200)));
        assert_eq!(s.sum(), micros(2_000));
        // Anything slower than the last bound is reported as the last bound.
        let slow = Histogram::default();
        slow.record(Duration::from_secs(60));
        assert_eq!(slow.snapshot().quantile(0.5), Some(Duration::from_secs(10)));
    }

    #[test]
    fn guards_count_in_flight_outcomes_and_cancellations() {
        let stats = Arc::new(MethodStats::default());
        let t0 = Instant::now();
        let ok = stats.start_at(t0, tracing::Span::none());
        let failed = stats.start_at(t0, tracing::Span::none());
        let shared = stats
            .start_at(t0, tracing::Span::none())
            .into_shared(&stats);
        let dropped = stats.start_at(t0, tracing::Span::none());
        assert_eq!(stats.snapshot("s", "m").in_flight, 4);
        ok.finish_at(Outcome::Ok, t0 + micros(3));
        failed.finish_at(Outcome::ServiceError, t0 + micros(30));
        drop(dropped);
        let s = stats.snapshot("s", "m");
        assert_eq!(s.in_flight, 1, "the shared guard still runs");
        shared.finish_at(Outcome::DeadlineExceeded, t0 + micros(300));
        let s = stats.snapshot("s", "m");
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.processed(), 1);
        assert_eq!(s.errors(), 2);
        assert_eq!(s.count(Outcome::Cancelled), 1);
        assert_eq!(s.count(Outcome::DeadlineExceeded), 1);
        assert_eq!(s.latency.count(), 4);
        assert!(s.latency.sum() >= micros(333));
    }

    #[test]
    fn reply_frames_map_to_outcomes() {
        let mut frame = Vec::new();
        wire::write_response_message(&mut frame, 1, Status::ServiceError, "no");
        assert_eq!(Outcome::of_frame(&frame), Outcome::ServiceError);
        frame.clear();
        wire::write_response_message(&mut frame, 1, Status::Ok, "");
        assert_eq!(Outcome::of_frame(&frame), Outcome::Ok);
        frame.clear();
        wire::write_response_message(&mut frame, 1, Status::Internal, "boom");
        assert_eq!(Outcome::of_frame(&frame), Outcome::Internal);
        assert_eq!(Outcome::of_frame(&[]), Outcome::Internal);
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }
}
