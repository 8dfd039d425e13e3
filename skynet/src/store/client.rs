//! The client side: a client node's way to the store (its seeds, the members it learned, the
//! member that answered last, the members it suspects) and the loop that learns the members.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handle::Backend;
use super::wire::{Reply, Request};
use super::{Store, StoreConfig, StoreStatus, random_u64};

/// Between two such questions, and the deadline of each.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long a client avoids a member that stopped answering.
pub(super) const SUSPECT_FOR: Duration = Duration::from_secs(2);
/// A client's pause after every seed was tried without an answer.
pub(super) const CLIENT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A client node's way to the store: the seeds, and the member that answered last.
pub(crate) struct ClientShared {
    pub(super) config: StoreConfig,
    /// The members the store named (beyond the seeds), refreshed by [`learn_members`]: a
    /// client whose seeds are gone still finds the cluster through them.
    learned: std::sync::Mutex<Vec<SocketAddr>>,
    /// The member that answered the last request (the leader, for requests only it serves):
    /// tried first. Cleared when it fails.
    preferred: std::sync::Mutex<Option<SocketAddr>>,
    /// Where this client starts in the seed list, so that clients spread over the members.
    start: usize,
    /// Members that stopped answering, and since when: skipped for [`SUSPECT_FOR`].
    suspects: std::sync::Mutex<HashMap<SocketAddr, Instant>>,
}

impl ClientShared {
    pub(crate) fn new(config: StoreConfig) -> Arc<Self> {
        let start = usize::try_from(random_u64() % config.seeds.len().max(1) as u64).unwrap_or(0);
        Arc::new(Self {
            config,
            learned: std::sync::Mutex::default(),
            preferred: std::sync::Mutex::new(None),
            start,
            suspects: std::sync::Mutex::default(),
        })
    }

    /// Marks `addr` as not answering: requests avoid it for a while, and a watch poll waiting
    /// on it moves elsewhere.
    pub(super) fn suspect(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(addr, Instant::now());
        if self.preferred() == Some(addr) {
            self.set_preferred(None);
        }
    }

    /// `addr` answered: whatever it was suspected of, it is up (a restarted member, say).
    pub(super) fn cleared(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&addr);
    }

    pub(super) fn is_suspect(&self, addr: SocketAddr) -> bool {
        let mut suspects = self
            .suspects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match suspects.get(&addr) {
            Some(since) if since.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// Resolves once `addr` is suspected (by any request of this client).
    pub(super) async fn until_suspect(&self, addr: SocketAddr) {
        while !self.is_suspect(addr) {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    pub(super) fn preferred(&self) -> Option<SocketAddr> {
        *self
            .preferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn set_preferred(&self, addr: Option<SocketAddr>) {
        *self
            .preferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addr;
    }

    /// The members to ask: the seeds, then the members the store named that are not seeds.
    pub(super) fn candidates(&self) -> Vec<SocketAddr> {
        let learned = self
            .learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = self.config.seeds.clone();
        all.extend(learned.iter().filter(|a| !self.config.seeds.contains(a)));
        all
    }

    /// Takes the members a member named as the ones to fall back on.
    pub(super) fn learn(&self, status: &StoreStatus) {
        let members: Vec<SocketAddr> = status
            .addrs
            .values()
            .filter_map(|addr| addr.parse().ok())
            .collect();
        if !members.is_empty() {
            *self
                .learned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = members;
        }
    }

    /// Whether attempt `round` completed a pass over every member to ask.
    pub(super) fn asked_every_seed(&self, round: usize) -> bool {
        (round + 1).is_multiple_of(self.candidates().len().max(1))
    }

    /// The member to try first in attempt `round`: the preferred one, then the seeds and the
    /// members learned from the store in turn, skipping suspects unless every one is.
    pub(super) fn target(&self, round: usize) -> SocketAddr {
        if round == 0
            && let Some(addr) = self.preferred()
        {
            return addr;
        }
        let candidates = self.candidates();
        let nth = |i: usize| candidates[(self.start + round + i) % candidates.len()];
        (0..candidates.len())
            .map(nth)
            .find(|addr| !self.is_suspect(*addr))
            .unwrap_or_else(|| nth(0))
    }
}
/// How often a store client asks for the cluster's members.
const MEMBERS_REFRESH: Duration = Duration::from_secs(5);

/// Keeps a store client's list of members current until `stop`: at once, then every
/// [`MEMBERS_REFRESH`] (sooner after a failure), it asks a member for the members it knows, so
/// that a client started with one seed still finds the cluster when that seed dies.
pub(crate) fn learn_members(store: Store, stop: tokio_util::sync::CancellationToken) {
    let Backend::Client(client) = &store.backend else {
        return;
    };
    let client = client.clone();
    tokio::spawn(async move {
        let mut round = 0;
        loop {
            let target = client.target(round);
            let pause = match store
                .remote(target, Request::Status, store.config().timeout)
                .await
            {
                Ok(Reply::Status(status)) => {
                    client.learn(&status);
                    MEMBERS_REFRESH
                }
                _ => {
                    round += 1;
                    MEMBERS_REFRESH / 5
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}
