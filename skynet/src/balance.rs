//! Choosing an instance for a call, and what a caller remembers about each instance.
//!
//! Choice is power-of-two-choices: among the candidates of the closest locality tier (same
//! host, then same region, then anywhere), pick two at random and take the one with the lower
//! load, where load is the latency EWMA times (in-flight calls + 1). An instance that fails at
//! the connection level is ejected at once and skipped until a background probe reaches it
//! again. Retries draw on a budget so that a failing cluster is not buried under them.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::registry::Instance;

/// Weight of a new latency sample in the EWMA, out of 8.
const EWMA_NEW_EIGHTHS: u64 = 2;
/// An instance's latency EWMA halves for every this long without a reply from it, so that one
/// slow reply (a dial, a pause) does not keep it out of power-of-two choices for good.
const EWMA_HALF_LIFE: Duration = Duration::from_millis(100);

/// Nanoseconds since the first call to this function: a cheap clock for the stats.
fn now_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What the caller knows about one instance, shared by every call to it.
#[derive(Debug, Default)]
pub(crate) struct InstanceStats {
    in_flight: AtomicU32,
    /// Latency EWMA in nanoseconds; 0 until the first reply, so new instances get traffic soon.
    ewma_ns: AtomicU64,
    /// When the EWMA last took a sample ([`now_ns`]).
    sampled_at_ns: AtomicU64,
    ejected: AtomicBool,
    probing: AtomicBool,
    /// Cancelled when the instance leaves the registry: its probe stops.
    gone: CancellationToken,
}

impl InstanceStats {
    /// The load as of `now` ([`now_ns`]).
    fn load_at(&self, now: u64) -> u64 {
        let in_flight = u64::from(self.in_flight.load(Ordering::Relaxed));
        let idle = now.saturating_sub(self.sampled_at_ns.load(Ordering::Relaxed));
        let halvings = idle / u64::try_from(EWMA_HALF_LIFE.as_nanos()).unwrap_or(u64::MAX);
        let ewma = self.ewma_ns.load(Ordering::Relaxed) >> halvings.min(63);
        ewma.max(1).saturating_mul(in_flight + 1)
    }

    /// Counts a call in flight until the returned guard is dropped.
    pub(crate) fn start(&self) -> CallGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard {
            stats: self,
            started: Instant::now(),
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
        let sample = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let old = self.stats.ewma_ns.load(Ordering::Relaxed);
        // A first sample is blended with a prior of zero like any other, so that one slow
        // first reply does not mark a new instance as slow.
        let new = if old == 0 {
            sample * EWMA_NEW_EIGHTHS / 8
        } else {
            (old * (8 - EWMA_NEW_EIGHTHS) + sample * EWMA_NEW_EIGHTHS) / 8
        };
        self.stats.ewma_ns.store(new, Ordering::Relaxed);
        self.stats.sampled_at_ns.store(now_ns(), Ordering::Relaxed);
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
        if let Some(stats) = self
            .stats
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
        {
            return stats.clone();
        }
        self.stats
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(addr)
            .or_default()
            .clone()
    }

    /// Picks an instance among the registered and `wanted` `candidates`, avoiding ejected ones
    /// and those in `avoid` (already tried by this call) while others are left.
    /// `home` is where this client's last call went: it is the first of the two choices.
    /// Returns the instance and its stats.
    pub(crate) fn choose<'a>(
        &self,
        candidates: &'a [Instance],
        wanted: impl Fn(&Instance) -> bool,
        avoid: &[SocketAddr],
        home: &Home,
    ) -> Option<(&'a Instance, Arc<InstanceStats>)> {
        let home_key = home.0.load(Ordering::Relaxed);
        let mut home_index = None;
        let now = now_ns();
        // One read lock for all candidates, and no stats cloned but the chosen one's: this
        // runs on every call, from every worker thread.
        let loads: Vec<(usize, u8, u64, bool)> = {
            let stats = self.stats.read().unwrap_or_else(PoisonError::into_inner);
            candidates
                .iter()
                .enumerate()
                .filter(|(_, i)| i.registered && wanted(i))
                .map(|(n, i)| {
                    if addr_key(i.addr) == home_key {
                        home_index = Some(n);
                    }
                    // An instance never called yet has no stats: idle and usable.
                    let (ejected, load) = stats
                        .get(&i.addr)
                        .map_or((false, 1), |s| (s.is_ejected(), s.load_at(now)));
                    let usable = !ejected && !avoid.contains(&i.addr);
                    (n, self.locality.tier(i), load, usable)
                })
                .collect()
        };
        let chosen = pick(&loads, random(), home_index).map(|n| &candidates[n])?;
        home.0.store(addr_key(chosen.addr), Ordering::Relaxed);
        Some((chosen, self.stats(chosen.addr)))
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
        let mut stats = self.stats.write().unwrap_or_else(PoisonError::into_inner);
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

/// Where a client's calls went last, so that its next call prefers the same instance.
///
/// Plain power of two choices sends consecutive calls of one caller to different instances,
/// and so through different connections whose tasks run on other worker threads: measured, that
/// cost about a third of the throughput at 64 calls in flight over 3 instances. Making the home
/// instance one of the two choices keeps a caller on one connection while that instance is no
/// clearly busier than a random other, and moves it as soon as it is. Each clone of a client has
/// its own home.
#[derive(Debug, Default)]
pub(crate) struct Home(AtomicU64);

impl Clone for Home {
    fn clone(&self) -> Self {
        Home(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

/// A nonzero key of `addr` for [`Home`] (0 is "no home"); a collision only costs a preference.
fn addr_key(addr: SocketAddr) -> u64 {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => u64::from(u32::from(ip)),
        std::net::IpAddr::V6(ip) => {
            let bits = u128::from(ip);
            // Folding the halves keeps loopback and link-local addresses apart.
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    (ip << 16 | u64::from(addr.port())) | 1 << 63
}

/// Power of two choices over `(index, tier, load, usable)`: the closest tier with a usable
/// candidate, then the lighter of two: `home` (a candidate's index) if it is in that pool, and
/// one picked by `seed`. The first choice wins ties, and home wins unless the other is a quarter
/// lighter. Falls back to unusable candidates
/// (ejected or already tried) only when nothing else is registered, as a last resort.
fn pick(candidates: &[(usize, u8, u64, bool)], seed: u64, home: Option<usize>) -> Option<usize> {
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
                .and_then(|h| pool().position(|c| c.0 == h))
                .unwrap_or((seed % n as u64) as usize);
            // A second, different index.
            let second = (first + 1 + ((seed >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (nth(first)?, nth(second)?);
            // Home is left only for a clearly lighter instance (by a quarter), so that noise in
            // the loads does not move a caller back and forth.
            let lighter = if home.is_some_and(|h| h == a.0) {
                b.2.saturating_mul(4) < a.2.saturating_mul(3)
            } else {
                b.2 < a.2
            };
            Some(if lighter { b.0 } else { a.0 })
        }
    }
}

/// A random u64, good enough to spread load (not for secrets).
pub(crate) fn random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9E37_79B9_7F4A_7C15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
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

    /// Counts one call.
    pub(crate) fn deposit(&self) {
        // Capped when folded in; until then it cannot overflow in any realistic run.
        self.deposited.fetch_add(RETRY_PER_CALL, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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
            assert_eq!(pick(&equal, random(), Some(2)), Some(2));
        }
        // Home is the busiest: any second choice is lighter and wins.
        let busy_home = [(0, 0, 10, true), (1, 0, 10, true), (2, 0, 50, true)];
        for _ in 0..100 {
            assert_ne!(pick(&busy_home, random(), Some(2)), Some(2));
        }
        // A home outside the closest tier is no first choice.
        let far_home = [(0, 0, 10, true), (1, 2, 1, true)];
        assert_eq!(pick(&far_home, 3, Some(1)), Some(0));
    }

    #[test]
    fn addr_keys_are_nonzero_and_tell_ports_apart() {
        let a: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        assert_ne!(addr_key(a), 0);
        assert_ne!(addr_key(a), addr_key(b));
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
            budget.deposit();
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
        assert_eq!(stats.load_at(now_ns()), 1);
        let guard = stats.start();
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 1);
        guard.answered();
        drop(guard);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
        assert!(stats.ewma_ns.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_slow_sample_fades_while_the_instance_is_idle() {
        let stats = InstanceStats::default();
        stats.ewma_ns.store(1 << 40, Ordering::Relaxed);
        let sampled = 5_000_000_000;
        stats.sampled_at_ns.store(sampled, Ordering::Relaxed);
        assert_eq!(stats.load_at(sampled), 1 << 40);
        let half_life = u64::try_from(EWMA_HALF_LIFE.as_nanos()).expect("fits");
        assert_eq!(stats.load_at(sampled + half_life), 1 << 39);
        assert_eq!(stats.load_at(sampled + 10 * half_life), 1 << 30);
    }
}
