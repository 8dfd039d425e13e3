//! Choosing an instance for a call, and what a caller remembers about each instance.
//!
//! Choice is power-of-two-choices: among the candidates of the closest locality tier (same
//! host, then same region, then anywhere), pick two at random and take the one with the lower
//! load, where load is the latency EWMA times (in-flight calls + 1). An instance that fails at
//! the connection level is ejected at once and skipped until a background probe reaches it
//! again. Retries draw on a budget so that a failing cluster is not buried under them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use crate::peer::PeerConn;
use crate::random::random;
use crate::registry::{Instance, Registry};
use crate::sync::{Locked as _, RwLocked as _};

/// Weight of a new latency sample in the EWMA, out of 8.
const EWMA_NEW_EIGHTHS: u64 = 2;
/// An instance's latency EWMA halves for every 2^this nanoseconds (134 ms) without a reply from
/// it, so that one slow reply (a dial, a pause) does not keep it out of power-of-two choices for
/// good. A power of two, so that the load takes a shift rather than a division.
const EWMA_HALF_LIFE_SHIFT: u32 = 27;

/// `at` in nanoseconds since a fixed instant, for the stats' atomics.
fn ns_at(at: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// What the caller knows about one instance, shared by every call to it.
///
/// Aligned to its own pair of cache lines: every call to the instance, from every worker
/// thread, writes it, and whatever the allocator put next to it would pay for that.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct InstanceStats {
    in_flight: AtomicU32,
    /// Latency EWMA in nanoseconds; 0 until the first reply, so new instances get traffic soon.
    ewma_ns: AtomicU64,
    /// When the EWMA last took a sample ([`ns_at`]).
    sampled_at_ns: AtomicU64,
    /// When the calls now in flight began to wait: the last time none was ([`ns_at`]).
    waiting_since_ns: AtomicU64,
    ejected: AtomicBool,
    probing: AtomicBool,
    /// Cancelled when the instance leaves the registry: its probe stops.
    gone: CancellationToken,
}

impl InstanceStats {
    /// The load as of `now` ([`ns_at`]): a latency estimate times (in-flight calls + 1).
    ///
    /// Without calls in flight the estimate is the EWMA fading with the time since the last
    /// reply, so an idle instance gets traffic again. With calls in flight, the time they have
    /// waited without any reply is the estimate's floor instead: an instance that stopped
    /// answering (killed, cut off, stuck), or that never answered (a dial to a dead address),
    /// looks slower by the moment rather than faster, until the registry drops it. Without
    /// that, callers moved onto a dead instance as its EWMA faded, and an instance that had
    /// never answered looked the lightest of all.
    fn load_at(&self, now: u64) -> u64 {
        let in_flight = u64::from(self.in_flight.load(Ordering::Relaxed));
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        let sampled_at = self.sampled_at_ns.load(Ordering::Relaxed);
        let latency = if in_flight == 0 {
            ewma >> (now.saturating_sub(sampled_at) >> EWMA_HALF_LIFE_SHIFT).min(63)
        } else {
            let waiting_since = self.waiting_since_ns.load(Ordering::Relaxed);
            ewma.max(now.saturating_sub(sampled_at.max(waiting_since)))
        };
        latency.max(1).saturating_mul(in_flight + 1)
    }

    /// Counts a call in flight, started at `now`, until the returned guard is dropped.
    pub(crate) fn start(&self, now: Instant) -> CallGuard<'_> {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.waiting_since_ns.store(ns_at(now), Ordering::Relaxed);
        }
        CallGuard {
            stats: self,
            started: now,
        }
    }

    pub(crate) fn gone(&self) -> &CancellationToken {
        &self.gone
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }
}

/// One call in flight to an instance; records its latency when it ends well.
pub(crate) struct CallGuard<'a> {
    stats: &'a InstanceStats,
    started: Instant,
}

impl CallGuard<'_> {
    /// The call got a reply: feed its latency into the EWMA.
    pub(crate) fn answered(&self) {
        let now = Instant::now();
        let sample = u64::try_from(now.saturating_duration_since(self.started).as_nanos())
            .unwrap_or(u64::MAX);
        let old = self.stats.ewma_ns.load(Ordering::Relaxed);
        // A first sample is blended with a prior of zero like any other, so that one slow
        // first reply does not mark a new instance as slow.
        let new = if old == 0 {
            sample * EWMA_NEW_EIGHTHS / 8
        } else {
            (old * (8 - EWMA_NEW_EIGHTHS) + sample * EWMA_NEW_EIGHTHS) / 8
        };
        self.stats.ewma_ns.store(new, Ordering::Relaxed);
        self.stats
            .sampled_at_ns
            .store(ns_at(now), Ordering::Relaxed);
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where this node is, for locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locality {
    pub(crate) host: String,
    pub(crate) region: String,
}

impl Locality {
    /// 0: same host, 1: same region, 2: elsewhere.
    fn tier(&self, instance: &Instance) -> u8 {
        if instance.host == self.host {
            0
        } else if instance.region == self.region {
            1
        } else {
            2
        }
    }
}

/// The caller side of balancing: stats per instance address and the retry budget.
pub(crate) struct Balancer {
    locality: Locality,
    stats: RwLock<HashMap<SocketAddr, Arc<InstanceStats>>>,
    budget: RetryBudget,
}

impl Balancer {
    pub(crate) fn new(locality: Locality) -> Self {
        Self {
            locality,
            stats: RwLock::default(),
            budget: RetryBudget::new(Instant::now()),
        }
    }

    pub(crate) fn stats(&self, addr: SocketAddr) -> Arc<InstanceStats> {
        // Read-mostly: every call looks its candidates up, and only a new instance inserts.
        if let Some(stats) = self.stats.read_locked().get(&addr) {
            return stats.clone();
        }
        self.stats.write_locked().entry(addr).or_default().clone()
    }

    /// Takes `addr` out of rotation now; `probe` is run (once at a time) to bring it back.
    pub(crate) fn eject<F, Fut>(&self, addr: SocketAddr, probe: F)
    where
        F: FnOnce(Arc<InstanceStats>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let stats = self.stats(addr);
        stats.ejected.store(true, Ordering::Relaxed);
        if !stats.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(stats));
        }
    }

    /// Forgets instances that left the registry (their probes stop) and returns their
    /// addresses, so that the caller can give up on calls still waiting on them.
    pub(crate) fn retain(&self, keep: impl Fn(SocketAddr) -> bool) -> Vec<SocketAddr> {
        let mut stats = self.stats.write_locked();
        let mut gone = Vec::new();
        stats.retain(|addr, s| {
            let kept = keep(*addr);
            if !kept {
                s.gone.cancel();
                gone.push(*addr);
            }
            kept
        });
        gone
    }

    pub(crate) fn budget(&self) -> &RetryBudget {
        &self.budget
    }
}

/// Marks a probed instance usable again.
pub(crate) fn readmit(stats: &InstanceStats) {
    stats.ejected.store(false, Ordering::Relaxed);
    stats.probing.store(false, Ordering::Release);
}

/// Ends a probe without readmitting (the instance left the registry).
pub(crate) fn stop_probing(stats: &InstanceStats) {
    stats.probing.store(false, Ordering::Release);
}

/// What one client (one clone of it) keeps between its calls by name: its service's candidates
/// at the registry generation it last saw, with the connection to each once it made one, its
/// home instance, and calls not yet counted in the retry budget.
///
/// Kept per client rather than per node so that the call path touches no state the other
/// worker threads write: a lookup of the candidates (by service, then each one's stats by
/// address, under locks every call takes) runs only when the registry changes, a call takes
/// its connection without the node's peer table, and the budget hears of calls in batches.
#[derive(Default)]
pub(crate) struct Picker {
    state: Mutex<PickerState>,
    /// Calls not yet deposited in the retry budget.
    uncounted: AtomicU32,
}

#[derive(Default)]
struct PickerState {
    /// The registry generation the rest comes from; `None` until the first call.
    generation: Option<u64>,
    /// Whether that snapshot was read from the store (see [`RegistrySnapshot::is_loaded`]).
    loaded: bool,
    /// Every instance of the service in that snapshot.
    instances: Arc<[Instance]>,
    /// Shared with the calls in flight (see [`Picked`]); only this client's calls touch its
    /// count.
    candidates: Arc<[Candidate]>,
    /// The closest locality tier among the candidates, and their indices in it.
    closest_tier: u8,
    closest: SmallVec<[usize; 8]>,
    home: Option<Home>,
}

/// A registered instance of the service that the client's version requirement accepts.
struct Candidate {
    /// Its index in [`PickerState::instances`].
    index: usize,
    addr: SocketAddr,
    tier: u8,
    stats: Arc<InstanceStats>,
    /// The connection this client's calls to it use, once one was made: a call then takes no
    /// lock on the node's peer table and changes no count that other threads' calls change.
    /// Set once; when it dies the candidates are copied without it (see [`Picker::choose`]).
    conn: OnceLock<Arc<PeerConn>>,
}

impl Candidate {
    fn new(index: usize, addr: SocketAddr, tier: u8, stats: Arc<InstanceStats>) -> Self {
        Self {
            index,
            addr,
            tier,
            stats,
            conn: OnceLock::new(),
        }
    }

    /// A copy that keeps the connection only if it is alive.
    fn without_dead_conn(&self) -> Self {
        let copy = Self::new(self.index, self.addr, self.tier, self.stats.clone());
        if let Some(conn) = self.conn.get().filter(|c| c.is_alive()) {
            let _ = copy.conn.set(conn.clone());
        }
        copy
    }
}

/// The instance [`Picker::choose`] picked, held for the length of a call.
pub(crate) struct Picked {
    candidates: Arc<[Candidate]>,
    n: usize,
}

impl Picked {
    fn candidate(&self) -> &Candidate {
        &self.candidates[self.n]
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.candidate().addr
    }

    pub(crate) fn stats(&self) -> &InstanceStats {
        &self.candidate().stats
    }

    /// Where this client keeps its connection to the instance.
    pub(crate) fn conn(&self) -> &OnceLock<Arc<PeerConn>> {
        &self.candidate().conn
    }
}

/// Calls a client counts before it deposits them in the retry budget: a budget that lags by
/// a few calls per client makes no difference, an atomic every worker writes on every call does.
const DEPOSIT_EVERY: u32 = 16;

/// One call in this many feeds its latency into the instance's EWMA (see
/// [`Picker::count_call`]).
const SAMPLE_EVERY: u32 = 4;

/// What [`Picker::choose`] found.
pub(crate) enum Choice<T> {
    /// The registry view has not been read yet: it says nothing about which instances exist.
    NotLoaded,
    /// No registered instance matches.
    NoInstance,
    Chosen(T),
}

impl Clone for Picker {
    /// A clone starts with the same home and finds its candidates afresh.
    fn clone(&self) -> Self {
        let home = self.state.locked().home;
        Self {
            state: Mutex::new(PickerState {
                home,
                ..PickerState::default()
            }),
            uncounted: AtomicU32::new(0),
        }
    }
}

impl std::fmt::Debug for Picker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.locked();
        f.debug_struct("Picker")
            .field("generation", &state.generation)
            .field("candidates", &state.candidates.len())
            .field("home", &state.home.map(|h| h.addr))
            .finish_non_exhaustive()
    }
}

impl Picker {
    /// Counts one call for the retry budget. Returns whether the call's latency should feed
    /// the instance's EWMA: one call in [`SAMPLE_EVERY`] does, which follows the latency as
    /// well at any useful rate and spares the other calls a clock read and two stores to a
    /// line every worker writes.
    pub(crate) fn count_call(&self, budget: &RetryBudget) -> bool {
        // A load and a store rather than a read-modify-write: a clone is normally used by one
        // task at a time, and a count off by one when it is not costs nothing.
        let uncounted = self.uncounted.load(Ordering::Relaxed) + 1;
        if uncounted >= DEPOSIT_EVERY {
            budget.deposit(uncounted);
            self.uncounted.store(0, Ordering::Relaxed);
        } else {
            self.uncounted.store(uncounted, Ordering::Relaxed);
        }
        uncounted % SAMPLE_EVERY == 1
    }

    /// Picks an instance of `service` for a call at `now`: among the registered ones that
    /// `wanted` accepts, avoiding ejected ones and those in `avoid` (already tried by this call)
    /// while others are left. The client's home instance is the first of the two choices (see
    /// [`Home`]). Returns the pick, and what `chosen` makes of its registry entry.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn choose<R>(
        &self,
        balancer: &Balancer,
        registry: &Registry,
        service: &str,
        wanted: impl Fn(&Instance) -> bool,
        avoid: &[SocketAddr],
        now: Instant,
        chosen: impl FnOnce(&Instance) -> R,
    ) -> Choice<(Picked, R)> {
        let mut state = self.state.locked();
        let generation = registry.generation();
        if state.generation != Some(generation) {
            state.refresh(balancer, registry, service, wanted);
            state.generation = Some(generation);
        }
        if !state.loaded {
            // Read afresh next time: the view may be loaded before its generation moves.
            state.generation = None;
            return Choice::NotLoaded;
        }
        let home = state.home.filter(|h| h.settled(now));
        let home_index = state
            .home
            .and_then(|h| state.candidates.iter().position(|c| c.addr == h.addr));
        let usable = |c: &Candidate| !c.stats.is_ejected() && !avoid.contains(&c.addr);
        let at = ns_at(now);
        let settled = match (home, home_index) {
            (Some(home), Some(h)) => {
                let compare = home.calls_left % COMPARE_EVERY == 0;
                state.settled_choice(h, usable, compare, at)
            }
            _ => None,
        };
        let n = match settled {
            Some(n) => n,
            None => {
                // No heap allocation for a handful of instances: allocations freed on another
                // thread contend for the allocator's locks.
                let loads: SmallVec<[(usize, u8, u64, bool); 8]> = state
                    .candidates
                    .iter()
                    .enumerate()
                    .map(|(n, c)| (n, c.tier, c.stats.load_at(at), usable(c)))
                    .collect();
                let margin = if home.is_some() { SETTLED } else { OPEN };
                match pick(&loads, random(), home_index.map(|h| (h, margin))) {
                    Some(n) => n,
                    None => return Choice::NoInstance,
                }
            }
        };
        if state.candidates[n]
            .conn
            .get()
            .is_some_and(|c| !c.is_alive())
        {
            // Rare (a connection died): the next call to it dials and keeps the new one.
            state.candidates = state
                .candidates
                .iter()
                .map(Candidate::without_dead_conn)
                .collect();
        }
        let candidate = &state.candidates[n];
        let result = chosen(&state.instances[candidate.index]);
        state.home = Some(Home::after(home, candidate.addr, now));
        let picked = Picked {
            candidates: state.candidates.clone(),
            n,
        };
        Choice::Chosen((picked, result))
    }
}

impl PickerState {
    /// Takes the candidates from the registry's current snapshot.
    fn refresh(
        &mut self,
        balancer: &Balancer,
        registry: &Registry,
        service: &str,
        wanted: impl Fn(&Instance) -> bool,
    ) {
        let snapshot = registry.snapshot();
        self.loaded = snapshot.is_loaded();
        self.instances = snapshot.instances(service);
        self.candidates = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.registered && wanted(i))
            .map(|(index, i)| {
                Candidate::new(
                    index,
                    i.addr,
                    balancer.locality.tier(i),
                    balancer.stats(i.addr),
                )
            })
            .collect();
        self.closest_tier = self.candidates.iter().map(|c| c.tier).min().unwrap_or(0);
        self.closest = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.tier == self.closest_tier)
            .map(|(n, _)| n)
            .collect();
    }

    /// The choice while settled on the home instance, candidate `home`, if that is simple: home
    /// is usable and in the closest tier, so the pool of power of two choices is that tier,
    /// and only home's and one other's loads are read (the other instances' stats are written
    /// by every call to them, from every thread); and only if `compare`, else home is kept.
    /// `None` leaves the choice to [`pick`].
    fn settled_choice(
        &self,
        home: usize,
        usable: impl Fn(&Candidate) -> bool,
        compare: bool,
        at: u64,
    ) -> Option<usize> {
        let c = &self.candidates[home];
        if c.tier != self.closest_tier || !usable(c) {
            return None;
        }
        if !compare {
            return Some(home);
        }
        let seed = random();
        let n = self.closest.len();
        // The other choice: a random one of the closest tier other than home.
        let first = (seed % n as u64) as usize;
        let other = match self.closest[first] {
            o if o != home => o,
            _ if n > 1 => self.closest[(first + 1) % n],
            _ => return Some(home),
        };
        let o = &self.candidates[other];
        let lighter = usable(o)
            && o.stats.load_at(at).saturating_mul(SETTLED.num)
                < c.stats.load_at(at).saturating_mul(SETTLED.den);
        Some(if lighter { other } else { home })
    }
}

/// Where a client's calls went last, so that its next call prefers the same instance.
///
/// Plain power of two choices sends consecutive calls of one caller to different instances,
/// and so through different connections whose tasks run on other worker threads. It also breaks
/// up the convoys that form on a connection (a batch of replies wakes its callers, whose next
/// requests leave in one batch again), so batches shrink and wake-ups multiply: measured, that
/// cost about a third of the throughput at 64 calls in flight over 3 instances, and so did
/// leaving home whenever a random other instance looked a quarter lighter (one call in eight
/// moved, on noise).
///
/// So a client settles on its home instance for a while ([`SETTLE_CALLS`] calls, at most
/// [`SETTLE_FOR`]) and leaves it then only for one less than half as loaded, which it looks
/// for every [`COMPARE_EVERY`] calls: a slow or stuck instance is still left soon. When the while is over, the home is the first of the two
/// choices and is left for one a quarter lighter, which is what spreads callers evenly over
/// time.
#[derive(Debug, Clone, Copy)]
struct Home {
    addr: SocketAddr,
    /// Calls left until the choice is open again.
    calls_left: u32,
    /// When the choice is open again at the latest.
    until: Instant,
}

/// Calls a client stays on its home instance before the choice is open again.
const SETTLE_CALLS: u32 = 32;
/// While settled, one call in this many compares home's load with another instance's.
const COMPARE_EVERY: u32 = 4;
/// The longest a client stays on its home instance before the choice is open again, so that a
/// client making few calls still follows changes in load.
const SETTLE_FOR: Duration = Duration::from_millis(20);
/// While settled, home is left only for an instance with less than half its load.
const SETTLED: Margin = Margin { num: 2, den: 1 };
/// When the choice is open, home is left for an instance a quarter lighter, so that noise in the
/// loads does not move a caller back and forth.
const OPEN: Margin = Margin { num: 4, den: 3 };

/// How much lighter another instance must be to leave home: `other * num < home * den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Margin {
    num: u64,
    den: u64,
}

impl Home {
    fn settled(&self, now: Instant) -> bool {
        self.calls_left > 0 && now < self.until
    }

    /// The home after a call at `now` went to `addr`, from the `settled` home before it: one
    /// settled call fewer if it stayed, settled afresh if it moved or the choice was open.
    fn after(settled: Option<Home>, addr: SocketAddr, now: Instant) -> Home {
        match settled {
            Some(home) if home.addr == addr => Home {
                calls_left: home.calls_left - 1,
                ..home
            },
            _ => Home {
                addr,
                calls_left: SETTLE_CALLS,
                until: now + SETTLE_FOR,
            },
        }
    }
}

/// Power of two choices over `(index, tier, load, usable)`: the closest tier with a usable
/// candidate, then the lighter of two: `home` (a candidate's index) if it is in that pool, and
/// one picked by `seed`. The first choice wins ties, and home wins unless the other is lighter
/// by home's [`Margin`]. Falls back to unusable candidates (ejected or already tried) only when
/// nothing else is registered, as a last resort.
fn pick(
    candidates: &[(usize, u8, u64, bool)],
    seed: u64,
    home: Option<(usize, Margin)>,
) -> Option<usize> {
    // The pool, without collecting it (this runs on every call): the usable candidates of the
    // closest tier, or every candidate if none is usable.
    let any_usable = candidates.iter().any(|c| c.3);
    let tier = candidates
        .iter()
        .filter(|c| c.3 || !any_usable)
        .map(|c| c.1)
        .min()?;
    let in_pool = |c: &&(usize, u8, u64, bool)| if any_usable { c.3 && c.1 == tier } else { true };
    let pool = || candidates.iter().filter(in_pool);
    let n = pool().count();
    let nth = |i: usize| pool().nth(i);
    match n {
        0 => None,
        1 => nth(0).map(|c| c.0),
        n => {
            let first = home
                .and_then(|(h, _)| pool().position(|c| c.0 == h))
                .unwrap_or((seed % n as u64) as usize);
            // A second, different index.
            let second = (first + 1 + ((seed >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (nth(first)?, nth(second)?);
            let lighter = match home {
                Some((h, m)) if h == a.0 => b.2.saturating_mul(m.num) < a.2.saturating_mul(m.den),
                _ => b.2 < a.2,
            };
            Some(if lighter { b.0 } else { a.0 })
        }
    }
}

/// Retries allowed: a fifth of the calls made, plus a floor that refills over time, so a
/// failing cluster sees at most about 20% more calls than it would without retries. Counted
/// in thousandths of a retry.
pub(crate) struct RetryBudget {
    /// Deposits of calls not yet added to `state`: every call deposits, so that is one atomic
    /// add rather than a lock; a withdrawal folds them in.
    deposited: AtomicU64,
    state: Mutex<(u64, Instant)>,
}

/// One retry, in budget units.
const RETRY_COST: u64 = 1000;
/// Each call adds a fifth of a retry.
const RETRY_PER_CALL: u64 = 200;
/// Budget that refills per second whatever the traffic (ten retries), so rare calls can still
/// retry.
const RETRY_FLOOR_PER_SEC: u64 = 10 * RETRY_COST;
/// Most budget that can be saved up (a hundred retries).
const RETRY_CAP: u64 = 100 * RETRY_COST;

impl RetryBudget {
    fn new(now: Instant) -> Self {
        Self {
            deposited: AtomicU64::new(0),
            state: Mutex::new((RETRY_FLOOR_PER_SEC, now)),
        }
    }

    /// Counts `calls` calls.
    pub(crate) fn deposit(&self, calls: u32) {
        // Capped when folded in; until then it cannot overflow in any realistic run.
        self.deposited
            .fetch_add(u64::from(calls) * RETRY_PER_CALL, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state.locked();
        let deposited = self.deposited.swap(0, Ordering::Relaxed);
        let elapsed_ms =
            u64::try_from(now.saturating_duration_since(s.1).as_millis()).unwrap_or(u64::MAX);
        let refill = elapsed_ms.saturating_mul(RETRY_FLOOR_PER_SEC) / 1000;
        s.0 =
            s.0.saturating_add(deposited)
                .saturating_add(refill)
                .min(RETRY_CAP);
        s.1 = now;
        if s.0 >= RETRY_COST {
            s.0 -= RETRY_COST;
            true
        } else {
            false
        }
    }
}

/// The pause before retry number `attempt` (1-based): full jitter over 1, 2, 4 … ms, at most
/// 32 ms; the retry goes to another instance, so the pause only spreads retries out.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap_us = 1000u64 << attempt.saturating_sub(1).min(5);
    Duration::from_micros(random() % cap_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_prefers_the_closest_tier_then_the_lighter_of_two() {
        // Same host (tier 0) wins over a lighter instance elsewhere.
        let c = [(0, 2, 1, true), (1, 0, 1000, true)];
        for seed in 0..50 {
            assert_eq!(pick(&c, seed, None), Some(1));
        }
        // Two in the same tier: the lighter one, whichever order they are drawn in.
        let c = [(0, 1, 500, true), (1, 1, 5, true)];
        for seed in 0..50 {
            assert_eq!(pick(&c, seed, None), Some(1));
        }
        // Unusable ones are skipped while a usable one exists...
        let c = [(0, 0, 1, false), (1, 2, 9, true)];
        assert_eq!(pick(&c, 7, None), Some(1));
        // ...and used as a last resort.
        let c = [(0, 0, 1, false)];
        assert_eq!(pick(&c, 7, None), Some(0));
        assert_eq!(pick(&[], 7, None), None);
    }

    #[test]
    fn pick_stays_home_unless_another_is_lighter() {
        // Equal loads: the home instance every time, whatever the random second choice.
        let equal: Vec<_> = (0..3).map(|i| (i, 0, 10, true)).collect();
        for _ in 0..100 {
            assert_eq!(pick(&equal, random(), Some((2, OPEN))), Some(2));
        }
        // Home is the busiest: any second choice is lighter and wins.
        let busy_home = [(0, 0, 10, true), (1, 0, 10, true), (2, 0, 50, true)];
        for margin in [OPEN, SETTLED] {
            for _ in 0..100 {
                assert_ne!(pick(&busy_home, random(), Some((2, margin))), Some(2));
            }
        }
        // A third heavier: left when the choice is open, kept while settled.
        let heavier_home = [(0, 0, 10, true), (1, 0, 15, true)];
        assert_eq!(pick(&heavier_home, 0, Some((1, OPEN))), Some(0));
        assert_eq!(pick(&heavier_home, 0, Some((1, SETTLED))), Some(1));
        // A home outside the closest tier is no first choice.
        let far_home = [(0, 0, 10, true), (1, 2, 1, true)];
        assert_eq!(pick(&far_home, 3, Some((1, SETTLED))), Some(0));
    }

    #[test]
    fn a_home_settles_for_a_number_of_calls_or_a_while() {
        let (a, b): (SocketAddr, SocketAddr) =
            (([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into());
        let start = Instant::now();
        let mut home = Home::after(None, a, start);
        for _ in 1..SETTLE_CALLS {
            assert!(home.settled(start));
            home = Home::after(Some(home), a, start);
        }
        assert!(home.settled(start), "one settled call left");
        home = Home::after(Some(home), a, start);
        assert_eq!(home.addr, a);
        assert!(!home.settled(start), "settled calls used up");
        // Moving settles on the new home, and so does staying once the choice was open.
        let moved = Home::after(Some(Home::after(None, a, start)), b, start);
        assert_eq!((moved.addr, moved.calls_left), (b, SETTLE_CALLS));
        let later = start + SETTLE_FOR;
        assert!(!moved.settled(later), "settled time is over");
        let stayed = Home::after(None, b, later);
        assert!(stayed.settled(later));
    }

    /// A picker state over instances with these `(tier, load)`s (a load of in-flight calls at
    /// a latency EWMA of 1 ns, sampled at time 0).
    fn state_of(loads: &[(u8, u32)]) -> PickerState {
        let mut state = PickerState::default();
        let mut candidates = Vec::new();
        for (n, &(tier, load)) in loads.iter().enumerate() {
            let stats = Arc::new(InstanceStats::default());
            stats.ewma_ns.store(1, Ordering::Relaxed);
            stats.in_flight.store(load - 1, Ordering::Relaxed);
            let addr = ([127, 0, 0, 1], 7000 + n as u16).into();
            candidates.push(Candidate::new(n, addr, tier, stats));
        }
        state.candidates = candidates.into();
        state.closest_tier = loads.iter().map(|l| l.0).min().unwrap_or(0);
        state.closest = (0..loads.len())
            .filter(|&n| loads[n].0 == state.closest_tier)
            .collect();
        state
    }

    #[test]
    fn a_settled_client_leaves_home_only_for_half_the_load() {
        let usable = |_: &Candidate| true;
        // Another a third lighter: home stays, whichever other is drawn.
        let state = state_of(&[(0, 30), (0, 20), (0, 20)]);
        for _ in 0..50 {
            assert_eq!(state.settled_choice(0, usable, true, 0), Some(0));
        }
        // Every other under half: home is left.
        let state = state_of(&[(0, 30), (0, 10), (0, 14)]);
        for _ in 0..50 {
            assert_ne!(state.settled_choice(0, usable, true, 0), Some(0));
        }
        // Between comparisons: home, without a look at the others.
        assert_eq!(state.settled_choice(0, usable, false, 0), Some(0));
        // Alone in its tier: home, without a look at the others.
        let state = state_of(&[(0, 30), (1, 1)]);
        assert_eq!(state.settled_choice(0, usable, true, 0), Some(0));
        // Not in the closest tier, or not usable: the general choice decides.
        assert_eq!(state.settled_choice(1, usable, true, 0), None);
        assert_eq!(
            state.settled_choice(0, |c: &Candidate| c.index != 0, true, 0),
            None
        );
        // An unusable other is never taken.
        let state = state_of(&[(0, 30), (0, 1)]);
        assert_eq!(
            state.settled_choice(0, |c: &Candidate| c.index != 1, true, 0),
            Some(0)
        );
    }

    #[test]
    fn pick_spreads_over_equal_candidates() {
        let c: Vec<_> = (0..3).map(|i| (i, 0, 10, true)).collect();
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            seen[pick(&c, random(), None).expect("a pick")] += 1;
        }
        assert!(seen.iter().all(|&n| n > 30), "{seen:?}");
    }

    #[test]
    fn budget_allows_a_fifth_of_calls_plus_a_floor() {
        let start = Instant::now();
        let budget = RetryBudget::new(start);
        // The initial floor.
        let mut granted = 0;
        while budget.withdraw(start) {
            granted += 1;
        }
        assert_eq!(granted, 10);
        // 50 calls earn 10 retries.
        for _ in 0..50 {
            budget.deposit(1);
        }
        let mut granted = 0;
        while budget.withdraw(start) {
            granted += 1;
        }
        assert_eq!(granted, 10);
        // Half a second refills the floor by 5.
        let later = start + Duration::from_millis(500);
        let mut granted = 0;
        while budget.withdraw(later) {
            granted += 1;
        }
        assert_eq!(granted, 5);
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..20 {
            assert!(backoff(attempt) < Duration::from_millis(32));
        }
    }

    #[test]
    fn ewma_follows_latency_and_in_flight_counts() {
        let stats = Arc::new(InstanceStats::default());
        assert_eq!(stats.load_at(ns_at(Instant::now())), 1);
        let guard = stats.start(Instant::now());
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 1);
        guard.answered();
        drop(guard);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
        assert!(stats.ewma_ns.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn an_instance_that_stops_answering_looks_slower_by_the_moment() {
        let stats = InstanceStats::default();
        let sampled = 5_000_000_000;
        stats.ewma_ns.store(50_000, Ordering::Relaxed);
        stats.sampled_at_ns.store(sampled, Ordering::Relaxed);
        stats.in_flight.store(3, Ordering::Relaxed);
        // Answering: the EWMA.
        assert_eq!(stats.load_at(sampled + 10_000), 50_000 * 4);
        // Silent for a second with calls in flight: a second's latency, not a faded one.
        assert_eq!(stats.load_at(sampled + 1_000_000_000), 1_000_000_000 * 4);
    }

    #[test]
    fn an_instance_that_never_answers_does_not_look_lightest() {
        let stats = InstanceStats::default();
        let started = Instant::now();
        let _waiting = stats.start(started);
        let at = ns_at(started);
        assert_eq!(
            stats.load_at(at),
            2,
            "new: light, so that it gets traffic soon"
        );
        // Still unanswered after 10 ms: heavier than an instance answering in 1 ms with 4
        // calls in flight.
        assert!(stats.load_at(at + 10_000_000) > 1_000_000 * 5);
    }

    #[test]
    fn a_slow_sample_fades_while_the_instance_is_idle() {
        let stats = InstanceStats::default();
        stats.ewma_ns.store(1 << 40, Ordering::Relaxed);
        let sampled = 5_000_000_000;
        stats.sampled_at_ns.store(sampled, Ordering::Relaxed);
        assert_eq!(stats.load_at(sampled), 1 << 40);
        let half_life = 1u64 << EWMA_HALF_LIFE_SHIFT;
        assert_eq!(stats.load_at(sampled + half_life), 1 << 39);
        assert_eq!(stats.load_at(sampled + 10 * half_life), 1 << 30);
    }
}
