//! Running a route, with the calls abstracted away: which hop runs next, with which value, what
//! a failure does, when a hop is tried again. The router supplies the calls ([`HopCaller`]);
//! tests supply fakes.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Hop, HopMode, OnFailure, Route};
use crate::error::{CallError, RejectReason};

/// Most attempts of a hop with `retry: true` whose attempts may have run.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Why a route did not produce a reply: the router's error type, readable as it stands
/// ([`fmt::Display`]) and typed for programs ([`FailureKind`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct RouteFailure {
    /// The route asked for.
    pub route: String,
    /// The hop that failed, counted from 1; `None` if the route did not start.
    pub hop: Option<usize>,
    /// The failed hop's service.
    pub service: Option<String>,
    /// The failed hop's method.
    pub method: Option<String>,
    /// The class of failure.
    pub kind: FailureKind,
    /// The detail: the service's own error message, or what the call ran into.
    pub message: String,
}

/// The class of a [`RouteFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The router knows no route by that name.
    NoSuchRoute,
    /// No running, registered instance of the hop's service (at its version) is known.
    NoInstance,
    /// Instances are known but none could take the call (unreachable, draining, overloaded,
    /// or the connection broke mid-call and the hop may not be retried).
    Unavailable,
    /// The service ran the call and failed: its own error, a panic, a missing method, a reply
    /// that could not be decoded, or a hop after the first that refused the value the route
    /// gave it (the route's hops do not fit together: not the caller's doing).
    HopFailed,
    /// The route's input, as the caller sent it, does not decode as the request type of the
    /// hop it went to: the caller's error, with the decoder's message.
    BadInput,
    /// The request's deadline passed before the route finished.
    Deadline,
    /// The router could not run the route (it is starting or stopping).
    RouterUnavailable,
}

impl RouteFailure {
    /// A failure before any hop ran.
    pub(crate) fn route(route: &str, kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            route: route.to_owned(),
            hop: None,
            service: None,
            method: None,
            kind,
            message: message.into(),
        }
    }

    fn at_hop(route: &Route, index: usize, error: HopError) -> Self {
        let hop = &route.hops[index];
        Self {
            route: route.name.clone(),
            hop: Some(index + 1),
            service: Some(hop.service.clone()),
            method: Some(hop.method.clone()),
            kind: error.kind,
            message: error.message,
        }
    }
}

impl fmt::Display for RouteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.service.as_deref().unwrap_or("?");
        let place = match self.hop {
            Some(hop) => format!("route {}, hop {hop}", self.route),
            None => format!("route {}", self.route),
        };
        match self.kind {
            FailureKind::NoSuchRoute => write!(f, "There is no route named {}", self.route),
            FailureKind::NoInstance => write!(
                f,
                "Service {service} is not available: no running instance ({place})"
            ),
            FailureKind::Unavailable => write!(
                f,
                "Service {service} is not available: {} ({place})",
                self.message
            ),
            FailureKind::HopFailed => {
                write!(f, "Service {service} failed: {} ({place})", self.message)
            }
            FailureKind::BadInput => write!(
                f,
                "Service {service} cannot take this input: {} ({place})",
                self.message
            ),
            FailureKind::Deadline => match self.hop {
                Some(hop) => write!(
                    f,
                    "Route {} ran out of time waiting for service {service} (hop {hop})",
                    self.route
                ),
                None => write!(f, "Route {} ran out of time: {}", self.route, self.message),
            },
            FailureKind::RouterUnavailable => {
                write!(
                    f,
                    "The router cannot run routes: {} ({place})",
                    self.message
                )
            }
        }
    }
}

/// One failed attempt of a hop, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HopError {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    /// Whether the attempt may have run and another attempt elsewhere may succeed: tried
    /// again only for hops with `retry: true`. (Attempts that surely did not run were already
    /// retried by the client.)
    pub(crate) retryable: bool,
}

impl HopError {
    /// Classifies a failed JSON call.
    pub(crate) fn from_call(error: CallError<Value>) -> Self {
        let (kind, retryable) = match &error {
            CallError::NoInstance { .. } => (FailureKind::NoInstance, false),
            CallError::Unreachable { .. }
            | CallError::ConnectionLost { .. }
            | CallError::Unavailable(_)
            | CallError::Stopping(_) => (FailureKind::Unavailable, true),
            CallError::DeadlineExceeded(_) => (FailureKind::Deadline, false),
            // The service refused the request before running it: the value does not decode
            // as the method's request type. (A reply that does not decode is a `Protocol`
            // error: the service's fault, so `HopFailed`.) Whether it is the caller's error
            // depends on where the value came from: `execute` decides.
            CallError::Rejected {
                reason: RejectReason::BadRequest,
                ..
            } => (FailureKind::BadInput, false),
            _ => (FailureKind::HopFailed, false),
        };
        let message = match error {
            // A `ServiceError` is `{"code":..,"message":..}`; other error types are shown whole.
            CallError::Service(value) => match value.get("message").and_then(Value::as_str) {
                Some(message) => message.to_owned(),
                None => value.to_string(),
            },
            // The decoder's own words (field and expected type), without the call's wrapping.
            CallError::Rejected {
                reason: RejectReason::BadRequest,
                message,
            } => message,
            other => other.to_string(),
        };
        Self {
            kind,
            message,
            retryable,
        }
    }
}

/// Makes a route's calls.
pub(crate) trait HopCaller: Send + Sync {
    /// Calls `hop` with `input` and waits for its output, for at most `deadline`.
    fn call(
        &self,
        hop: &Hop,
        input: &Value,
        deadline: Duration,
    ) -> impl Future<Output = Result<Value, HopError>> + Send;

    /// Starts an async hop (hop number `number`, from 1) without waiting for it.
    fn fire(&self, route: &Route, number: usize, input: Value);

    /// A sync hop failed and was skipped.
    fn skipped(&self, route: &Route, number: usize, error: &HopError);
}

/// Runs `route` on `input`, all within `until`. See the module docs for the value flow.
pub(crate) async fn execute<C: HopCaller>(
    caller: &C,
    route: &Route,
    input: Value,
    until: Instant,
) -> Result<Value, RouteFailure> {
    let mut value = input;
    // Whether `value` is still the caller's input: only then is a hop's refusal to decode it
    // the caller's error. Once a hop's output flows on, a refusal means the route's hops do
    // not fit together, which the caller cannot fix.
    let mut from_caller = true;
    for (index, hop) in route.hops.iter().enumerate() {
        if hop.mode == HopMode::Async {
            caller.fire(route, index + 1, value.clone());
            continue;
        }
        let outcome = run_hop(caller, hop, &value, until).await;
        let outcome = outcome.map_err(|mut e| {
            if e.kind == FailureKind::BadInput && !from_caller {
                e.kind = FailureKind::HopFailed;
                e.message = format!("the value the route passed it does not fit: {}", e.message);
            }
            e
        });
        match outcome {
            Ok(output) => {
                value = output;
                from_caller = false;
            }
            // Out of time is out of time: skipping would only fail the next hop.
            Err(e) if hop.on_failure == OnFailure::Skip && e.kind != FailureKind::Deadline => {
                caller.skipped(route, index + 1, &e);
            }
            Err(e) => return Err(RouteFailure::at_hop(route, index, e)),
        }
    }
    Ok(value)
}

/// One sync hop, with its retries.
async fn run_hop<C: HopCaller>(
    caller: &C,
    hop: &Hop,
    input: &Value,
    until: Instant,
) -> Result<Value, HopError> {
    let attempts = if hop.retry { MAX_ATTEMPTS } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let remaining = until.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HopError {
                kind: FailureKind::Deadline,
                message: "no time left for the call".to_owned(),
                retryable: false,
            });
        }
        match caller.call(hop, input, remaining).await {
            Ok(output) => return Ok(output),
            Err(e) if e.retryable && attempt < attempts => {
                tracing::debug!(hop = %hop.target(), attempt, error = %e.message, "retrying hop");
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::sync::Locked as _;

    /// Answers each `service.method` from a script of outcomes (the last one repeats), and
    /// records every call.
    #[derive(Default)]
    struct Script {
        outcomes: Mutex<HashMap<String, VecDeque<Result<Value, HopError>>>>,
        calls: Mutex<Vec<(String, Value)>>,
        fired: Mutex<Vec<(usize, Value)>>,
        skipped: Mutex<Vec<usize>>,
    }

    impl Script {
        fn on(self, target: &str, outcomes: Vec<Result<Value, HopError>>) -> Self {
            self.outcomes
                .locked()
                .insert(target.to_owned(), outcomes.into());
            self
        }

        fn calls(&self) -> Vec<(String, Value)> {
            self.calls.locked().clone()
        }
    }

    impl HopCaller for Script {
        async fn call(
            &self,
            hop: &Hop,
            input: &Value,
            _deadline: Duration,
        ) -> Result<Value, HopError> {
            let target = hop.target();
            self.calls.locked().push((target.clone(), input.clone()));
            let mut outcomes = self.outcomes.locked();
            let queue = outcomes.get_mut(&target).expect("scripted hop");
            if queue.len() > 1 {
                queue.pop_front().expect("non-empty")
            } else {
                queue.front().cloned().expect("non-empty")
            }
        }

        fn fire(&self, _route: &Route, number: usize, input: Value) {
            self.fired.locked().push((number, input));
        }

        fn skipped(&self, _route: &Route, number: usize, _error: &HopError) {
            self.skipped.locked().push(number);
        }
    }

    fn failed(kind: FailureKind, retryable: bool) -> Result<Value, HopError> {
        Err(HopError {
            kind,
            message: "boom".to_owned(),
            retryable,
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn sync_outputs_feed_the_next_hop_and_async_hops_get_a_copy() {
        let route = Route::new(
            "r",
            vec![
                Hop::new("a", "m"),
                Hop::new("log", "m").fire_and_forget(),
                Hop::new("b", "m"),
                Hop::new("log", "m").fire_and_forget(),
            ],
        );
        let script = Script::default()
            .on("a.m", vec![Ok(json!(2))])
            .on("b.m", vec![Ok(json!(3))]);
        let reply = execute(&script, &route, json!(1), soon()).await;
        assert_eq!(reply, Ok(json!(3)));
        assert_eq!(
            script.calls(),
            [("a.m".to_owned(), json!(1)), ("b.m".to_owned(), json!(2))]
        );
        assert_eq!(*script.fired.locked(), [(2, json!(2)), (4, json!(3))]);
    }

    #[tokio::test]
    async fn a_skipped_hop_passes_its_input_on_and_a_stopping_one_names_itself() {
        let route = Route::new(
            "r",
            vec![
                Hop::new("a", "m").skip_on_failure(),
                Hop::new("b", "m"),
                Hop::new("c", "m"),
            ],
        );
        let script = Script::default()
            .on("a.m", vec![failed(FailureKind::HopFailed, false)])
            .on("b.m", vec![failed(FailureKind::NoInstance, false)]);
        let failure = execute(&script, &route, json!("in"), soon())
            .await
            .expect_err("b stops the route");
        assert_eq!(script.calls()[1], ("b.m".to_owned(), json!("in")));
        assert_eq!(*script.skipped.locked(), [1]);
        assert_eq!(failure.hop, Some(2));
        assert_eq!(failure.service.as_deref(), Some("b"));
        assert_eq!(failure.kind, FailureKind::NoInstance);
        assert_eq!(
            failure.to_string(),
            "Service b is not available: no running instance (route r, hop 2)"
        );
        assert_eq!(script.calls().len(), 2, "c never ran");
    }

    #[tokio::test]
    async fn only_retry_hops_are_tried_again_and_only_when_it_may_help() {
        let once = Route::new("r", vec![Hop::new("a", "m")]);
        let script = Script::default().on(
            "a.m",
            vec![failed(FailureKind::Unavailable, true), Ok(json!("ok"))],
        );
        assert!(execute(&script, &once, json!(0), soon()).await.is_err());
        assert_eq!(script.calls().len(), 1);

        let retried = Route::new("r", vec![Hop::new("a", "m").retry(true)]);
        let script = Script::default().on(
            "a.m",
            vec![failed(FailureKind::Unavailable, true), Ok(json!("ok"))],
        );
        assert_eq!(
            execute(&script, &retried, json!(0), soon()).await,
            Ok(json!("ok"))
        );
        assert_eq!(script.calls().len(), 2);

        // A service's own error is an answer, not a fault: never retried.
        let script = Script::default().on("a.m", vec![failed(FailureKind::HopFailed, false)]);
        assert!(execute(&script, &retried, json!(0), soon()).await.is_err());
        assert_eq!(script.calls().len(), 1);

        // Bounded.
        let script = Script::default().on("a.m", vec![failed(FailureKind::Unavailable, true)]);
        assert!(execute(&script, &retried, json!(0), soon()).await.is_err());
        assert_eq!(script.calls().len(), MAX_ATTEMPTS);
    }

    #[tokio::test]
    async fn no_time_left_fails_with_the_deadline_even_on_skippable_hops() {
        let route = Route::new("r", vec![Hop::new("a", "m").skip_on_failure()]);
        let script = Script::default().on("a.m", vec![Ok(json!(1))]);
        let failure = execute(&script, &route, json!(0), Instant::now())
            .await
            .expect_err("no time");
        assert_eq!(failure.kind, FailureKind::Deadline);
        assert!(script.calls().is_empty());
    }

    #[tokio::test]
    async fn a_refused_input_is_the_callers_only_while_it_is_the_callers_value() {
        let refused = || failed(FailureKind::BadInput, false);
        // The first hop refuses the caller's input: the caller's error.
        let route = Route::new("r", vec![Hop::new("a", "m"), Hop::new("b", "m")]);
        let script = Script::default().on("a.m", vec![refused()]);
        let failure = execute(&script, &route, json!(5), soon())
            .await
            .expect_err("refused");
        assert_eq!(
            (failure.kind, failure.hop),
            (FailureKind::BadInput, Some(1))
        );
        assert_eq!(
            failure.to_string(),
            "Service a cannot take this input: boom (route r, hop 1)"
        );

        // Skipped and async hops leave the caller's value as it is.
        let route = Route::new(
            "r",
            vec![
                Hop::new("log", "m").fire_and_forget(),
                Hop::new("a", "m").skip_on_failure(),
                Hop::new("b", "m"),
            ],
        );
        let script = Script::default()
            .on("a.m", vec![failed(FailureKind::HopFailed, false)])
            .on("b.m", vec![refused()]);
        let failure = execute(&script, &route, json!(5), soon())
            .await
            .expect_err("refused");
        assert_eq!(
            (failure.kind, failure.hop),
            (FailureKind::BadInput, Some(3))
        );

        // A later hop refusing an earlier hop's output: the route's hops do not fit together,
        // which the caller cannot fix.
        let route = Route::new("r", vec![Hop::new("a", "m"), Hop::new("b", "m")]);
        let script = Script::default()
            .on("a.m", vec![Ok(json!({"greeting": "hi"}))])
            .on("b.m", vec![refused()]);
        let failure = execute(&script, &route, json!(5), soon())
            .await
            .expect_err("refused");
        assert_eq!(
            (failure.kind, failure.hop),
            (FailureKind::HopFailed, Some(2))
        );
        assert!(failure.message.contains("boom"), "{}", failure.message);
    }

    #[test]
    fn call_errors_are_classified() {
        let e = HopError::from_call(CallError::NoInstance {
            service: "s".into(),
            version: None,
        });
        assert_eq!((e.kind, e.retryable), (FailureKind::NoInstance, false));
        let e = HopError::from_call(CallError::ConnectionLost {
            target: "x".into(),
            reason: "y".into(),
        });
        assert_eq!((e.kind, e.retryable), (FailureKind::Unavailable, true));
        let e = HopError::from_call(CallError::Service(json!({"code":null,"message":"nope"})));
        assert_eq!(
            (e.kind, e.message.as_str()),
            (FailureKind::HopFailed, "nope")
        );
        let e = HopError::from_call(CallError::Service(json!(["odd"])));
        assert_eq!(e.message, r#"["odd"]"#);
        let e = HopError::from_call(CallError::DeadlineExceeded(Duration::from_secs(1)));
        assert_eq!(e.kind, FailureKind::Deadline);

        // The service could not decode the request: bad input, in the decoder's words.
        let e = HopError::from_call(CallError::Rejected {
            reason: RejectReason::BadRequest,
            message: "cannot decode Json payload: invalid type: integer `5`".into(),
        });
        assert_eq!(
            (e.kind, e.message.as_str(), e.retryable),
            (
                FailureKind::BadInput,
                "cannot decode Json payload: invalid type: integer `5`",
                false
            )
        );
        // The reply could not be decoded: the service's fault, not the caller's.
        let e = HopError::from_call(CallError::Protocol("undecodable response".into()));
        assert_eq!(e.kind, FailureKind::HopFailed);
    }

    #[test]
    fn failures_read_well() {
        let failure = RouteFailure::route("nope", FailureKind::NoSuchRoute, "unknown");
        assert_eq!(failure.to_string(), "There is no route named nope");
        let json = serde_json::to_value(&failure).expect("serializes");
        assert_eq!(json["kind"], "no_such_route");
        let json = serde_json::to_value(FailureKind::BadInput).expect("serializes");
        assert_eq!(json, "bad_input");
    }
}
