//! Initiators: the ways requests come into a cluster. Each turns outside input into a route
//! run ([`RouteCaller::run`]) and the outcome back into the outside world's terms.
//!
//! - [`http`]: an HTML form at `/` (the original demo's page) and JSON at
//!   `POST /v1/routes/{route}`.
//! - [`tcp`]: newline-delimited JSON requests and responses.
//! - [`mod@file`]: a JSONL file of requests in, a JSONL file of responses out, resumable after a
//!   crash without redoing finished lines.
//!
//! A route runs on a router: a call by name to the `skynet.router` service's `run` method,
//! balanced over the routers in the registry, with the route name and the input value. When
//! no router or no service can serve, the failure says which and why ([`Failure`]).

mod budget;
pub mod file;
pub mod http;
pub mod tcp;

pub use budget::{DEFAULT_LIMIT as DEFAULT_MEMORY_BUDGET, MemoryBudget};

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use budget::{OverBudget, Reservation};

use crate::error::CallError;
use crate::node::Node;
use crate::route::{HopMode, RouteTable};

/// The service that runs routes.
pub const ROUTER_SERVICE: &str = "skynet.router";
/// Its method.
pub const RUN_METHOD: &str = "run";

/// One line of input, without its newline.
#[derive(Debug)]
enum Line {
    /// A line within the limits, with its share of the memory budget, held until the line is
    /// answered.
    Text(String, Reservation),
    /// A line that is not read: it was skipped up to its end.
    Refused(Refusal),
}

/// Why a line was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    /// Longer than the limit.
    #[error("the line is too long (at most {max} bytes)")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not UTF-8 text.
    #[error("the line is not UTF-8")]
    NotUtf8,
    /// Keeping it would take the memory budget over its limit.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
}

/// The lines of `reader`, each at most `max` bytes; longer lines are skipped to their end and
/// reported, and reading goes on after them (unlike `LinesCodec`, whose stream ends at the
/// first error). A line's bytes are reserved from `budget` as they arrive, and a line that
/// does not fit is skipped and reported like one that is too long.
fn limited_lines<R>(
    reader: R,
    max: usize,
    budget: MemoryBudget,
) -> impl futures_util::Stream<Item = std::io::Result<Line>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncBufReadExt as _;
    let reader = tokio::io::BufReader::new(reader);
    futures_util::stream::unfold(reader, move |mut reader| {
        let budget = budget.clone();
        async move {
            let mut buf = Vec::new();
            let mut held = budget.reservation();
            let mut refused = None;
            loop {
                let chunk = match reader.fill_buf().await {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), reader)),
                };
                if chunk.is_empty() {
                    // End of input: a last line without a newline still counts.
                    if buf.is_empty() && refused.is_none() {
                        return None;
                    }
                    break;
                }
                let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => (&chunk[..i], Some(i + 1)),
                    None => (chunk, None),
                };
                if refused.is_none() {
                    if buf.len() + part.len() > max {
                        refused = Some(Refusal::TooLong { max });
                    } else if let Err(e) = held.grow(part.len()) {
                        refused = Some(Refusal::OverBudget(e));
                    }
                    if refused.is_some() {
                        buf = Vec::new();
                        held = budget.reservation();
                    } else {
                        buf.extend_from_slice(part);
                    }
                }
                let used = done.unwrap_or(chunk.len());
                reader.consume(used);
                if done.is_some() {
                    break;
                }
            }
            let line = match refused {
                Some(why) => Line::Refused(why),
                None => match String::from_utf8(buf) {
                    Ok(mut text) => {
                        if text.ends_with('\r') {
                            text.pop();
                        }
                        Line::Text(text, held)
                    }
                    Err(_) => Line::Refused(Refusal::NotUtf8),
                },
            };
            Some((Ok(line), reader))
        }
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
        match serde_json::value::to_raw_value(&input) {
            Ok(input) => self.run_raw(route, &input).await,
            Err(e) => Err(Failure::BadRequest {
                message: e.to_string(),
            }),
        }
    }

    /// Runs `route` with an input that is JSON text already, as [`RouteCaller::run`] does. The
    /// input is passed on as text, never parsed into a tree of values (which takes many times
    /// its size): this is how the initiators forward what they receive.
    pub async fn run_raw(&self, route: &str, input: &RawValue) -> Result<Value, Failure> {
        self.run_prepared(PreparedRun::new(route, input)?).await
    }

    /// Runs a run made ready beforehand, so that the caller can let go of the text it came
    /// from first.
    async fn run_prepared(&self, run: PreparedRun) -> Result<Value, Failure> {
        let reply = self
            .node
            .client(ROUTER_SERVICE)
            .with_deadline(self.deadline)
            .with_retry_after_loss(self.may_run_twice(&run.route))
            .call_json_raw(RUN_METHOD, &run.request)
            .await;
        reply.map_err(|e| Failure::from_call(&run.route, e))
    }

    fn may_run_twice(&self, route: &str) -> bool {
        self.routes
            .as_ref()
            .and_then(|table| table.get(route))
            .is_some_and(|r| r.hops.iter().all(|h| h.retry || h.mode == HopMode::Async))
    }
}

/// A route run ready to send: the router's request, `{"route": .., "input": ..}`, made once
/// from the input's text.
pub(crate) struct PreparedRun {
    route: String,
    request: Box<RawValue>,
}

impl PreparedRun {
    /// The route it runs.
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    fn new(route: &str, input: &RawValue) -> Result<Self, Failure> {
        #[derive(Serialize)]
        struct RunRequest<'a> {
            route: &'a str,
            input: &'a RawValue,
        }
        match serde_json::value::to_raw_value(&RunRequest { route, input }) {
            Ok(request) => Ok(Self {
                route: route.to_owned(),
                request,
            }),
            Err(e) => Err(Failure::BadRequest {
                message: e.to_string(),
            }),
        }
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
    /// The initiator holds as many requests as its memory budget allows: try again shortly.
    #[error("{message}")]
    Overloaded {
        /// What is at its limit.
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
            // No router, or the ones there are stopping or full (a call by name tries every
            // router before it says so).
            CallError::NoInstance { .. } | CallError::Stopping(_) | CallError::Unavailable(_) => {
                Self::NoRouter { route }
            }
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
            Self::NoRouter { .. } | Self::Unavailable { .. } | Self::Overloaded { .. } => 503,
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
            Self::Overloaded { .. } => {
                "The server is busy right now. Please try again in a moment.".to_owned()
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
        serde_json::json!({ "error": self.detail() })
    }

    /// What goes under `"error"`: `{"kind": .., "message": .., "friendly": .., ...}`.
    pub(crate) fn detail(&self) -> Value {
        let mut detail = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut detail {
            map.entry("message".to_owned())
                .or_insert_with(|| Value::String(self.to_string()));
            map.insert("friendly".to_owned(), Value::String(self.friendly()));
        }
        detail
    }
}

/// One answer of the line-based initiators: `{"line": n, "id": <id>, "output": ..}` or
/// `{"line": n, "id": <id>, "error": {..}}`, `line` only for the file initiator. The id goes out
/// as the JSON text that came in.
fn answer_line(line: Option<u64>, id: &RawValue, outcome: Result<&Value, &Failure>) -> String {
    #[derive(Serialize)]
    struct Answer<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        line: Option<u64>,
        id: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<Value>,
    }
    let (output, error) = match outcome {
        Ok(output) => (Some(output), None),
        Err(failure) => (None, Some(failure.detail())),
    };
    let answer = Answer {
        line,
        id,
        output,
        error,
    };
    serde_json::to_string(&answer).unwrap_or_default()
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

    /// The lines as text, or the refusal's message.
    async fn read_lines(input: &[u8], max: usize, budget: MemoryBudget) -> Vec<String> {
        use futures_util::StreamExt as _;
        limited_lines(input, max, budget)
            .map(|line| match line.expect("reads") {
                Line::Text(text, _) => text,
                Line::Refused(why) => format!("refused: {why}"),
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn lines_over_the_limit_are_skipped_and_reading_goes_on() {
        let input: &[u8] = b"short\r\nwaaaaaaaaaaaaay too long\nok\n\xff\nlast";
        assert_eq!(
            read_lines(input, 8, MemoryBudget::new(usize::MAX)).await,
            [
                "short",
                "refused: the line is too long (at most 8 bytes)",
                "ok",
                "refused: the line is not UTF-8",
                "last",
            ]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_budget_is_skipped_and_its_share_given_back() {
        use futures_util::StreamExt as _;
        let budget = MemoryBudget::new(10 * budget::REQUEST_COST);
        let input: &[u8] = b"0123456789ab\nfits\n";
        assert_eq!(
            read_lines(input, 100, budget.clone()).await,
            [
                "refused: the server is busy: requests in flight hold its memory budget of 30 bytes",
                "fits",
            ]
        );
        assert_eq!(budget.in_use(), 0, "every line's share is given back");

        // A line holds its share until it is dropped (answered), so the next one may not fit.
        let mut lines = Box::pin(limited_lines(&b"123456\n123456\n"[..], 100, budget.clone()));
        let first = lines.next().await.expect("a line").expect("reads");
        assert!(matches!(first, Line::Text(..)));
        assert_eq!(budget.in_use(), 6 * budget::REQUEST_COST);
        let second = lines.next().await.expect("a line").expect("reads");
        assert!(matches!(second, Line::Refused(Refusal::OverBudget(_))));
        drop(first);
        assert_eq!(budget.in_use(), 0);
    }
}
