//! Whether this node is alive and serving: what the admin port answers on `/healthz` and
//! `/readyz`, so that one check serves a supervisor, a load balancer and a Kubernetes probe.
//!
//! Alive is answering at all. Serving is narrower: the node has started, its services are in the
//! registry under a live lease (when it has a store), and it is not stopping. A node whose
//! registration lease was lost (its store unreachable for longer than the lease's TTL, or the
//! lease expired) is alive but not serving until it has registered again.

use std::sync::Mutex;

use crate::sync::Locked as _;

/// Where a node stands, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Starting: joining the store, registering its services.
    Starting,
    /// Serving.
    Serving,
    /// Running, but its services are not in the registry (why).
    Unregistered(String),
    /// Its shutdown has begun: it refuses new calls.
    Stopping,
}

impl Readiness {
    /// A short name for the state, for `/readyz`'s body.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Readiness::Starting => "starting",
            Readiness::Serving => "serving",
            Readiness::Unregistered(_) => "unregistered",
            Readiness::Stopping => "stopping",
        }
    }
}

/// One node's readiness, set by the node and its registration, read by the admin port.
#[derive(Debug)]
pub(crate) struct Health(Mutex<Readiness>);

impl Default for Health {
    fn default() -> Self {
        Self(Mutex::new(Readiness::Starting))
    }
}

impl Health {
    pub(crate) fn get(&self) -> Readiness {
        self.0.locked().clone()
    }

    /// Moves to `next`, except out of `Stopping`: a stopping node never serves again.
    pub(crate) fn set(&self, next: Readiness) {
        let mut state = self.0.locked();
        if *state != Readiness::Stopping {
            *state = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_starts_not_ready_serves_and_never_serves_again_once_stopping() {
        let health = Health::default();
        assert_eq!(health.get(), Readiness::Starting);
        health.set(Readiness::Serving);
        health.set(Readiness::Unregistered("lease lost".into()));
        assert_eq!(health.get().name(), "unregistered");
        health.set(Readiness::Serving);
        health.set(Readiness::Stopping);
        health.set(Readiness::Serving);
        assert_eq!(health.get(), Readiness::Stopping);
    }
}
