//! Routes: named chains of service calls, stored in the config store and run by routers.
//!
//! A [`Route`] is an ordered list of [`Hop`]s. Each hop names a service and a method, whether
//! the router waits for it ([`HopMode::Sync`]) or fires it and moves on ([`HopMode::Async`]),
//! whether the router may retry it on another instance, and what a failure does
//! ([`OnFailure`]). Routes are JSON in the store under [`ROUTES_PREFIX`]`<name>`, validated on
//! every write ([`Route::validate`]), and every router follows them through a [`RouteTable`]:
//! a live view pushed by the store's watch, so a changed route needs no restart.
//!
//! ```
//! use skynet::route::{Hop, Route};
//!
//! let route = Route::from_json(r#"{
//!     "name": "hello",
//!     "hops": [
//!         { "service": "hello", "method": "hello", "retry": true },
//!         { "service": "audit", "method": "record", "mode": "async", "on_failure": "skip" }
//!     ]
//! }"#).expect("a valid route");
//! assert_eq!(route.hops[0], Hop::new("hello", "hello").retry(true));
//! assert_eq!(route.hops[1], Hop::new("audit", "record").fire_and_forget());
//! ```
//!
//! Values flow through a route like this (see `docs/routes.md`): the request's input is the
//! first hop's input; a sync hop's output becomes the next hop's input; an async hop gets a copy
//! of the current value and its result is ignored; a sync hop that fails with
//! [`OnFailure::Skip`] passes its input on unchanged. The route's reply is the value after the
//! last hop, which is the output of the last sync hop that succeeded (or the input, if none did).
//!
//! The router itself is [`Router`]: the service `skynet.router`, method `run`, which any
//! process can host and any caller reaches by name ([`call`]).
//!
//! This module keeps the logic (parsing, validation, and the execution plan in
//! `route/exec.rs`) apart from the I/O (the store helpers, the [`RouteTable`] and the
//! [`Router`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::mirror::{MirrorView, mirror_prefix};
use crate::store::{Event, EventKind, KeyValue, Revision, Store, StoreError};
use crate::wire::MAX_NAME_LEN;

mod exec;
mod router;

pub use exec::{FailureKind, RouteFailure};
pub use router::{RouteClient, Router, RouterError, RouterStats, RunRoute, call, router_service};

/// Where routes live in the store: one key per route, `skynet/routes/<name>`.
pub const ROUTES_PREFIX: &str = "skynet/routes/";
/// The router's service name.
pub const ROUTER_SERVICE: &str = "skynet.router";
/// The router's service version.
pub const ROUTER_VERSION: &str = "1.0.0";
/// The router's one method: run a route ([`RunRoute`] in, the route's reply out).
pub const RUN_METHOD: &str = "run";
/// Most hops in one route.
pub const MAX_HOPS: usize = 32;
/// Longest route name, in bytes.
pub const MAX_ROUTE_NAME_LEN: usize = 128;
/// Largest route JSON accepted, in bytes.
pub const MAX_ROUTE_JSON: usize = 64 * 1024;

/// A named, ordered chain of service calls. JSON is its stored and operator-facing form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The route's name: what callers ask the router for. 1 to 128 bytes of ASCII letters,
    /// digits, `-`, `_` and `.`, starting with a letter or digit.
    pub name: String,
    /// The hops, run in order.
    pub hops: Vec<Hop>,
    /// The store revision of the route: set on a route read from the store (its last change).
    /// On a write, `None` overwrites whatever is stored; `Some(r)` writes only if the stored
    /// route is still at revision `r` (`Some(0)`: only if there is none), so that two operators
    /// editing the same route cannot silently overwrite each other. Never stored itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
}

/// One step of a route: a call of one method of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hop {
    /// The service to call, by name (any instance the registry knows).
    pub service: String,
    /// The method to call.
    pub method: String,
    /// Only instances whose version matches, e.g. `"^1.2"`; any version if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<semver::VersionReq>,
    /// Whether the router waits for the hop. Default `sync`.
    #[serde(default)]
    pub mode: HopMode,
    /// Whether the router may call the hop again, on another instance, after an attempt that
    /// may have reached a service (the connection broke, or the service stopped answering).
    /// Set it only for methods that are safe to run twice. Without it the hop is still retried
    /// when the call surely did not run (no connection could be made, or the instance refused
    /// it while draining), and an idempotent method is retried by the client anyway.
    /// Default `false`.
    #[serde(default)]
    pub retry: bool,
    /// What a failure of this hop does. Default `stop`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// Whether the router waits for a hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HopMode {
    /// The router waits for the reply, which becomes the next hop's input.
    #[default]
    Sync,
    /// Fire and forget: the router starts the call with a copy of the current value and goes
    /// on at once. The result is ignored; a failure is logged and counted.
    Async,
}

/// What a failed hop does to the route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The route stops and the caller gets the failure.
    #[default]
    Stop,
    /// The route goes on as if the hop had returned its input unchanged.
    Skip,
}

impl Hop {
    /// A sync hop calling `service.method`, not retried, whose failure stops the route.
    pub fn new(service: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            method: method.into(),
            version: None,
            mode: HopMode::Sync,
            retry: false,
            on_failure: OnFailure::Stop,
        }
    }

    /// Allows or forbids retrying the hop on another instance after an attempt that may have
    /// run.
    #[must_use]
    pub fn retry(mut self, retry: bool) -> Self {
        self.retry = retry;
        self
    }

    /// A failure of the hop passes its input on instead of stopping the route.
    #[must_use]
    pub fn skip_on_failure(mut self) -> Self {
        self.on_failure = OnFailure::Skip;
        self
    }

    /// Makes the hop async (fire and forget); its failure cannot stop the route, so it skips.
    #[must_use]
    pub fn fire_and_forget(mut self) -> Self {
        self.mode = HopMode::Async;
        self.on_failure = OnFailure::Skip;
        self
    }

    /// Calls only instances whose version matches `requirement`.
    #[must_use]
    pub fn version(mut self, requirement: semver::VersionReq) -> Self {
        self.version = Some(requirement);
        self
    }

    /// `service.method`, for messages.
    pub fn target(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }
}

impl Route {
    /// A route named `name` with `hops`, not tied to a stored revision.
    pub fn new(name: impl Into<String>, hops: Vec<Hop>) -> Self {
        Self {
            name: name.into(),
            hops,
            revision: None,
        }
    }

    /// Parses and validates a route's JSON.
    pub fn from_json(json: &str) -> Result<Self, RouteError> {
        Self::from_slice(json.as_bytes())
    }

    /// Parses and validates a route's JSON bytes.
    pub fn from_slice(json: &[u8]) -> Result<Self, RouteError> {
        if json.len() > MAX_ROUTE_JSON {
            return Err(RouteError::TooLarge {
                size: json.len(),
                max: MAX_ROUTE_JSON,
            });
        }
        let route: Route =
            serde_json::from_slice(json).map_err(|e| RouteError::Json(e.to_string()))?;
        route.validate()?;
        Ok(route)
    }

    /// The route as pretty JSON (with its revision, if it has one).
    pub fn to_json_pretty(&self) -> String {
        // A route is strings, booleans and enums: serializing it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The store key of the route.
    pub fn key(&self) -> String {
        route_key(&self.name)
    }

    /// Checks everything a router relies on; the first problem found is returned.
    ///
    /// A route must have a valid name, 1 to [`MAX_HOPS`] hops, valid service and method names
    /// (1 to 255 bytes, no whitespace, control characters or `/`; the `skynet.` prefix is
    /// reserved for skynet's own services), and at least one sync hop, since the route's reply
    /// is a sync hop's output. An async hop must say `"on_failure": "skip"`: nothing waits for
    /// it, so its failure cannot stop the route, and a route must not claim otherwise.
    pub fn validate(&self) -> Result<(), RouteError> {
        validate_name(&self.name)?;
        let route = || self.name.clone();
        if self.hops.is_empty() {
            return Err(RouteError::Empty { route: route() });
        }
        if self.hops.len() > MAX_HOPS {
            return Err(RouteError::TooManyHops {
                route: route(),
                count: self.hops.len(),
            });
        }
        for (i, hop) in self.hops.iter().enumerate() {
            let n = i + 1;
            if let Err(reason) = check_service_name(&hop.service) {
                return Err(RouteError::BadService {
                    route: route(),
                    hop: n,
                    service: hop.service.clone(),
                    reason,
                });
            }
            if let Err(reason) = check_name(&hop.method) {
                return Err(RouteError::BadMethod {
                    route: route(),
                    hop: n,
                    method: hop.method.clone(),
                    reason,
                });
            }
            if hop.mode == HopMode::Async && hop.on_failure == OnFailure::Stop {
                return Err(RouteError::AsyncCannotStop {
                    route: route(),
                    hop: n,
                    target: hop.target(),
                });
            }
        }
        if !self.hops.iter().any(|h| h.mode == HopMode::Sync) {
            return Err(RouteError::NoSyncHop { route: route() });
        }
        Ok(())
    }

    /// The JSON that is stored: the route without its revision.
    fn stored_json(&self) -> Vec<u8> {
        let stored = Route {
            revision: None,
            ..self.clone()
        };
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// A route read from the store: parsed, validated, its name matching its key.
    fn from_stored(key: &str, value: &[u8], revision: Revision) -> Result<Self, RouteError> {
        let mut route = Self::from_slice(value)?;
        let expected = key.strip_prefix(ROUTES_PREFIX).unwrap_or(key);
        if route.name != expected {
            return Err(RouteError::BadName {
                name: route.name,
                reason: "the stored route's name differs from its key",
            });
        }
        route.revision = Some(revision);
        Ok(route)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.name)?;
        for (i, hop) in self.hops.iter().enumerate() {
            let sep = if i == 0 { " " } else { " -> " };
            write!(f, "{sep}{}", hop.target())?;
            if hop.mode == HopMode::Async {
                f.write_str(" (async)")?;
            } else if hop.on_failure == OnFailure::Skip {
                f.write_str(" (skippable)")?;
            }
        }
        Ok(())
    }
}

/// The store key of route `name`.
pub fn route_key(name: &str) -> String {
    format!("{ROUTES_PREFIX}{name}")
}

/// Checks a route name against the rules of [`Route::name`]: 1 to 128 bytes of ASCII letters,
/// digits, `-`, `_` and `.`, starting with a letter or digit. For names that come from outside
/// (a URL path, a command-line flag), so that they are refused with the rule they break.
pub fn validate_name(name: &str) -> Result<(), RouteError> {
    let bad = |reason| {
        Err(RouteError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("a route needs a name");
    }
    if name.len() > MAX_ROUTE_NAME_LEN {
        return bad("route names are at most 128 bytes");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("a route name starts with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        // Route names appear in store keys and in initiators' URL paths.
        return bad("route names use only ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("names are at most 255 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("names contain no whitespace or control characters");
    }
    if name.contains('/') {
        // Registry keys are `skynet/instances/<service>/<addr>`.
        return Err("names contain no '/'");
    }
    Ok(())
}

fn check_service_name(name: &str) -> Result<(), &'static str> {
    check_name(name)?;
    if name.starts_with("skynet.") {
        // The store's services are not for routes, and a route calling the router would loop.
        return Err("the skynet. prefix is reserved for skynet's own services");
    }
    Ok(())
}

/// Why a route was refused, or a route operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The text is not a route's JSON (syntax, a missing or unknown field, a bad value).
    #[error("route JSON is invalid: {0}")]
    Json(String),
    /// The route JSON is too large.
    #[error("route JSON is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The route's name is not allowed.
    #[error("invalid route name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The route has no hops.
    #[error("route {route:?} has no hops: add at least one sync hop")]
    Empty {
        /// The route.
        route: String,
    },
    /// The route has more than [`MAX_HOPS`] hops.
    #[error("route {route:?} has {count} hops; at most {MAX_HOPS} are allowed")]
    TooManyHops {
        /// The route.
        route: String,
        /// How many it has.
        count: usize,
    },
    /// A hop's service name is not allowed.
    #[error("route {route:?}, hop {hop}: invalid service name {service:?}: {reason}")]
    BadService {
        /// The route.
        route: String,
        /// The hop, counted from 1.
        hop: usize,
        /// The name given.
        service: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A hop's method name is not allowed.
    #[error("route {route:?}, hop {hop}: invalid method name {method:?}: {reason}")]
    BadMethod {
        /// The route.
        route: String,
        /// The hop, counted from 1.
        hop: usize,
        /// The name given.
        method: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// An async hop says its failure stops the route, which cannot happen.
    #[error(
        "route {route:?}, hop {hop} ({target}) is async: nothing waits for it, so its failure \
         cannot stop the route; set \"on_failure\": \"skip\""
    )]
    AsyncCannotStop {
        /// The route.
        route: String,
        /// The hop, counted from 1.
        hop: usize,
        /// `service.method`.
        target: String,
    },
    /// Every hop is async, so the route has no reply.
    #[error(
        "route {route:?} has no sync hop: its reply is a sync hop's output, so at least one \
         hop needs \"mode\": \"sync\""
    )]
    NoSyncHop {
        /// The route.
        route: String,
    },
    /// A write with a revision found the route changed (or created, or deleted) since, or
    /// there is no such route to update.
    #[error("{}", conflict_message(route, *expected, *current))]
    Conflict {
        /// The route.
        route: String,
        /// The revision the write expected.
        expected: Revision,
        /// The stored route's revision now, `None` if there is none.
        current: Option<Revision>,
    },
    /// There is no such route.
    #[error("no route named {0:?}")]
    NotFound(String),
    /// The config store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The text of [`RouteError::Conflict`]. With no stored route, the store cannot tell whether
/// it was deleted since the read or never existed, and either way the edit has nothing to
/// apply to: say that, rather than guess "deleted".
fn conflict_message(route: &str, expected: Revision, current: Option<Revision>) -> String {
    match current {
        Some(now) => format!(
            "route {route:?} changed since revision {expected} (it is now at revision {now}); \
             read it again and reapply the edit"
        ),
        None => format!(
            "route {route:?} does not exist, so there is nothing at revision {expected} to \
             update; to create it, leave out \"revision\" (or give 0)"
        ),
    }
}

/// Validates `route` and writes it. Returns the store revision of the write: a router whose
/// table reaches it runs the new route. See [`Route::revision`] for safe concurrent edits.
pub async fn put(store: &Store, route: &Route) -> Result<Revision, RouteError> {
    route.validate()?;
    let key = route.key();
    let value = route.stored_json();
    let Some(expected) = route.revision else {
        return Ok(store.put(key, value).await?);
    };
    if let Some(revision) = store
        .compare_and_set_revision(key.clone(), expected, value)
        .await?
    {
        return Ok(revision);
    }
    let current = store.get(key).await?.map(|kv| kv.mod_revision);
    Err(RouteError::Conflict {
        route: route.name.clone(),
        expected,
        current,
    })
}

/// Reads route `name` (linearizably), with its revision; `None` if there is none.
pub async fn get(store: &Store, name: &str) -> Result<Option<Route>, RouteError> {
    validate_name(name)?;
    match store.get(route_key(name)).await? {
        Some(kv) => Route::from_stored(&kv.key, &kv.value, kv.mod_revision).map(Some),
        None => Ok(None),
    }
}

/// Reads every route (linearizably), in name order. Stored values that are not valid routes
/// (written past [`put`]) are left out and logged.
pub async fn list(store: &Store) -> Result<Vec<Route>, RouteError> {
    let (kvs, _) = store.range(ROUTES_PREFIX).await?;
    Ok(kvs
        .into_iter()
        .filter_map(
            |kv| match Route::from_stored(&kv.key, &kv.value, kv.mod_revision) {
                Ok(route) => Some(route),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "invalid stored route; left out");
                    None
                }
            },
        )
        .collect())
}

/// Deletes route `name`. Fails with [`RouteError::NotFound`] if there is none.
pub async fn delete(store: &Store, name: &str) -> Result<(), RouteError> {
    validate_name(name)?;
    match store.delete(route_key(name)).await? {
        0 => Err(RouteError::NotFound(name.to_owned())),
        _ => Ok(()),
    }
}

/// Every valid route at one store revision. Cheap to share: readers hold an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct RouteSnapshot {
    revision: Revision,
    loaded: bool,
    routes: BTreeMap<String, Arc<Route>>,
    invalid: BTreeMap<String, String>,
}

impl RouteSnapshot {
    /// The store revision this snapshot reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the store has been read at least once (before that, every route is unknown).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Route `name`, if it exists and is valid.
    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.get(name).cloned()
    }

    /// Every valid route, in name order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
    }

    /// Stored keys whose values are not valid routes, with the reason; routers ignore them.
    pub fn invalid(&self) -> impl Iterator<Item = (&str, &str)> {
        self.invalid.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn put(&mut self, key: String, value: &[u8], revision: Revision) {
        match Route::from_stored(&key, value, revision) {
            Ok(route) => {
                self.invalid.remove(&key);
                self.routes.insert(route.name.clone(), Arc::new(route));
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "invalid stored route; ignored");
                if let Some(name) = key.strip_prefix(ROUTES_PREFIX) {
                    self.routes.remove(name);
                }
                self.invalid.insert(key, e.to_string());
            }
        }
    }

    fn remove(&mut self, key: &str) {
        self.invalid.remove(key);
        if let Some(name) = key.strip_prefix(ROUTES_PREFIX) {
            self.routes.remove(name);
        }
    }
}

/// A live view of every route: a range read of [`ROUTES_PREFIX`], then the store's watch from
/// that read's revision. A change reaches the view as soon as the watch delivers it, and the
/// request path reads the view without waiting on anything. Cheap to clone; the view stops when
/// the last clone drops or the node shuts down.
#[derive(Clone)]
pub struct RouteTable {
    snapshot: tokio::sync::watch::Receiver<Arc<RouteSnapshot>>,
    _stop: Arc<DropGuard>,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot.borrow();
        f.debug_struct("RouteTable")
            .field("revision", &s.revision)
            .field("routes", &s.routes.len())
            .finish_non_exhaustive()
    }
}

impl RouteTable {
    /// Starts following the routes in `store`.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(RouteSnapshot::default()));
        let stop = CancellationToken::new();
        let node_stop = store.background().clone();
        let table = Self {
            snapshot: rx,
            _stop: Arc::new(stop.clone().drop_guard()),
        };
        tokio::spawn(async move {
            tokio::select! {
                () = mirror_prefix(store, ROUTES_PREFIX, View { tx }) => {}
                () = stop.cancelled() => {}
                () = node_stop.cancelled() => {}
            }
        });
        table
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RouteSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Route `name` as the view knows it now.
    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.snapshot.borrow().get(name)
    }

    /// Waits until the snapshot satisfies `accept` (checked now and at every change), and
    /// returns it; `None` if `timeout` passes first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        accept: impl Fn(&RouteSnapshot) -> bool,
    ) -> Option<Arc<RouteSnapshot>> {
        let mut rx = self.snapshot.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|s| accept(s))).await {
            Ok(Ok(snapshot)) => Some(snapshot.clone()),
            _ => None,
        }
    }

    /// Waits until the view has read the store once; `false` if `timeout` passes first.
    pub async fn loaded(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, RouteSnapshot::is_loaded)
            .await
            .is_some()
    }

    /// Waits until the view reflects store revision `revision` (that of a [`put`], say).
    pub async fn caught_up(&self, revision: Revision, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.loaded && s.revision >= revision)
            .await
            .is_some()
    }
}

/// The route table's side of the store mirror: a snapshot of every stored route.
struct View {
    tx: tokio::sync::watch::Sender<Arc<RouteSnapshot>>,
}

impl MirrorView for View {
    const NAME: &'static str = "route table";
    const WATCH: &'static str = "route watch";
    type State = RouteSnapshot;

    fn load(&mut self, kvs: Vec<KeyValue>, revision: Revision) -> RouteSnapshot {
        let mut snapshot = RouteSnapshot {
            revision,
            loaded: true,
            ..RouteSnapshot::default()
        };
        for kv in kvs {
            snapshot.put(kv.key, &kv.value, kv.mod_revision);
        }
        tracing::debug!(
            revision,
            routes = snapshot.routes.len(),
            "route table loaded"
        );
        snapshot
    }

    fn apply(&mut self, snapshot: &mut RouteSnapshot, events: Vec<Event>) {
        for event in events {
            snapshot.revision = snapshot.revision.max(event.revision);
            match event.kind {
                EventKind::Put => {
                    tracing::info!(key = %event.key, revision = event.revision, "route changed");
                    snapshot.put(event.key, &event.value, event.revision);
                }
                EventKind::Delete => {
                    tracing::info!(key = %event.key, revision = event.revision, "route deleted");
                    snapshot.remove(&event.key);
                }
            }
        }
    }

    fn publish(&mut self, snapshot: &RouteSnapshot) {
        self.tx.send_replace(Arc::new(snapshot.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Route {
        Route::new(
            "hello",
            vec![
                Hop::new("hello", "hello").retry(true),
                Hop::new("audit", "record").fire_and_forget(),
                Hop::new("shout", "upper").skip_on_failure(),
            ],
        )
    }

    #[test]
    fn json_round_trips_with_defaults_left_out_on_input() {
        let route = Route::from_json(
            r#"{"name":"hello","hops":[
                {"service":"hello","method":"hello","retry":true},
                {"service":"audit","method":"record","mode":"async","on_failure":"skip"},
                {"service":"shout","method":"upper","on_failure":"skip"}]}"#,
        )
        .expect("valid");
        assert_eq!(route, hello());
        let again = Route::from_json(&route.to_json_pretty()).expect("round trip");
        assert_eq!(again, route);
        assert_eq!(
            route.to_string(),
            "hello: hello.hello -> audit.record (async) -> shout.upper (skippable)"
        );
    }

    #[test]
    fn versions_and_revisions_parse() {
        let route = Route::from_json(
            r#"{"name":"v","revision":7,"hops":[{"service":"s","method":"m","version":"^1.2"}]}"#,
        )
        .expect("valid");
        assert_eq!(route.revision, Some(7));
        let req = route.hops[0].version.as_ref().expect("a requirement");
        assert!(req.matches(&semver::Version::new(1, 3, 0)));
        assert!(!req.matches(&semver::Version::new(2, 0, 0)));
        // The stored form never carries the revision: the store's own revision is the truth.
        let stored: serde_json::Value = serde_json::from_slice(&route.stored_json()).expect("json");
        assert!(stored.get("revision").is_none());
    }

    fn err(json: &str) -> RouteError {
        Route::from_json(json).expect_err("must be refused")
    }

    #[test]
    fn every_validation_rule_has_its_error() {
        assert!(matches!(err("{"), RouteError::Json(_)));
        assert!(matches!(err(r#"{"name":"x"}"#), RouteError::Json(m) if m.contains("hops")));
        assert!(matches!(
            err(r#"{"name":"x","hops":[{"service":"s","method":"m","ok_to_retry":true}]}"#),
            RouteError::Json(m) if m.contains("ok_to_retry")
        ));
        assert!(matches!(
            err(r#"{"name":"x","hops":[{"service":"s","method":"m","mode":"later"}]}"#),
            RouteError::Json(_)
        ));
        assert!(matches!(
            err(r#"{"name":"x","hops":[{"service":"s","method":"m","version":"one"}]}"#),
            RouteError::Json(_)
        ));
        assert!(matches!(
            err(r#"{"name":"","hops":[]}"#),
            RouteError::BadName { .. }
        ));
        assert!(matches!(
            err(r#"{"name":"a/b","hops":[]}"#),
            RouteError::BadName { .. }
        ));
        assert!(matches!(
            err(r#"{"name":"-a","hops":[]}"#),
            RouteError::BadName { .. }
        ));
        assert!(matches!(
            err(r#"{"name":"x","hops":[]}"#),
            RouteError::Empty { .. }
        ));
        let many = Route::new("x", vec![Hop::new("s", "m"); MAX_HOPS + 1]);
        assert_eq!(
            many.validate(),
            Err(RouteError::TooManyHops {
                route: "x".into(),
                count: MAX_HOPS + 1
            })
        );
        for service in ["", "has space", "a/b", "skynet.router"] {
            let route = Route::new("x", vec![Hop::new("ok", "m"), Hop::new(service, "m")]);
            assert!(
                matches!(route.validate(), Err(RouteError::BadService { hop: 2, .. })),
                "{service:?}"
            );
        }
        let route = Route::new("x", vec![Hop::new("s", "tab\there")]);
        assert!(matches!(
            route.validate(),
            Err(RouteError::BadMethod { hop: 1, .. })
        ));
        let mut stopping_async = Hop::new("audit", "record");
        stopping_async.mode = HopMode::Async;
        let route = Route::new("x", vec![Hop::new("s", "m"), stopping_async]);
        let e = route.validate().expect_err("refused");
        assert!(matches!(e, RouteError::AsyncCannotStop { hop: 2, .. }));
        assert!(e.to_string().contains("\"on_failure\": \"skip\""), "{e}");
        let route = Route::new("x", vec![Hop::new("audit", "record").fire_and_forget()]);
        assert_eq!(
            route.validate(),
            Err(RouteError::NoSyncHop { route: "x".into() })
        );
        let huge = " ".repeat(MAX_ROUTE_JSON + 1);
        assert!(matches!(err(&huge), RouteError::TooLarge { .. }));
    }

    #[test]
    fn a_stored_route_must_match_its_key() {
        let json = hello().stored_json();
        let route = Route::from_stored("skynet/routes/hello", &json, 9).expect("matches");
        assert_eq!(route.revision, Some(9));
        assert!(Route::from_stored("skynet/routes/other", &json, 9).is_err());
    }

    #[test]
    fn a_conflict_says_whether_the_route_exists() {
        let changed = RouteError::Conflict {
            route: "hello".into(),
            expected: 5,
            current: Some(9),
        };
        assert_eq!(
            changed.to_string(),
            "route \"hello\" changed since revision 5 (it is now at revision 9); read it again \
             and reapply the edit"
        );
        // No stored route: it may never have existed, so "deleted" would be a guess.
        let missing = RouteError::Conflict {
            route: "ghost".into(),
            expected: 5,
            current: None,
        };
        let text = missing.to_string();
        assert!(text.contains("route \"ghost\" does not exist"), "{text}");
        assert!(!text.contains("deleted"), "{text}");
    }

    #[test]
    fn route_names_from_outside_are_checked() {
        assert_eq!(validate_name("hello"), Ok(()));
        for bad in ["", "a/b", "/v1/routes/hello", "-x", "sp ace", "é"] {
            assert!(
                matches!(validate_name(bad), Err(RouteError::BadName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_table_loads_applies_events_and_publishes() {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(RouteSnapshot::default()));
        let mut view = View { tx };
        let stored = KeyValue {
            key: hello().key(),
            value: hello().stored_json(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: None,
        };
        let mut snapshot = view.load(vec![stored], 6);
        view.publish(&snapshot);
        assert!(rx.borrow().is_loaded());
        assert_eq!(rx.borrow().revision(), 6);
        assert_eq!(rx.borrow().get("hello").and_then(|r| r.revision), Some(3));

        let event = |revision, kind, value: &[u8]| Event {
            revision,
            kind,
            key: hello().key(),
            value: value.to_vec(),
            prev: None,
        };
        view.apply(
            &mut snapshot,
            vec![event(7, EventKind::Put, &hello().stored_json())],
        );
        view.publish(&snapshot);
        assert_eq!(rx.borrow().revision(), 7);
        assert_eq!(rx.borrow().get("hello").and_then(|r| r.revision), Some(7));
        view.apply(&mut snapshot, vec![event(8, EventKind::Delete, b"")]);
        view.publish(&snapshot);
        assert_eq!(rx.borrow().revision(), 8);
        assert!(rx.borrow().get("hello").is_none());
    }

    #[test]
    fn the_snapshot_follows_puts_and_deletes() {
        let mut s = RouteSnapshot::default();
        s.put(hello().key(), &hello().stored_json(), 3);
        assert_eq!(s.get("hello").and_then(|r| r.revision), Some(3));
        // A broken value replaces the route: routers must not run an older version of it.
        s.put(hello().key(), b"not json", 4);
        assert!(s.get("hello").is_none());
        assert_eq!(s.invalid().count(), 1);
        s.put(hello().key(), &hello().stored_json(), 5);
        assert_eq!(s.invalid().count(), 0);
        s.remove(&hello().key());
        assert!(s.get("hello").is_none());
    }
}
