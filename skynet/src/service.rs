//! Services as values: what a node hosts, written by `#[skynet::service]` or by hand.
//!
//! A [`ServiceDef`] is a name, a semver version and a table of methods. Each method is an async
//! function `Fn(Context, Request) -> Result<Response, Error>` whose three types are serde types.
//! The runtime needs nothing else, so a service can be built without the macro:
//!
//! ```
//! use skynet::{Context, ServiceDef, ServiceError};
//!
//! let def = ServiceDef::builder("echo", "1.0.0")
//!     .method("say", |_ctx: Context, text: String| async move {
//!         Ok::<_, ServiceError>(text)
//!     })
//!     .idempotent_method("len", |_ctx: Context, text: String| async move {
//!         Ok::<_, ServiceError>(text.len() as u64)
//!     })
//!     .build()
//!     .expect("valid service");
//! assert_eq!(def.name(), "echo");
//! assert!(def.is_idempotent("len") == Some(true));
//! ```

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Encoding};
use crate::stats::{MethodStats, StatsSnapshot};
use crate::trace::TraceId;
use crate::wire::{self, MAX_NAME_LEN, Status};

/// A type that can cross the wire: every request, response and error type of a service.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross the wire",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it"
)]
pub trait Wire: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Wire for T {}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler knows about the call it serves.
#[derive(Clone, Debug)]
pub struct Context {
    request_id: u64,
    deadline: Option<Instant>,
    remote: bool,
    trace_id: TraceId,
}

impl Context {
    pub(crate) fn new(
        request_id: u64,
        deadline: Option<Instant>,
        remote: bool,
        trace_id: TraceId,
    ) -> Self {
        Self {
            request_id,
            deadline,
            remote,
            trace_id,
        }
    }

    /// The id of the chain of calls this call belongs to, as the caller sent it (a new one if
    /// it sent none). Calls the handler makes carry it too; see [`TraceId`].
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The caller's id for this call, unique per connection; use it to correlate logs.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// When the caller stops waiting. The handler is cancelled at this instant.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline, saturating at zero.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the call came over the network (`false` for a same-process call).
    pub fn is_remote(&self) -> bool {
        self.remote
    }
}

/// The error most services return: a message and an optional machine-readable code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    code: Option<String>,
    message: String,
}

impl ServiceError {
    /// An error with a human-readable message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            code: None,
            message: message.into(),
        }
    }

    /// Adds a stable code callers can match on, e.g. `"not_found"`.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The code, if one was set.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

/// A service definition was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceDefError {
    /// Service or method names must be 1 to 255 bytes.
    #[error("invalid name {0:?}: names must be 1 to {MAX_NAME_LEN} bytes")]
    Name(String),
    /// The version is not semantic versioning.
    #[error("service {service:?}: version {version:?} is not semver: {message}")]
    Version {
        /// The service.
        service: String,
        /// What was given.
        version: String,
        /// What the parser said.
        message: String,
    },
    /// Two methods share a name.
    #[error("service {service:?}: method {method:?} is defined twice")]
    DuplicateMethod {
        /// The service.
        service: String,
        /// The repeated method.
        method: String,
    },
    /// A service needs at least one method.
    #[error("service {0:?} has no methods")]
    NoMethods(String),
}

/// Turns a value into the definition a node hosts. `#[skynet::service]` implements it for the
/// types it generates; [`ServiceDef`] and its builder implement it for hand-written services.
pub trait IntoService {
    /// Builds and validates the definition.
    fn into_service(self) -> Result<ServiceDef, ServiceDefError>;
}

/// A hosted service: name, version and methods.
#[derive(Clone)]
pub struct ServiceDef {
    name: Arc<str>,
    version: semver::Version,
    methods: HashMap<Box<str>, MethodEntry>,
    /// Served until the node drains, not refused from the start of its shutdown: the config
    /// store's own services, since refusing them would cost the cluster a member while this
    /// node still writes to it.
    pub(crate) serves_until_drained: bool,
}

#[derive(Clone)]
pub(crate) struct MethodEntry {
    pub(crate) idempotent: bool,
    pub(crate) handler: Arc<dyn ErasedHandler>,
    /// This method's counters on the node that hosts it (see [`ServiceDef::reset_stats`]).
    pub(crate) stats: Arc<MethodStats>,
}

impl fmt::Debug for ServiceDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self.methods.keys().collect();
        methods.sort();
        f.debug_struct("ServiceDef")
            .field("name", &self.name)
            .field("version", &self.version.to_string())
            .field("methods", &methods)
            .finish()
    }
}

impl ServiceDef {
    /// Starts a definition of service `name` at semver `version`.
    pub fn builder(name: impl Into<String>, version: impl Into<String>) -> ServiceDefBuilder {
        ServiceDefBuilder {
            name: name.into(),
            version: version.into(),
            methods: Vec::new(),
            serves_until_drained: false,
        }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service version.
    pub fn version(&self) -> &semver::Version {
        &self.version
    }

    /// The method names, in no particular order.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(|k| &**k)
    }

    /// Whether `method` is marked idempotent; `None` if there is no such method.
    pub fn is_idempotent(&self, method: &str) -> Option<bool> {
        self.methods.get(method).map(|m| m.idempotent)
    }

    pub(crate) fn method(&self, method: &str) -> Option<&MethodEntry> {
        self.methods.get(method)
    }

    /// Gives every method counters of its own. A node calls it on the definitions it hosts,
    /// because clones of one definition share counters and may be hosted by several nodes.
    pub(crate) fn reset_stats(&mut self) {
        for entry in self.methods.values_mut() {
            entry.stats = Arc::default();
        }
    }

    pub(crate) fn method_stats(&self) -> impl Iterator<Item = (&str, &MethodStats)> {
        self.methods.iter().map(|(name, m)| (&**name, &*m.stats))
    }
}

impl IntoService for ServiceDef {
    fn into_service(self) -> Result<ServiceDef, ServiceDefError> {
        Ok(self)
    }
}

/// Collects methods for a [`ServiceDef`]; validation happens in [`ServiceDefBuilder::build`].
#[must_use = "call build() or hand the builder to Node::builder().service(..)"]
pub struct ServiceDefBuilder {
    name: String,
    version: String,
    methods: Vec<(String, MethodEntry)>,
    serves_until_drained: bool,
}

impl ServiceDefBuilder {
    /// Keeps the service answering while its node shuts down, until the node drains (see
    /// [`ServiceDef::serves_until_drained`]).
    pub(crate) fn serves_until_drained(mut self) -> Self {
        self.serves_until_drained = true;
        self
    }

    /// Adds a method that must not be retried automatically.
    pub fn method<Req, Resp, Err, F, Fut>(self, name: impl Into<String>, handler: F) -> Self
    where
        Req: Wire,
        Resp: Wire,
        Err: Wire,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    {
        self.add(name.into(), false, handler)
    }

    /// Adds a method that is safe to run more than once, so callers may retry it.
    pub fn idempotent_method<Req, Resp, Err, F, Fut>(
        self,
        name: impl Into<String>,
        handler: F,
    ) -> Self
    where
        Req: Wire,
        Resp: Wire,
        Err: Wire,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    {
        self.add(name.into(), true, handler)
    }

    fn add<Req, Resp, Err, F, Fut>(mut self, name: String, idempotent: bool, handler: F) -> Self
    where
        Req: Wire,
        Resp: Wire,
        Err: Wire,
        F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    {
        let handler = Arc::new(FnHandler {
            f: handler,
            _types: PhantomData,
        });
        self.methods.push((
            name,
            MethodEntry {
                idempotent,
                handler,
                stats: Arc::default(),
            },
        ));
        self
    }

    /// Validates names, version and method table.
    pub fn build(self) -> Result<ServiceDef, ServiceDefError> {
        check_name(&self.name)?;
        let version =
            semver::Version::parse(&self.version).map_err(|e| ServiceDefError::Version {
                service: self.name.clone(),
                version: self.version.clone(),
                message: e.to_string(),
            })?;
        if self.methods.is_empty() {
            return Err(ServiceDefError::NoMethods(self.name));
        }
        let mut methods = HashMap::with_capacity(self.methods.len());
        for (method, entry) in self.methods {
            check_name(&method)?;
            if methods.contains_key(method.as_str()) {
                return Err(ServiceDefError::DuplicateMethod {
                    service: self.name,
                    method,
                });
            }
            methods.insert(method.into_boxed_str(), entry);
        }
        Ok(ServiceDef {
            name: self.name.into(),
            version,
            methods,
            serves_until_drained: self.serves_until_drained,
        })
    }
}

impl IntoService for ServiceDefBuilder {
    fn into_service(self) -> Result<ServiceDef, ServiceDefError> {
        self.build()
    }
}

fn check_name(name: &str) -> Result<(), ServiceDefError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        Err(ServiceDefError::Name(name.to_owned()))
    } else {
        Ok(())
    }
}

/// A same-process call's result, boxed so it can cross the type-erased method table. Holds a
/// `Result<Resp, Err>` of the method's own types.
pub(crate) type LocalReply = Box<dyn Any + Send>;

/// A method with its types erased, so one table can hold every method of every service.
pub(crate) trait ErasedHandler: Send + Sync {
    /// Decodes `payload` and starts the handler. The future yields a complete response frame
    /// (status, encoding and encoded value) for call `id`, in the request's encoding. Both
    /// kinds of call run with the context's trace id in scope, so the handler's own calls
    /// carry it.
    fn call_wire(
        &self,
        ctx: Context,
        encoding: Encoding,
        payload: &[u8],
    ) -> Result<BoxFuture<Vec<u8>>, CodecError>;

    /// Starts the handler on an already-typed request, skipping the codec. Hands the request
    /// back if its type is not the method's.
    fn call_local(
        &self,
        ctx: Context,
        request: Box<dyn Any + Send>,
    ) -> Result<BoxFuture<LocalReply>, Box<dyn Any + Send>>;
}

struct FnHandler<F, Req, Resp, Err> {
    f: F,
    _types: PhantomData<fn(Req) -> (Resp, Err)>,
}

impl<F, Fut, Req, Resp, Err> ErasedHandler for FnHandler<F, Req, Resp, Err>
where
    Req: Wire,
    Resp: Wire,
    Err: Wire,
    F: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
{
    fn call_wire(
        &self,
        ctx: Context,
        encoding: Encoding,
        payload: &[u8],
    ) -> Result<BoxFuture<Vec<u8>>, CodecError> {
        let request: Req = codec::decode(encoding, payload)?;
        let id = ctx.request_id();
        let trace = ctx.trace_id();
        let fut = (self.f)(ctx, request);
        // Inside the box, so the future stays `Unpin` for the server's inline poll.
        Ok(Box::pin(trace.scope(async move {
            let result = fut.await;
            encode_reply(id, encoding, &result)
        })))
    }

    fn call_local(
        &self,
        ctx: Context,
        request: Box<dyn Any + Send>,
    ) -> Result<BoxFuture<LocalReply>, Box<dyn Any + Send>> {
        let request = request.downcast::<Req>()?;
        let trace = ctx.trace_id();
        let fut = (self.f)(ctx, *request);
        Ok(Box::pin(
            trace.scope(async move { Box::new(fut.await) as LocalReply }),
        ))
    }
}

/// Encodes a handler's result as a response frame. A value that cannot be encoded becomes an
/// `Internal` reply rather than a dropped call.
pub(crate) fn encode_reply<Resp: Serialize, Err: Serialize>(
    id: u64,
    encoding: Encoding,
    result: &Result<Resp, Err>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let (status, written) = match result {
        Ok(value) => (
            Status::Ok,
            wire::write_response(&mut out, id, Status::Ok, encoding, |o| {
                codec::encode_into(encoding, value, o)
            }),
        ),
        Err(error) => (
            Status::ServiceError,
            wire::write_response(&mut out, id, Status::ServiceError, encoding, |o| {
                codec::encode_into(encoding, error, o)
            }),
        ),
    };
    if let Err(e) = written {
        out.clear();
        let message = format!("cannot encode {status:?} reply: {e}");
        wire::write_response_message(&mut out, id, Status::Internal, &message);
    }
    out
}

/// The counters of every method of `services`, copied now.
pub(crate) fn stats_of(services: &HashMap<Box<str>, ServiceDef>) -> StatsSnapshot {
    StatsSnapshot::from_methods(services.values().flat_map(|def| {
        def.method_stats()
            .map(|(method, stats)| stats.snapshot(def.name(), method))
    }))
}

/// The text of a handler's panic (its payload, when a string), for the caller's error: both
/// the server's dispatch and a client's in-process call run handlers and turn a panic into
/// [`Status::Internal`] rather than unwinding into the node.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> ServiceDefBuilder {
        ServiceDef::builder("echo", "1.0.0").method("say", |_: Context, s: String| async move {
            Ok::<_, ServiceError>(s)
        })
    }

    #[test]
    fn builder_validates() {
        assert!(echo().build().is_ok());
        let dup = echo()
            .method("say", |_: Context, s: String| async move {
                Ok::<_, ServiceError>(s)
            })
            .build();
        assert!(matches!(dup, Err(ServiceDefError::DuplicateMethod { .. })));
        let bad_version = ServiceDef::builder("x", "one")
            .method("m", |_: Context, s: String| async move {
                Ok::<_, ServiceError>(s)
            })
            .build();
        assert!(matches!(bad_version, Err(ServiceDefError::Version { .. })));
        assert!(matches!(
            ServiceDef::builder("x", "1.0.0").build(),
            Err(ServiceDefError::NoMethods(_))
        ));
        assert!(matches!(
            ServiceDef::builder("", "1.0.0").build(),
            Err(ServiceDefError::Name(_))
        ));
    }

    #[tokio::test]
    async fn wire_and_local_paths_agree() {
        let def = echo().build().expect("def");
        let method = def.method("say").expect("method");
        let payload = codec::encode(Encoding::Json, "hi").expect("encode");
        let ctx = Context::new(5, None, true, TraceId::from_u128(5));
        let frame = method
            .handler
            .call_wire(ctx.clone(), Encoding::Json, &payload)
            .expect("decodes")
            .await;
        let (status, encoding, body) =
            wire::parse_response(&frame[wire::HEADER_LEN..]).expect("parse");
        assert_eq!((status, encoding), (Status::Ok, Encoding::Json));
        assert_eq!(body, b"\"hi\"");

        let reply = method
            .handler
            .call_local(ctx.clone(), Box::new(String::from("hi")))
            .unwrap_or_else(|_| panic!("the request type matches"))
            .await;
        let reply = reply
            .downcast::<Result<String, ServiceError>>()
            .expect("types");
        assert_eq!(*reply, Ok("hi".to_owned()));

        assert!(
            method
                .handler
                .call_local(ctx.clone(), Box::new(5u32))
                .is_err()
        );
        assert!(
            method
                .handler
                .call_wire(ctx, Encoding::Json, b"not json")
                .is_err()
        );
    }
}
