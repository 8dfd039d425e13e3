//! Calling services: typed calls, JSON calls, deadlines, the same-process fast path, and calls
//! by name through the registry (balanced, with ejection and budgeted retries).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::{self, Choice};
use crate::codec::{self, CodecError, Encoding};
use crate::error::{CallError, RejectReason};
use crate::node::Node;
use crate::registry::{Instance, Registry, RegistrySnapshot};
use crate::rpc::{Reply, bad_request, decode_reply, traced};
use crate::service::{ServiceDef, Wire};
use crate::wire::{self, Status};

/// Calls the methods of one service. Cheap to clone; the `with_*` and `at` methods return a
/// changed copy, so per-call options never leak into other calls.
///
/// Where a call goes: to [`ServiceClient::at`]'s address if one is set; otherwise to the
/// service in this process, if it hosts it (a call that never touches the network or the
/// codec); otherwise, on a node with a store, to an instance chosen from the live registry
/// (see [`ServiceClient::call`]).
#[derive(Clone, Debug)]
pub struct ServiceClient {
    node: Node,
    service: Arc<str>,
    target: Option<SocketAddr>,
    deadline: Option<Duration>,
    encoding: Encoding,
    version: Option<semver::VersionReq>,
    retry_after_loss: bool,
    /// What this copy keeps between calls by name.
    picker: balance::Picker,
}

/// Where a call goes.
enum Target<'a> {
    /// A service hosted by this node: no socket, no codec for typed calls.
    Local(&'a ServiceDef),
    /// The node at an address.
    Address(SocketAddr),
    /// An instance chosen by name from the registry view.
    ByName(&'a Registry),
}

// Here rather than in `node.rs`: the node assembles the layers and knows nothing of the
// clients that call through it.
impl Node {
    /// A client for `service`, by name. Generated clients wrap one of these.
    pub fn client(&self, service: &str) -> ServiceClient {
        ServiceClient::new(self, service)
    }
}

impl ServiceClient {
    /// A client for `service` that calls through `node`.
    pub fn new(node: &Node, service: &str) -> Self {
        Self {
            node: node.clone(),
            service: service.into(),
            target: None,
            deadline: None,
            encoding: Encoding::Bincode,
            version: None,
            retry_after_loss: false,
            picker: balance::Picker::default(),
        }
    }

    /// Whether a call by name that may have reached an instance before it failed (the
    /// connection broke, or the instance left the registry) may be sent again to another
    /// instance. By default only methods the service marks idempotent are; a caller that knows
    /// more — a request that is safe to repeat — can say so here.
    pub fn with_retry_after_loss(mut self, allowed: bool) -> Self {
        self.retry_after_loss = allowed;
        self
    }

    /// Calls only instances whose version matches `requirement` (a local service too).
    pub fn with_version(mut self, requirement: semver::VersionReq) -> Self {
        self.version = Some(requirement);
        // The candidates it kept were chosen under the old requirement.
        self.picker = balance::Picker::default();
        self
    }

    /// Sends calls to the node at `addr`.
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.target = Some(addr);
        self
    }

    /// The deadline of each call made through this copy; otherwise the node's default.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The payload encoding for remote calls. Default bincode; JSON is useful for debugging
    /// and is what dynamic callers use.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// The service this client calls.
    pub fn service(&self) -> &str {
        &self.service
    }

    fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(self.node.config().default_deadline)
    }

    fn target(&self) -> Result<Target<'_>, String> {
        let local = self.node.local_service(&self.service).filter(|def| {
            self.version
                .as_ref()
                .is_none_or(|v| v.matches(def.version()))
        });
        match (self.target, local) {
            (Some(addr), Some(def)) if addr == self.node.local_addr() => Ok(Target::Local(def)),
            (Some(addr), _) => Ok(Target::Address(addr)),
            (None, Some(def)) => Ok(Target::Local(def)),
            (None, None) => match self.node.registry_view() {
                Some(registry) => Ok(Target::ByName(registry)),
                None => Err(format!(
                    "service {:?} is not hosted here, no address was given (use .at(addr)), \
                     and this node has no store to discover it through",
                    self.service
                )),
            },
        }
    }

    fn no_instance<E>(&self) -> CallError<E> {
        CallError::NoInstance {
            service: self.service.to_string(),
            version: self.version.as_ref().map(ToString::to_string),
        }
    }

    /// Calls `method` with a typed request. Dropping the returned future cancels the call,
    /// here and on the serving node.
    ///
    /// The call carries the [`TraceId`](crate::trace::TraceId) in scope (inside a handler: the served call's), or a
    /// new one, and runs in a `skynet.call` span.
    pub async fn call<Req: Wire, Resp: Wire, Err: Wire>(
        &self,
        method: &str,
        request: Req,
    ) -> Result<Resp, CallError<Err>> {
        traced(&self.service, method, self.call_untraced(method, request)).await
    }

    async fn call_untraced<Req: Wire, Resp: Wire, Err: Wire>(
        &self,
        method: &str,
        request: Req,
    ) -> Result<Resp, CallError<Err>> {
        let deadline = self.deadline();
        match self.target() {
            Ok(Target::Local(def)) => {
                self.node
                    .rpc()
                    .call_local(&self.service, def, method, request, deadline)
                    .await
            }
            Ok(target) => {
                let encoding = self.encoding;
                let reply = self
                    .call_encoded(target, method, encoding, deadline, |out| {
                        codec::encode_into(encoding, &request, out)
                    })
                    .await?;
                decode_reply(reply.body(), &self.service, method, deadline)
            }
            Err(reason) => Err(self.unreachable(reason)),
        }
    }

    fn unreachable<E>(&self, reason: String) -> CallError<E> {
        CallError::Unreachable {
            target: self.service.to_string(),
            reason,
        }
    }

    /// The one path of an encoded request, whatever its encoding and target: `payload`
    /// writes the request into a frame (once per attempt; see `call_by_name`).
    async fn call_encoded<E>(
        &self,
        target: Target<'_>,
        method: &str,
        encoding: Encoding,
        deadline: Duration,
        payload: impl Fn(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<Reply, CallError<E>> {
        let bytes = match target {
            Target::Local(def) => {
                let mut request = Vec::new();
                payload(&mut request).map_err(bad_request)?;
                let frame = self
                    .node
                    .rpc()
                    .call_local_encoded(&self.service, def, method, encoding, &request, deadline)
                    .await?;
                return Ok(Reply {
                    bytes: frame,
                    body_at: wire::HEADER_LEN,
                });
            }
            Target::Address(addr) => {
                let (frame, body_len) = self.node.rpc().request_frame(
                    &self.service,
                    method,
                    encoding,
                    deadline,
                    payload,
                )?;
                self.node
                    .rpc()
                    .send(addr, None, frame, body_len, deadline)
                    .await?
                    .body
            }
            Target::ByName(registry) => {
                self.call_by_name(registry, method, encoding, deadline, payload)
                    .await?
            }
        };
        Ok(Reply { bytes, body_at: 0 })
    }

    /// Calls `method` with a JSON request and returns the JSON response, for callers that do
    /// not know the service's types (routers, initiators, tools). The service decodes JSON into
    /// its own types. Traced as [`ServiceClient::call`] is.
    pub async fn call_json(
        &self,
        method: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, CallError<serde_json::Value>> {
        traced(
            &self.service,
            method,
            self.call_json_untraced(method, request),
        )
        .await
    }

    /// Calls `method` with a request that is JSON text already, checked but not parsed: for
    /// callers that pass a request through (initiators), so that it is never made into a tree
    /// of values, which takes many times its size. Traced as [`ServiceClient::call`] is.
    pub async fn call_json_raw(
        &self,
        method: &str,
        request: &serde_json::value::RawValue,
    ) -> Result<serde_json::Value, CallError<serde_json::Value>> {
        traced(
            &self.service,
            method,
            self.call_json_payload(method, request.get().as_bytes()),
        )
        .await
    }

    async fn call_json_untraced(
        &self,
        method: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, CallError<serde_json::Value>> {
        let payload = serde_json::to_vec(request).map_err(|e| CallError::Rejected {
            reason: RejectReason::BadRequest,
            message: e.to_string(),
        })?;
        self.call_json_payload(method, &payload).await
    }

    /// A call with `payload`, a JSON request.
    async fn call_json_payload(
        &self,
        method: &str,
        payload: &[u8],
    ) -> Result<serde_json::Value, CallError<serde_json::Value>> {
        let deadline = self.deadline();
        let target = self.target().map_err(|reason| self.unreachable(reason))?;
        let reply = self
            .call_encoded(target, method, Encoding::Json, deadline, |out| {
                out.extend_from_slice(payload);
                Ok(())
            })
            .await?;
        decode_reply(reply.body(), &self.service, method, deadline)
    }

    /// A call by name: picks an instance from the registry view and, when an attempt fails in
    /// a way that allows it, retries on another instance, within the deadline and the node's
    /// retry budget. Any call is retried when it certainly did not run (the instance could not
    /// be reached, or refused it as unavailable); a call that may have run is retried only if
    /// its method is idempotent. An instance that fails at the connection level is ejected at
    /// once; calls waiting on an instance that leaves the registry give up on it.
    ///
    /// `payload` encodes the request into a frame, once per attempt: re-encoding on the rare
    /// retry is cheaper than keeping a copy of every request.
    async fn call_by_name<E>(
        &self,
        registry: &Registry,
        method: &str,
        encoding: Encoding,
        deadline: Duration,
        payload: impl Fn(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<Vec<u8>, CallError<E>> {
        let balancer = &self.node.balancer();
        let sampled = self.picker.count_call(balancer.budget());
        let mut now = Instant::now();
        let until = now + deadline;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries = 0;
        loop {
            let wanted = |i: &Instance| self.version.as_ref().is_none_or(|v| v.matches(&i.version));
            let chosen = self.picker.choose(
                balancer,
                registry,
                &self.service,
                wanted,
                &tried,
                now,
                |instance| self.retry_after_loss || instance.is_idempotent(method),
            );
            let (picked, idempotent) = match chosen {
                Choice::Chosen(chosen) => chosen,
                Choice::NoInstance => return Err(self.no_instance()),
                Choice::NotLoaded => {
                    // Waits for the registry's first read; if that fails, the call fails with
                    // its cause (the store is unreachable, and from where) rather than wait out
                    // its deadline knowing nothing.
                    let remaining = until.saturating_duration_since(now);
                    let settled = registry
                        .wait_for(remaining, |s| s.is_loaded() || s.unreadable().is_some())
                        .await;
                    match settled.as_deref().and_then(RegistrySnapshot::unreadable) {
                        Some(why) => {
                            return Err(CallError::Unreachable {
                                target: self.service.to_string(),
                                reason: format!("the registry cannot read the config store: {why}"),
                            });
                        }
                        None if settled.is_none() => {
                            return Err(CallError::DeadlineExceeded(deadline));
                        }
                        None => {}
                    }
                    now = Instant::now();
                    continue;
                }
            };
            let remaining = until.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(CallError::DeadlineExceeded(deadline));
            }
            let (frame, body_len) = self.node.rpc().request_frame(
                &self.service,
                method,
                encoding,
                remaining,
                &payload,
            )?;
            let (addr, stats) = (picked.addr(), picked.stats());
            let call = stats.start(now);
            // An instance that leaves the registry has its connection closed (see
            // `Node::start_registry`), which ends this attempt as a lost connection.
            let outcome = self
                .node
                .rpc()
                .send(addr, Some(picked.conn()), frame, body_len, remaining)
                .await;
            // A stopping instance refuses every call sent to it until callers' views drop it:
            // going elsewhere is always right, costs each call at most one bounce (the instance
            // is not tried again), and is no sign of overload, so it draws nothing from the
            // retry budget, which is there to keep retries from piling onto sick instances.
            let mut stopping = false;
            let retry = match &outcome {
                Ok(answer) => {
                    if answer.warm && sampled {
                        call.answered();
                    }
                    // Refused before running (stopping, or at its limit): safe anywhere.
                    match wire::parse_response(&answer.body) {
                        Ok((Status::Stopping, _, _)) => {
                            stopping = true;
                            true
                        }
                        Ok((Status::Unavailable, _, _)) => true,
                        _ => false,
                    }
                }
                Err(CallError::Unreachable { .. }) => {
                    self.node.eject(addr);
                    true
                }
                // Another instance may hold a certificate this node accepts, but the same one
                // refuses again: once the picker is back at an instance it tried, the refusal
                // is the answer.
                Err(CallError::HandshakeRefused { .. }) => {
                    self.node.eject(addr);
                    !tried.contains(&addr)
                }
                Err(CallError::ConnectionLost { .. }) => {
                    if !stats.gone().is_cancelled() {
                        self.node.eject(addr);
                    }
                    idempotent
                }
                Err(_) => false,
            };
            drop(call);
            if !retry || !(stopping || balancer.budget().withdraw(Instant::now())) {
                return outcome.map(|answer| answer.body);
            }
            retries += 1;
            tracing::debug!(service = %self.service, method, %addr, retries, "retrying on another instance");
            tried.push(addr);
            let pause =
                balance::backoff(retries).min(until.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            now = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::ServiceError;
    use crate::peer::PeerConn;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A node hosting `echo.say` and a caller without services, sharing development credentials.
    async fn server_and_caller(dir: &std::path::Path) -> anyhow::Result<(Node, Node)> {
        let echo = ServiceDef::builder("echo", "1.0.0")
            .method("say", |_, text: String| async move {
                Ok::<String, ServiceError>(text)
            })
            .build()?;
        let server = Node::builder()
            .name("server")
            .development_credentials(dir)
            .service(echo)
            .start()
            .await?;
        let caller = Node::builder()
            .name("caller")
            .development_credentials(dir)
            .start()
            .await?;
        Ok((server, caller))
    }

    /// Sends `echo.say(text)` to `addr` through `kept`; returns the reply and whether the
    /// connection was already open.
    async fn say(
        client: &ServiceClient,
        addr: SocketAddr,
        kept: &OnceLock<Arc<PeerConn>>,
        text: &str,
    ) -> anyhow::Result<(String, bool)> {
        let (frame, body_len) = client.node.rpc().request_frame::<String>(
            &client.service,
            "say",
            Encoding::Bincode,
            DEADLINE,
            |out| codec::encode_into(Encoding::Bincode, &text.to_owned(), out),
        )?;
        let answer = client
            .node
            .rpc()
            .send::<String>(addr, Some(kept), frame, body_len, DEADLINE)
            .await?;
        let reply: String = decode_reply::<String, String>(&answer.body, "echo", "say", DEADLINE)?;
        Ok((reply, answer.warm))
    }

    #[tokio::test]
    async fn a_kept_connection_is_used_until_it_dies_then_replaced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (server, caller) = server_and_caller(dir.path()).await?;
        let addr = server.local_addr();
        let client = caller.client("echo");
        let kept = OnceLock::new();

        assert_eq!(
            say(&client, addr, &kept, "one").await?,
            ("one".to_owned(), false)
        );
        let first = kept.get().cloned().expect("the call kept its connection");
        assert!(first.is_alive());
        assert_eq!(
            say(&client, addr, &kept, "two").await?,
            ("two".to_owned(), true)
        );

        // The node gives up on the connection (as when it ejects the instance): the kept copy
        // is dead at once, and the next call dials a new one rather than failing on it.
        caller.rpc().peers.forget_addr(addr, b"test");
        assert!(!first.is_alive());
        assert_eq!(
            say(&client, addr, &kept, "three").await?,
            ("three".to_owned(), false)
        );
        assert!(caller.rpc().peers.is_connected(addr));

        caller.shutdown().await;
        server.shutdown().await;
        Ok(())
    }

    /// No call is reading the call stream of an idle connection, yet its death is noticed at
    /// once: balancing asks [`Peers::is_connected`](crate::peer::Peers::is_connected) of it.
    #[tokio::test]
    async fn an_idle_connection_is_known_dead_as_soon_as_it_closes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (server, caller) = server_and_caller(dir.path()).await?;
        let addr = server.local_addr();
        let client = caller.client("echo");
        let kept = OnceLock::new();
        say(&client, addr, &kept, "one").await?;
        let conn = kept.get().cloned().expect("the call kept its connection");
        assert!(caller.rpc().peers.is_connected(addr));

        server.shutdown().await;
        tokio::time::timeout(DEADLINE, conn.until_dead()).await?;
        assert!(!caller.rpc().peers.is_connected(addr));
        caller.shutdown().await;
        Ok(())
    }
}
