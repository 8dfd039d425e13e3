//! skynet: distributed services that are very hard to kill.
//!
//! Write a service as an annotated async function, host it on a [`Node`], and call it from any
//! other node over QUIC with mutual TLS 1.3, through a typed client.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skynet::{Node, ServiceError};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct HelloRequest { pub name: String }
//! #[derive(Serialize, Deserialize)]
//! pub struct HelloResponse { pub greeting: String }
//!
//! #[skynet::service]
//! async fn hello(req: HelloRequest) -> Result<HelloResponse, ServiceError> {
//!     Ok(HelloResponse { greeting: format!("Hello {}", req.name) })
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let server = Node::builder().name("greeter").development_credentials(dir.path())
//!     .service(hello).start().await?;
//! let caller = Node::builder().name("caller").development_credentials(dir.path())
//!     .start().await?;
//! let reply = hello::client(&caller).at(server.local_addr())
//!     .call(HelloRequest { name: "World".into() }).await?;
//! assert_eq!(reply.greeting, "Hello World");
//! # caller.shutdown().await; server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Pieces
//! - [`macro@service`] turns an async fn, or an `impl` block of async methods, into a hostable
//!   service and a typed client. It expands to [`ServiceDef`] and [`ServiceClient`] calls that
//!   can equally be written by hand.
//! - [`Node`] binds one UDP socket that both serves and dials, and holds one connection per
//!   peer. Calls carry deadlines; dropping a call cancels it on the server.
//! - [`store`]: with [`NodeBuilder::store`] the node is a member of the replicated config store
//!   (skynet-raft) and [`Node::store`] gives the KV, transaction, lease and watch API. Raft
//!   traffic rides the same endpoint and credentials.
//! - [`route`]: routes (chains of sync and fire-and-forget calls) stored in the config store,
//!   and the [`route::Router`] that runs them, found by name like any service.
//! - [`stats`]: every node counts the calls of each method it hosts ([`Node::stats`]) and,
//!   with [`NodeBuilder::admin`], serves them over HTTP as `/debug/vars` and `/metrics`.
//! - [`trace`]: every call carries a [`trace::TraceId`] across hops, and runs in `tracing` spans.
//! - [`tls`] creates the cluster CA and node certificates, or does it all in development mode.
//! - [`registry`]: the live view of which instances serve what, behind calls by name.
//! - [`initiator`]: HTTP, TCP and file front doors that run stored routes.
//! - The frame format and payload encodings are described for other languages in
//!   `docs/protocol.md`.
//!
//! The library alone, without the `skynet` binary's command-line dependencies:
//! `skynet = { version = "…", default-features = false }`.
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

mod admin;
mod balance;
mod client;
mod codec;
mod config;
mod error;
mod health;
mod http;
mod id_map;
pub mod initiator;
mod listener;
mod node;
mod peer;
mod random;
pub mod registry;
pub mod route;
mod rpc;
mod server;
mod service;
pub mod stats;
pub mod store;
mod sync;
pub mod tls;
pub mod trace;
mod transport;
mod wire;

pub use client::ServiceClient;
pub use codec::Encoding;
pub use config::RpcConfig;
pub use error::StoreError;
pub use error::{CallError, NodeError, RejectReason};
pub use listener::{LimitsError, ListenerLimits};
pub use node::{Node, NodeBuilder};
/// Version requirements for calls by name ([`ServiceClient::with_version`]).
pub use semver::VersionReq;
pub use service::{
    Context, IntoService, ServiceDef, ServiceDefBuilder, ServiceDefError, ServiceError, Wire,
};
pub use store::config::StoreConfig;
pub use store::handle::Store;

/// Turns an async fn, or an `impl` block of async methods, into a service and a typed client.
///
/// # On a function
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] pub struct Req { n: u32 }
/// # #[derive(Serialize, Deserialize)] pub struct Resp { n: u32 }
/// #[skynet::service(version = "1.0.0", idempotent)]
/// async fn double(ctx: skynet::Context, req: Req) -> Result<Resp, skynet::ServiceError> {
///     Ok(Resp { n: req.n * 2 })
/// }
/// ```
///
/// The function's name becomes a unit struct: pass `double` to
/// [`NodeBuilder::service`], call `double::client(&node)` for a `DoubleClient` with a
/// `call(req)` method, and `double::run(ctx, req)` to run the body directly. The service and
/// its one method are both named after the function unless `name = "..."` says otherwise.
///
/// # On an impl block
///
/// ```
/// # use skynet::ServiceError;
/// pub struct Widgets { /* state */ }
///
/// #[skynet::service(name = "widgets", version = "1.2.0")]
/// impl Widgets {
///     #[idempotent]
///     async fn get(&self, id: u64) -> Result<String, ServiceError> { Ok(format!("widget {id}")) }
///     async fn put(&self, ctx: skynet::Context, name: String) -> Result<u64, ServiceError> { Ok(1) }
/// }
/// ```
///
/// Pass a `Widgets` value to [`NodeBuilder::service`]; `Widgets::client(&node)` returns a
/// `WidgetsClient` with one async method per service method.
///
/// # Options
/// `name = "..."`, `version = "x.y.z"` (default `0.1.0`), `idempotent` (functions only; use
/// `#[idempotent]` on methods), `crate = "path"` (where skynet is, if renamed).
///
/// Methods take `&self` (impl blocks), optionally a [`Context`] first, and exactly one
/// request; they return `Result<Response, Error>` where all three types are serde types.
pub use skynet_macros::service;

// The examples of the README and the guides are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
struct GuideDoctests;

#[cfg(doctest)]
#[doc = include_str!("../../docs/routes.md")]
struct RoutesDoctests;

/// Items the generated code refers to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::client::ServiceClient;
    pub use crate::codec::Encoding;
    pub use crate::error::CallError;
    pub use crate::node::Node;
    pub use crate::service::{Context, IntoService, ServiceDef, ServiceDefError, Wire};
    pub use ::core;
    pub use ::semver::VersionReq;
    pub use ::std;

    /// Compile-time check that a type can cross the wire; its span points at the user's type.
    pub const fn assert_wire<T: Wire>() {}
}
