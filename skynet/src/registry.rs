//! The service registry: every hosted service instance is a key in the config store, bound to
//! its node's lease, and every node keeps a live view of them, pushed by the store's watch.
//!
//! - **Registration** (`Registration`): on start a node writes one [`Instance`] record per
//!   hosted application service under `skynet/instances/<service>/<address>`, all bound to one
//!   lease that the node keeps alive (keep-alives never touch the Raft log). A node that dies
//!   stops keeping it alive, and the leader deletes its records when the lease runs out: that is
//!   the reaper. A node that finds its lease gone (it was cut off for longer than the TTL)
//!   grants a new one and writes its records again.
//! - **The view** ([`Registry`]): a range read of the prefix, then a watch from that read's
//!   revision, applied to an immutable snapshot that callers read without waiting on anything.
//!   The call path never asks the store.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Readiness};
use crate::store::mirror::{MirrorView, mirror_prefix};
use crate::store::{Event, EventKind, KeyValue, LeaseId, Op, Revision, Store, StoreError, Txn};
use crate::sync::Locked as _;

/// Where instance records live in the store.
pub const INSTANCES_PREFIX: &str = "skynet/instances/";

/// One running instance of a service, as registered in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Instance {
    /// The service name.
    pub service: String,
    /// The service version.
    pub version: semver::Version,
    /// The hosting node's name.
    pub node: String,
    /// Where the node listens.
    pub addr: SocketAddr,
    /// The host the node runs on (its host name unless configured).
    pub host: String,
    /// The node's region (`"unknown"` unless configured).
    pub region: String,
    /// When the node started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Whether the instance takes new traffic. An unregistered instance stays up and answers
    /// calls already routed to it, but callers choose other instances.
    pub registered: bool,
    /// The service's methods, sorted.
    pub methods: Vec<String>,
    /// The methods marked idempotent, sorted: callers retry only these after a call may have
    /// reached the instance.
    pub idempotent: Vec<String>,
}

impl Instance {
    /// The store key of this record.
    pub fn key(&self) -> String {
        instance_key(&self.service, self.addr)
    }

    /// Whether `method` may be retried once it may have run.
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.idempotent
            .binary_search_by(|m| m.as_str().cmp(method))
            .is_ok()
    }
}

fn instance_key(service: &str, addr: SocketAddr) -> String {
    format!("{INSTANCES_PREFIX}{service}/{addr}")
}

/// Every known instance at one store revision. Cheap to share: readers hold an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct RegistrySnapshot {
    /// Whether this snapshot comes from the store (the view's first read has finished).
    loaded: bool,
    /// Before the first read succeeded: why the last one failed.
    unreadable: Option<Arc<str>>,
    revision: Revision,
    by_key: BTreeMap<String, Instance>,
    by_service: HashMap<String, Arc<[Instance]>>,
}

impl RegistrySnapshot {
    /// The store revision this snapshot reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the snapshot was read from the store: `false` only for the empty view a node
    /// has before its first read finishes.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Why the view could not read the store yet: `Some` only while it has never read it, once
    /// an attempt has failed (the store's own timeout and retries spent), with the store's
    /// error (which members were tried, and what happened).
    pub fn unreadable(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }

    /// Every instance of `service`, registered or not, ordered by key.
    pub fn instances(&self, service: &str) -> Arc<[Instance]> {
        self.by_service
            .get(service)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Every instance of every service, ordered by service, then address.
    pub fn all(&self) -> impl Iterator<Item = &Instance> {
        self.by_key.values()
    }

    /// Whether an instance at `addr` serves `service`.
    pub fn contains(&self, service: &str, addr: SocketAddr) -> bool {
        self.by_key.contains_key(&instance_key(service, addr))
    }

    /// A snapshot of the records in `kvs` (a range read at `revision`).
    fn from_records(revision: Revision, kvs: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let mut snapshot = Self {
            loaded: true,
            revision,
            ..Self::default()
        };
        for (key, value) in kvs {
            snapshot.put(key, &value);
        }
        snapshot.reindex();
        snapshot
    }

    /// Applies one change; returns what the change did to the instance at `key`, if anything.
    fn apply(&mut self, kind: EventKind, key: String, value: &[u8]) -> Option<Change> {
        match kind {
            EventKind::Put => self.put(key, value),
            EventKind::Delete => self.by_key.remove(&key).map(Change::Left),
        }
    }

    fn put(&mut self, key: String, value: &[u8]) -> Option<Change> {
        match serde_json::from_slice::<Instance>(value) {
            Ok(instance) if instance.key() == key => {
                let change = match self.by_key.get(&key) {
                    None => Change::Joined(instance.clone()),
                    Some(_) => Change::Updated(instance.clone()),
                };
                self.by_key.insert(key, instance);
                Some(change)
            }
            Ok(_) => {
                tracing::warn!(%key, "instance record does not match its key; ignored");
                self.by_key.remove(&key).map(Change::Left)
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "unreadable instance record; ignored");
                self.by_key.remove(&key).map(Change::Left)
            }
        }
    }

    fn reindex(&mut self) {
        let mut by_service: HashMap<String, Vec<Instance>> = HashMap::new();
        for instance in self.by_key.values() {
            by_service
                .entry(instance.service.clone())
                .or_default()
                .push(instance.clone());
        }
        self.by_service = by_service
            .into_iter()
            .map(|(service, list)| (service, Arc::from(list)))
            .collect();
    }
}

/// What one registry change did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A new instance.
    Joined(Instance),
    /// An instance's record changed (registered or unregistered, typically).
    Updated(Instance),
    /// An instance left: deregistered, or its node's lease ran out.
    Left(Instance),
}

/// This node's live view of the registry, from [`crate::Node::registry`]. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    snapshot: tokio::sync::watch::Receiver<Arc<RegistrySnapshot>>,
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Bumped after every new snapshot: callers check it on every call, which reads a line no
    /// one writes in between, where borrowing the snapshot would take the view's lock.
    generation: Arc<AtomicU64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("revision", &self.snapshot.borrow().revision)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The current snapshot: what callers choose instances from.
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Every instance of `service` in the current snapshot.
    pub fn instances(&self, service: &str) -> Arc<[Instance]> {
        self.snapshot.borrow().instances(service)
    }

    /// The number of snapshots published so far. A snapshot read after this returned a number
    /// is at least that new.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A receiver of every later snapshot (it always holds the newest; intermediate ones may be
    /// skipped).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<RegistrySnapshot>> {
        self.snapshot.clone()
    }

    /// A receiver of every later change, in order. A receiver that falls more than 1,024
    /// changes behind gets `Lagged` and should read [`Registry::snapshot`] again.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Waits until the snapshot satisfies `accept` (checked now and at every change), and
    /// returns it; `None` if `timeout` passes first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        accept: impl Fn(&RegistrySnapshot) -> bool,
    ) -> Option<Arc<RegistrySnapshot>> {
        let mut rx = self.snapshot.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|s| accept(s))).await;
        match found {
            Ok(Ok(snapshot)) => Some(snapshot.clone()),
            _ => None,
        }
    }
}

/// Reads every instance from the store once, linearizably (for tools; nodes keep a live
/// [`Registry`] instead).
pub async fn read(store: &Store) -> Result<RegistrySnapshot, StoreError> {
    let (kvs, revision) = store.range(INSTANCES_PREFIX).await?;
    Ok(RegistrySnapshot::from_records(
        revision,
        kvs.into_iter().map(|kv| (kv.key, kv.value)),
    ))
}

/// Starts the view's task: read, then follow the watch, until `stop`.
pub(crate) fn start_view(store: Store, stop: CancellationToken) -> Registry {
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(RegistrySnapshot::default()));
    let (changes, _) = tokio::sync::broadcast::channel(1024);
    let generation = Arc::new(AtomicU64::new(0));
    let registry = Registry {
        snapshot: rx,
        changes: changes.clone(),
        generation: generation.clone(),
    };
    let view = View {
        tx,
        generation,
        changes,
    };
    tokio::spawn(async move {
        tokio::select! {
            () = mirror_prefix(store, INSTANCES_PREFIX, view) => {}
            () = stop.cancelled() => {}
        }
    });
    registry
}

/// The registry's side of the store mirror: snapshots of the instance records, the changes
/// between them, and the generation counter callers check.
struct View {
    tx: tokio::sync::watch::Sender<Arc<RegistrySnapshot>>,
    generation: Arc<AtomicU64>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl MirrorView for View {
    const NAME: &'static str = "registry view";
    const WATCH: &'static str = "registry watch";
    type State = RegistrySnapshot;

    fn load(&mut self, kvs: Vec<KeyValue>, revision: Revision) -> RegistrySnapshot {
        let snapshot =
            RegistrySnapshot::from_records(revision, kvs.into_iter().map(|kv| (kv.key, kv.value)));
        // Changes between the previous view and this read are reported as one diff.
        for change in diff(&self.tx.borrow(), &snapshot) {
            let _ = self.changes.send(change);
        }
        snapshot
    }

    fn apply(&mut self, snapshot: &mut RegistrySnapshot, events: Vec<Event>) {
        for event in events {
            snapshot.revision = event.revision;
            if let Some(change) = snapshot.apply(event.kind, event.key, &event.value) {
                log_change(&change);
                let _ = self.changes.send(change);
            }
        }
        snapshot.reindex();
    }

    fn publish(&mut self, snapshot: &RegistrySnapshot) {
        self.tx.send_replace(Arc::new(snapshot.clone()));
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn unreadable(&mut self, error: &StoreError) {
        if !self.tx.borrow().loaded {
            // Callers waiting for a first view fail with the cause now rather than at their
            // deadline; a loaded view is kept, stale but usable.
            self.publish(&RegistrySnapshot {
                unreadable: Some(Arc::from(error.to_string())),
                ..RegistrySnapshot::default()
            });
        }
    }
}

fn log_change(change: &Change) {
    match change {
        Change::Joined(i) => {
            tracing::info!(service = %i.service, addr = %i.addr, node = %i.node, "instance joined")
        }
        Change::Updated(i) => {
            tracing::info!(service = %i.service, addr = %i.addr, registered = i.registered, "instance updated")
        }
        Change::Left(i) => {
            tracing::info!(service = %i.service, addr = %i.addr, node = %i.node, "instance left the registry")
        }
    }
}

/// The changes that turn `old` into `new`.
fn diff(old: &RegistrySnapshot, new: &RegistrySnapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, instance) in &new.by_key {
        match old.by_key.get(key) {
            None => changes.push(Change::Joined(instance.clone())),
            Some(before) if before != instance => changes.push(Change::Updated(instance.clone())),
            Some(_) => {}
        }
    }
    for (key, instance) in &old.by_key {
        if !new.by_key.contains_key(key) {
            changes.push(Change::Left(instance.clone()));
        }
    }
    changes
}

/// How a node registers its services. Validated when the node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// Time-to-live of the node's lease: an instance whose node dies leaves the registry about
    /// this long after its last keep-alive. Keep-alives go out every third of it.
    pub ttl: Duration,
    /// After marking its instances unregistered at shutdown, how long the node waits before it
    /// closes its endpoint, refusing new calls with `Stopping` meanwhile, so that callers whose
    /// view has not caught up yet meet a refusal they retry rather than a closed endpoint.
    pub grace: Duration,
    /// How long a starting node keeps trying to register its services while the store is
    /// unreachable, slow or between leaders, before its start fails saying what it waited for.
    /// Default 30 s.
    pub start_timeout: Duration,
}

impl Default for RegistrationConfig {
    /// A 1.5 s lease, so a dead instance is culled within 2 s; 250 ms of grace.
    fn default() -> Self {
        Self {
            ttl: Duration::from_millis(1500),
            grace: Duration::from_millis(250),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A node's own instance records and the lease that keeps them alive.
pub(crate) struct Registration {
    store: Store,
    config: RegistrationConfig,
    records: Mutex<Vec<Instance>>,
    lease: Mutex<Option<LeaseId>>,
    stop: CancellationToken,
    /// The node's readiness: not serving while its records are out of the registry.
    health: Arc<Health>,
}

impl Registration {
    /// Writes every record under a fresh lease and starts keeping it alive.
    pub(crate) async fn start(
        store: Store,
        config: RegistrationConfig,
        records: Vec<Instance>,
        health: Arc<Health>,
    ) -> Result<Arc<Self>, StoreError> {
        let registration = Arc::new(Self {
            store,
            config,
            records: Mutex::new(records),
            lease: Mutex::new(None),
            stop: CancellationToken::new(),
            health,
        });
        // Each attempt grants a fresh lease and writes every record again, so an attempt whose
        // outcome is unknown is settled by the next one: a lease granted but never told of
        // expires after its TTL, and records written twice are the same records.
        let deadline = tokio::time::Instant::now() + registration.config.start_timeout;
        until_done("register this node's services", deadline, || {
            registration.register_all()
        })
        .await?;
        tokio::spawn(registration.clone().keep_alive());
        Ok(registration)
    }

    fn lease(&self) -> Option<LeaseId> {
        *self.lease.locked()
    }

    /// Grants a new lease and writes every record bound to it, in one transaction.
    async fn register_all(&self) -> Result<(), StoreError> {
        let lease = self.store.lease_grant(self.config.ttl).await?;
        let records = self.records.locked().clone();
        let puts = records
            .iter()
            .map(|r| put_op(r, lease))
            .collect::<Result<Vec<_>, _>>()?;
        self.store
            .txn(Txn {
                compares: Vec::new(),
                success: puts,
                failure: Vec::new(),
            })
            .await?;
        *self.lease.locked() = Some(lease);
        Ok(())
    }

    async fn keep_alive(self: Arc<Self>) {
        let every = self.config.ttl / 3;
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.stop.cancelled() => return,
            }
            let result = match self.lease() {
                Some(lease) => self.store.lease_keep_alive(lease).await.map(drop),
                None => Err(StoreError::Lease("no lease yet".into())),
            };
            match result {
                Ok(()) => {
                    renewed = tokio::time::Instant::now();
                    self.health.set(Readiness::Serving);
                }
                Err(StoreError::Lease(reason)) => {
                    // Cut off for longer than the TTL: the records are gone. Write them again.
                    tracing::warn!(%reason, "registration lease lost; registering again");
                    self.health.set(Readiness::Unregistered(format!(
                        "the registration lease was lost: {reason}"
                    )));
                    match self.register_all().await {
                        Ok(()) => {
                            renewed = tokio::time::Instant::now();
                            self.health.set(Readiness::Serving);
                        }
                        Err(e) => tracing::warn!(error = %e, "registering again failed; retrying"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration keep-alive failed; retrying");
                    // Past its TTL unrenewed, the lease has expired in the store: the records
                    // are gone, whatever the store says once it answers again.
                    if renewed.elapsed() > self.config.ttl {
                        self.health.set(Readiness::Unregistered(format!(
                            "the registration lease was not renewed for {:?}: {e}",
                            self.config.ttl
                        )));
                    }
                }
            }
        }
    }

    /// Marks `service`'s instance as taking new traffic or not. Returns whether this node
    /// hosts `service`.
    pub(crate) async fn set_registered(
        &self,
        service: &str,
        registered: bool,
    ) -> Result<bool, StoreError> {
        let record = {
            let mut records = self.records.locked();
            let Some(record) = records.iter_mut().find(|r| r.service == service) else {
                return Ok(false);
            };
            record.registered = registered;
            record.clone()
        };
        let Some(lease) = self.lease() else {
            return Err(StoreError::Lease("not registered yet".into()));
        };
        self.store
            .txn(Txn {
                compares: Vec::new(),
                success: vec![put_op(&record, lease)?],
                failure: Vec::new(),
            })
            .await?;
        Ok(true)
    }

    /// Marks every instance unregistered (the first step of a graceful shutdown).
    pub(crate) async fn unregister_all(&self) -> Result<(), StoreError> {
        let services: Vec<String> = self
            .records
            .locked()
            .iter()
            .map(|r| r.service.clone())
            .collect();
        for service in services {
            self.set_registered(&service, false).await?;
        }
        Ok(())
    }

    /// Stops keeping the lease alive and revokes it, deleting every record at once.
    pub(crate) async fn deregister(&self) -> Result<(), StoreError> {
        self.stop.cancel();
        match self.lease() {
            Some(lease) => self.store.lease_revoke(lease).await,
            None => Ok(()),
        }
    }
}

/// Runs `step` until it succeeds, retrying with backoff (50 ms doubling to 2 s, with jitter)
/// while it fails in a way that may pass, until `deadline`; then fails with the last error and
/// what it was waiting for.
async fn until_done<T, Fut>(
    what: &str,
    deadline: tokio::time::Instant,
    mut step: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let error = match tokio::time::timeout_at(deadline, step()).await {
            Ok(Ok(done)) => return Ok(done),
            Ok(Err(e)) if !may_pass(&e) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => {
                StoreError::Timeout(format!("attempt {attempt} was still waiting for the store"))
            }
        };
        let now = tokio::time::Instant::now();
        if now + pause >= deadline {
            return Err(StoreError::Timeout(format!(
                "could not {what} in {:?} ({attempt} attempts); last error: {error}",
                now - started
            )));
        }
        tracing::warn!(%error, attempt, "could not {what} yet; retrying");
        let jitter = Duration::from_micros(crate::random::random() % 1000 * 10);
        tokio::time::sleep(pause + jitter).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Whether a store failure may pass by itself: the store is unreachable, slow, between leaders,
/// or the outcome of a write is unknown (the lease and the records are written afresh by the
/// next attempt, so that is settled by retrying), or the lease of a slow attempt expired.
fn may_pass(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Unreachable(_)
            | StoreError::Timeout(_)
            | StoreError::Indeterminate(_)
            | StoreError::Remote(_)
            | StoreError::Lease(_)
            | StoreError::Rejected(_)
    )
}

fn put_op(record: &Instance, lease: LeaseId) -> Result<Op, StoreError> {
    let value = serde_json::to_vec(record)
        .map_err(|e| StoreError::Rejected(format!("instance record: {e}")))?;
    Ok(Op::Put {
        key: record.key(),
        value,
        lease: Some(lease),
        prev_kv: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn start_up_retries_what_may_pass_until_its_deadline() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // An unknown outcome, an unreachable store and a slow one pass: retried until done.
        let mut failures = vec![
            StoreError::Indeterminate("127.0.0.1:7002 stopped answering".into()),
            StoreError::Unreachable("connection refused".into()),
            StoreError::Timeout("no leader".into()),
        ];
        let mut calls = 0;
        let done = until_done("register", deadline, || {
            calls += 1;
            let outcome = failures.pop().map_or(Ok(calls), Err);
            async move { outcome }
        })
        .await;
        assert_eq!(done.expect("done once the store answers"), 4);

        // What cannot pass by itself is not retried.
        let mut calls = 0;
        let refused = until_done("register", deadline, || {
            calls += 1;
            async { Err::<(), _>(StoreError::Config("bad".into())) }
        })
        .await;
        assert!(matches!(refused, Err(StoreError::Config(_))));
        assert_eq!(calls, 1);

        // A store that never comes back: the start fails at the deadline, saying what it waited
        // for and why.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let never = until_done("register this node's services", deadline, || async {
            Err::<(), _>(StoreError::Unreachable("connection refused".into()))
        })
        .await;
        let message = never.expect_err("gives up").to_string();
        assert!(
            message.contains("could not register this node's services")
                && message.contains("connection refused"),
            "{message}"
        );
        assert!(tokio::time::Instant::now() <= deadline);
    }

    fn instance(service: &str, port: u16) -> Instance {
        Instance {
            service: service.into(),
            version: semver::Version::new(1, 0, 0),
            node: format!("n{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: "h".into(),
            region: "r".into(),
            started_at_ms: 1,
            registered: true,
            methods: vec!["a".into(), "b".into()],
            idempotent: vec!["b".into()],
        }
    }

    fn record(i: &Instance) -> (String, Vec<u8>) {
        (i.key(), serde_json::to_vec(i).expect("encodes"))
    }

    #[test]
    fn snapshot_indexes_applies_and_ignores_bad_records() {
        let (a, b, c) = (instance("x", 1), instance("x", 2), instance("y", 3));
        let mut s = RegistrySnapshot::from_records(
            5,
            [
                record(&a),
                record(&c),
                ("skynet/instances/x/bogus".into(), b"not json".to_vec()),
            ],
        );
        assert_eq!(s.revision(), 5);
        assert_eq!(&*s.instances("x"), std::slice::from_ref(&a));
        assert_eq!(&*s.instances("y"), std::slice::from_ref(&c));
        assert!(s.instances("z").is_empty());

        let (key, value) = record(&b);
        assert_eq!(
            s.apply(EventKind::Put, key.clone(), &value),
            Some(Change::Joined(b.clone()))
        );
        let mut b2 = b.clone();
        b2.registered = false;
        let (_, value2) = record(&b2);
        assert_eq!(
            s.apply(EventKind::Put, key.clone(), &value2),
            Some(Change::Updated(b2.clone()))
        );
        assert_eq!(
            s.apply(EventKind::Delete, a.key(), b""),
            Some(Change::Left(a.clone()))
        );
        assert_eq!(s.apply(EventKind::Delete, a.key(), b""), None);
        // A record whose contents name another key is refused.
        let (_, wrong) = record(&c);
        assert_eq!(
            s.apply(EventKind::Put, "skynet/instances/x/9".into(), &wrong),
            None
        );
        s.reindex();
        assert_eq!(&*s.instances("x"), &[b2]);
        assert!(s.contains("y", c.addr));
        assert!(!s.contains("x", a.addr));
    }

    #[test]
    fn diff_reports_joins_updates_and_departures() {
        let (a, b) = (instance("x", 1), instance("x", 2));
        let mut b2 = b.clone();
        b2.registered = false;
        let c = instance("y", 3);
        let old = RegistrySnapshot::from_records(1, [record(&a), record(&b)]);
        let new = RegistrySnapshot::from_records(2, [record(&b2), record(&c)]);
        let changes = diff(&old, &new);
        assert_eq!(
            changes,
            vec![Change::Updated(b2), Change::Joined(c), Change::Left(a)]
        );
    }

    fn kv(i: &Instance, revision: Revision) -> KeyValue {
        let (key, value) = record(i);
        KeyValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn the_view_publishes_reads_and_events_and_fails_fast_until_first_read() {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(RegistrySnapshot::default()));
        let (changes, mut changed) = tokio::sync::broadcast::channel(16);
        let generation = Arc::new(AtomicU64::new(0));
        let mut view = View {
            tx,
            generation: generation.clone(),
            changes,
        };

        // Before any read: a failed read is published with its cause, so callers by name fail
        // fast with it.
        let cause = StoreError::Unreachable("no member answered".into());
        view.unreadable(&cause);
        assert_eq!(rx.borrow().unreadable(), Some(cause.to_string().as_str()));
        assert!(!rx.borrow().is_loaded());
        assert_eq!(generation.load(Ordering::Acquire), 1);

        // A read is announced as a diff from what was published, then published itself.
        let (a, b) = (instance("x", 1), instance("x", 2));
        let mut snapshot = view.load(vec![kv(&a, 3)], 4);
        assert_eq!(changed.try_recv().ok(), Some(Change::Joined(a.clone())));
        view.publish(&snapshot);
        assert!(rx.borrow().is_loaded() && rx.borrow().unreadable().is_none());
        assert_eq!(rx.borrow().revision(), 4);

        // Events: each change is announced; the snapshot is reindexed and takes the revision.
        let (key, value) = record(&b);
        view.apply(
            &mut snapshot,
            vec![Event {
                revision: 5,
                kind: EventKind::Put,
                key,
                value,
                prev: None,
            }],
        );
        assert_eq!(changed.try_recv().ok(), Some(Change::Joined(b.clone())));
        view.publish(&snapshot);
        assert_eq!(rx.borrow().revision(), 5);
        assert_eq!(&*rx.borrow().instances("x"), &[a, b]);
        assert_eq!(generation.load(Ordering::Acquire), 3);

        // Once loaded, a failed read keeps the stale but usable view.
        view.unreadable(&cause);
        assert!(rx.borrow().is_loaded() && rx.borrow().unreadable().is_none());
        assert_eq!(generation.load(Ordering::Acquire), 3);
    }

    #[test]
    fn idempotent_lookup_uses_the_sorted_list() {
        let i = instance("x", 1);
        assert!(i.is_idempotent("b"));
        assert!(!i.is_idempotent("a"));
        assert!(!i.is_idempotent("zz"));
    }
}
