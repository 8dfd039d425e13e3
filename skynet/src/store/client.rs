//! The client side: a client node's way to the store (its seeds, the members it learned, the
//! member that answered last, the members it suspects) and the loop that learns the members.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::seek::Seeker;
use super::{StoreConfig, StoreStatus, random_u64};
use crate::sync::Locked as _;

/// Between two such questions, and the deadline of each.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// A client's pause after every seed was tried without an answer.
pub(super) const CLIENT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A client node's way to the store: its configuration, and what it knows of the members (see
/// [`Seeker`]), shared by its requests and watches.
pub(crate) struct ClientShared {
    pub(super) config: StoreConfig,
    /// The members to ask, the one that answered last, the suspects; decisions in [`Seeker`].
    seeker: Mutex<Seeker>,
}

impl ClientShared {
    pub(crate) fn new(config: StoreConfig) -> Arc<Self> {
        let start = usize::try_from(random_u64() % config.seeds.len().max(1) as u64).unwrap_or(0);
        let seeker = Mutex::new(Seeker::new(config.seeds.clone(), start));
        Arc::new(Self { config, seeker })
    }

    fn seeker(&self) -> MutexGuard<'_, Seeker> {
        self.seeker.locked()
    }

    /// Marks `addr` as not answering: requests avoid it for a while, and a watch poll waiting
    /// on it moves elsewhere.
    pub(super) fn suspect(&self, addr: SocketAddr) {
        self.seeker().suspect(addr, Instant::now());
    }

    /// `addr` answered: whatever it was suspected of, it is up (a restarted member, say).
    pub(super) fn cleared(&self, addr: SocketAddr) {
        self.seeker().cleared(addr);
    }

    pub(super) fn is_suspect(&self, addr: SocketAddr) -> bool {
        self.seeker().is_suspect(addr, Instant::now())
    }

    /// Resolves once `addr` is suspected (by any request of this client).
    pub(super) async fn until_suspect(&self, addr: SocketAddr) {
        while !self.is_suspect(addr) {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// An attempt got its answer from `target`.
    pub(super) fn answered(&self, target: Option<SocketAddr>) {
        self.seeker().answered(target);
    }

    /// An attempt failed at `target`.
    pub(super) fn failed(&self, target: Option<SocketAddr>) {
        self.seeker().failed(target);
    }

    /// The members to ask: the seeds, then the members the store named that are not seeds.
    pub(super) fn candidates(&self) -> Vec<SocketAddr> {
        self.seeker().candidates()
    }

    /// Takes the members a member named as the ones to fall back on.
    pub(super) fn learn(&self, status: &StoreStatus) {
        let members: Vec<SocketAddr> = status
            .addrs
            .values()
            .filter_map(|addr| addr.parse().ok())
            .collect();
        self.seeker().learn(members);
    }

    /// Whether attempt `round` completed a pass over every member to ask.
    pub(super) fn asked_every_seed(&self, round: usize) -> bool {
        self.seeker().asked_every_seed(round)
    }

    /// The member to try first in attempt `round` (see [`Seeker::target`]).
    pub(super) fn target(&self, round: usize) -> SocketAddr {
        self.seeker().target(round, Instant::now())
    }
}
