//! How a node takes part in the store: [`StoreConfig`] and its validation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::StoreError;

/// How a node takes part in the config store. Validated when the node starts.
///
/// A node is either a **member** (it keeps a replica on disk and takes part in Raft, as a voter
/// or a learner) or a **client** (it keeps nothing and reaches the store through the members).
///
/// ```
/// let first = skynet::StoreConfig::bootstrap("/var/lib/skynet/a");
/// let seed: std::net::SocketAddr = "10.0.0.1:7000".parse().expect("an address");
/// let other = skynet::StoreConfig::join("/var/lib/skynet/b", vec![seed]).voters(5);
/// let app = skynet::StoreConfig::client(vec![seed]);
/// assert!(first.validate().is_ok() && other.validate().is_ok() && app.validate().is_ok());
/// assert!(skynet::StoreConfig::client(Vec::new()).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `None` for a client.
    pub(super) data_dir: Option<PathBuf>,
    pub(super) bootstrap: bool,
    pub(super) seeds: Vec<SocketAddr>,
    pub(super) voters: usize,
    pub(super) timeout: Duration,
    pub(super) join_timeout: Duration,
}

impl StoreConfig {
    /// The first member of a new cluster: it initializes the cluster with itself as the only
    /// voter. Harmless on restart (an initialized member is left as it is).
    pub fn bootstrap(data_dir: impl Into<PathBuf>) -> Self {
        Self::new(Some(data_dir.into()), true, Vec::new())
    }

    /// A member that joins through any of `seeds` (addresses of existing members).
    pub fn join(data_dir: impl Into<PathBuf>, seeds: Vec<SocketAddr>) -> Self {
        Self::new(Some(data_dir.into()), false, seeds)
    }

    /// A client: the node keeps no replica and sends every request to the members at `seeds`
    /// (and to the leaders they name). Watches long-poll a member. This is how most processes
    /// of a large cluster use the store.
    pub fn client(seeds: Vec<SocketAddr>) -> Self {
        Self::new(None, false, seeds)
    }

    fn new(data_dir: Option<PathBuf>, bootstrap: bool, seeds: Vec<SocketAddr>) -> Self {
        Self {
            data_dir,
            bootstrap,
            seeds,
            voters: 3,
            timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
        }
    }

    /// How many voters the cluster grows to as members join: 1, 3 (default) or 5. Read on the
    /// leader when it admits a member.
    pub fn voters(mut self, voters: usize) -> Self {
        self.voters = voters;
        self
    }

    /// How long a store request may take, including finding the leader. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long [`crate::NodeBuilder::start`] keeps trying the seeds. Default 30 s.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// The directory holding this member's id and Raft data; `None` for a client.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Whether this is a client (no replica) rather than a member.
    pub fn is_client(&self) -> bool {
        self.data_dir.is_none()
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), StoreError> {
        let fail = |m: &str| Err(StoreError::Config(m.to_owned()));
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return fail("the data directory is empty");
        }
        if self.bootstrap && !self.seeds.is_empty() {
            return fail("a bootstrapping member takes no seeds");
        }
        if !self.bootstrap && self.seeds.is_empty() {
            return fail("a joining member or a client needs at least one seed");
        }
        if ![1, 3, 5].contains(&self.voters) {
            return fail("voters must be 1, 3 or 5");
        }
        if self.timeout.is_zero() || self.join_timeout.is_zero() {
            return fail("timeouts must be above zero");
        }
        Ok(())
    }
}
