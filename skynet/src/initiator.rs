//! Initiators: the ways requests come into a cluster. Each turns outside input into a route
//! run ([`RouteCaller::run`]) and the outcome back into the outside world's terms.
//!
//! - [`http`]: an HTML form at `/` (the original demo's page) and JSON at
//!   `POST /v1/routes/{route}`.
//! - [`tcp`]: newline-delimited JSON requests and responses.
//! - [`file`]: a JSONL file of requests in, a JSONL file of responses out, resumable after a
//!   crash without redoing finished lines.
//!
//! A route runs on a router: a call by name to the `skynet.router` service's `run` method,
//! balanced over the routers in the registry, with the route name and the input value. When
//! no router or no service can serve, the failure says which and why ([`Failure`]).

pub mod file;
pub mod http;
pub mod tcp;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::error::CallError;
use crate::node::Node;
use crate::route::{HopMode, RouteTable};

/// The service that runs routes.
pub const ROUTER_SERVICE: &str = "skynet.router";
/// Its method.
pub const RUN_METHOD: &str = "run";

/// One line of input, without its newline.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line within the limit.
    Text(String),
    /// A line over the limit (skipped up to its end), or one that is not UTF-8.
    Refused(Refusal),
}

/// Why a line of input was refused. Its `Display` is the error message answered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Longer than `max` bytes.
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 (within the limit, so the limit is not the reason).
    NotUtf8,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooLong { max } => write!(f, "the line is too long (at most {max} bytes)"),
            Refusal::NotUtf8 => f.write_str("the line is not UTF-8"),
        }
    }
}

/// The lines of `reader`, each at most `max` bytes; longer lines are skipped to their end and
/// reported, and reading goes on after them (unlike `LinesCodec`, whose stream ends at the
/// first error).
fn limited_lines<R>(
    reader: R,
    max: usize,
) -> impl futures_util::Stream<Item = std::io::Result<Line>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncBufReadExt as _;
    let reader = tokio::io::BufReader::new(reader);
    futures_util::stream::unfold(reader, move |mut reader| async move {
        let mut buf = Vec::new();
        let mut too_long = false;
        loop {
            let chunk = match reader.fill_buf().await {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(e), reader)),
            };
            if chunk.is_empty() {
                // End of input: a last line without a newline still counts.
                if buf.is_empty() && !too_long {
                    return None;
                }
                break;
            }
            let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            if !too_long && buf.len() + part.len() <= max {
                buf.extend_from_slice(part);
            } else {
                too_long = true;
                buf.clear();
            }
            let used = done.unwrap_or(chunk.len());
            reader.consume(used);
            if done.is_some() {
                break;
            }
        }
        let line = if too_long {
            Line::Refused(Refusal::TooLong { max })
        } else {
            match String::from_utf8(buf) {
                Ok(mut text) => {
                    if text.ends_with('\r') {
                        text.pop();
                    }
                    Line::Text(text)
                }
                Err(_) => Line::Refused(Refusal::NotUtf8),
            }
        };
        Some((Ok(line), reader))
    })
}

/// Runs routes on the cluster's routers, through a node with a store.
#[derive(Debug, Clone)]
pub struct RouteCaller {
    node: Node,
    deadline: Duration,
    /// The routes, to know which may run twice.
    routes: Option<RouteTable>,
}

impl RouteCaller {
    /// Routes run through `node`, each within `deadline`.
    pub fn new(node: &Node, deadline: Duration) -> Self {
        Self {
            node: node.clone(),
            deadline,
            routes: node.store().map(RouteTable::start),
        }
    }

    /// Runs `route` with `input` and returns the route's output.
    ///
    /// A run is sent again to another router when it surely did not run (no router could be
    /// reached, or it refused), and also when it may have run but every hop of the route may
    /// be retried (an async hop's result is ignored anyway): then a router killed in the middle
    /// of the run costs the caller a delay, not a failure.
    pub async fn run(&self, route: &str, input: Value) -> Result<Value, Failure> {
        let request = serde_json::json!({ "route": route, "input": input });
        let reply = self
            .node
            .client(ROUTER_SERVICE)
            .with_deadline(self.deadline)
            .with_retry_after_loss(self.may_run_twice(route))
            .call_json(RUN_METHOD, &request)
            .await;
        reply.map_err(|e| Failure::from_call(route, e))
    }

    fn may_run_twice(&self, route: &str) -> bool {
        self.routes
            .as_ref()
            .and_then(|table| table.get(route))
            .is_some_and(|r| r.hops.iter().all(|h| h.retry || h.mode == HopMode::Async))
    }
}

/// Why a route did not produce an output, in terms a person (or a program) can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Failure {
    /// No router is running, so no route can run.
    #[error("no router is available to run route {route}")]
    NoRouter {
        /// The route asked for.
        route: String,
    },
    /// There is no route of that name.
    #[error("there is no route named {route}")]
    NoSuchRoute {
        /// The route asked for.
        route: String,
    },
    /// A service the route needs has no running instance.
    #[error("service {service} is not available: {message}")]
    Unavailable {
        /// The route.
        route: String,
        /// The service that could not be reached.
        service: String,
        /// The router's explanation.
        message: String,
    },
    /// A service ran and failed (its own error, or a call that broke).
    #[error("service {service} failed: {message}")]
    ServiceFailed {
        /// The route.
        route: String,
        /// The failing service.
        service: String,
        /// What it said.
        message: String,
    },
    /// The route did not finish within its deadline.
    #[error("route {route} did not finish in time")]
    Timeout {
        /// The route.
        route: String,
    },
    /// The input was refused.
    #[error("bad request: {message}")]
    BadRequest {
        /// What is wrong with it.
        message: String,
    },
    /// Anything else: the router or the network failed.
    #[error("route {route} failed: {message}")]
    Internal {
        /// The route.
        route: String,
        /// What happened.
        message: String,
    },
}

impl Failure {
    /// Classifies a failed call to a router.
    fn from_call(route: &str, error: CallError<Value>) -> Self {
        let route = route.to_owned();
        match error {
            CallError::Service(failure) => Self::from_router(route, &failure),
            CallError::NoInstance { .. } => Self::NoRouter { route },
            CallError::DeadlineExceeded(_) => Self::Timeout { route },
            CallError::Rejected { message, .. } => Self::BadRequest { message },
            other => Self::Internal {
                route,
                message: other.to_string(),
            },
        }
    }

    /// Reads the router's failure value: `{route, service, method, kind, message}`.
    fn from_router(route: String, failure: &Value) -> Self {
        let text = |key: &str| failure.get(key).and_then(Value::as_str).map(str::to_owned);
        let message = text("message").unwrap_or_else(|| failure.to_string());
        let service = text("service").unwrap_or_else(|| "?".to_owned());
        let kind = text("kind").unwrap_or_default();
        match kind.to_ascii_lowercase().replace('_', "").as_str() {
            "nosuchroute" => Self::NoSuchRoute { route },
            "routerunavailable" => Self::NoRouter { route },
            "noinstance" | "unavailable" => Self::Unavailable {
                route,
                service,
                message,
            },
            "deadline" | "timeout" | "deadlineexceeded" => Self::Timeout { route },
            // The route's input does not decode as its first hop's request type: the
            // decoder's message, with the method that refused it.
            "badinput" => Self::BadRequest {
                message: match text("method") {
                    Some(method) => format!("{service}.{method} cannot take this input: {message}"),
                    None => message,
                },
            },
            "badrequest" | "invalidinput" => Self::BadRequest { message },
            "hopfailed" | "servicefailed" | "serviceerror" => Self::ServiceFailed {
                route,
                service,
                message,
            },
            _ => Self::Internal { route, message },
        }
    }

    /// The HTTP status that fits.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::NoRouter { .. } | Self::Unavailable { .. } => 503,
            Self::NoSuchRoute { .. } => 404,
            Self::ServiceFailed { .. } | Self::Internal { .. } => 502,
            Self::Timeout { .. } => 504,
            Self::BadRequest { .. } => 400,
        }
    }

    /// A sentence for a person, saying what failed and what it means for them.
    pub fn friendly(&self) -> String {
        match self {
            Self::NoRouter { .. } => {
                "No router is running right now, so your request could not be handled. \
                 Please try again in a moment."
                    .to_owned()
            }
            Self::Unavailable { service, .. } => format!(
                "The {service} service is not available right now: no running instance can \
                 serve it. Please try again in a moment."
            ),
            other => {
                let mut s = other.to_string();
                if let Some(first) = s.get(..1) {
                    let upper = first.to_uppercase();
                    s.replace_range(..1, &upper);
                }
                s.push('.');
                s
            }
        }
    }

    /// The JSON body of an error response: `{"error": {"kind": .., "message": .., ...}}`.
    pub fn to_json(&self) -> Value {
        let mut detail = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut detail {
            map.entry("message".to_owned())
                .or_insert_with(|| Value::String(self.to_string()));
            map.insert("friendly".to_owned(), Value::String(self.friendly()));
        }
        serde_json::json!({ "error": detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_failures_are_classified() {
        let f = Failure::from_router(
            "hello".into(),
            &serde_json::json!({"kind": "NoInstance", "service": "hello", "message": "no running instance"}),
        );
        assert_eq!(f.http_status(), 503);
        assert!(f.friendly().contains("The hello service is not available"));
        let body = f.to_json();
        assert_eq!(body["error"]["kind"], "unavailable");
        assert_eq!(body["error"]["service"], "hello");

        let f = Failure::from_router("x".into(), &serde_json::json!({"kind": "no_such_route"}));
        assert_eq!(f, Failure::NoSuchRoute { route: "x".into() });
        assert_eq!(f.http_status(), 404);
        assert_eq!(f.friendly(), "There is no route named x.");

        let f = Failure::from_router("x".into(), &serde_json::json!("something odd"));
        assert_eq!(f.http_status(), 502);

        // The router's `bad_input`: the caller's error, with the decoder's message.
        let f = Failure::from_router(
            "hello".into(),
            &serde_json::json!({"kind": "bad_input", "service": "hello", "method": "hello",
                "message": "cannot decode Json payload: invalid type: integer `5`, expected a string"}),
        );
        assert_eq!(f.http_status(), 400);
        let body = f.to_json();
        assert_eq!(body["error"]["kind"], "bad_request");
        assert_eq!(
            body["error"]["message"],
            "hello.hello cannot take this input: cannot decode Json payload: invalid type: \
             integer `5`, expected a string"
        );
        // A hop that failed (its own error, or a reply that did not decode) stays a 502.
        let f = Failure::from_router(
            "hello".into(),
            &serde_json::json!({"kind": "hop_failed", "service": "hello", "message": "undecodable response"}),
        );
        assert_eq!(f.http_status(), 502);
    }

    #[test]
    fn call_errors_are_classified() {
        let f = Failure::from_call(
            "hello",
            CallError::NoInstance {
                service: ROUTER_SERVICE.into(),
                version: None,
            },
        );
        assert_eq!(f.http_status(), 503);
        assert!(f.friendly().contains("No router"));
        let f = Failure::from_call("hello", CallError::DeadlineExceeded(Duration::from_secs(1)));
        assert_eq!(f.http_status(), 504);
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_skipped_and_reading_goes_on() {
        use futures_util::StreamExt as _;
        let input: &[u8] = b"short\r\nwaaaaaaaaaaaaay too long\nok\n\xff\nlast";

        // The router's `bad_input`: the caller's error, with the decoder's message.
        let f = Failure::from_router(
            "hello".into(),
            &serde_json::json!({"kind": "bad_input", "service": "hello", "method": "hello",
                "message": "cannot decode Json payload: invalid type: integer `5`, expected a string"}),
        );
        assert_eq!(f.http_status(), 400);
        let body = f.to_json();
        assert_eq!(body["error"]["kind"], "bad_request");
        assert_eq!(
            body["error"]["message"],
            "hello.hello cannot take this input: cannot decode Json payload: invalid type: \
             integer `5`, expected a string"
        );
        // A hop that failed (its own error, or a reply that did not decode) stays a 502.
        let f = Failure::from_router(
            "hello".into(),
            &serde_json::json!({"kind": "hop_failed", "service": "hello", "message": "undecodable response"}),
        );
        assert_eq!(f.http_status(), 502);
        let lines: Vec<Line> = limited_lines(input, 8)
            .map(|l| l.expect("reads"))
            .collect()
            .await;
        assert_eq!(
            lines,
            vec![
                Line::Text("short".into()),
                Line::Refused(Refusal::TooLong { max: 8 }),
                Line::Text("ok".into()),
                Line::Refused(Refusal::NotUtf8),
                Line::Text("last".into()),
            ]
        );
    }

    #[test]
    fn a_refusal_states_the_limit_only_when_it_is_the_reason() {
        assert_eq!(
            Refusal::TooLong { max: 1024 }.to_string(),
            "the line is too long (at most 1024 bytes)"
        );
        assert_eq!(Refusal::NotUtf8.to_string(), "the line is not UTF-8");
    }
}
