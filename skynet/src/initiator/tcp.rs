//! The TCP initiator: newline-delimited JSON in both directions.
//!
//! Each request is one line, `{"route": "hello", "input": {"name": "World"}, "id": 7}` (`id`
//! is optional and echoed back; `route` may be left out when the initiator has a default).
//! Each answer is one line, in the order of the requests:
//! `{"id": 7, "output": {...}}` or `{"id": 7, "error": {"kind": ..., "message": ...}}`. Up to
//! 64 requests of one connection run at once. A line that is not a request gets an error
//! answer and the connection goes on; a line over the limit is answered with an error and
//! skipped up to its end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Failure, Line, MemoryBudget, PreparedRun, Refusal, RouteCaller, answer_line, limited_lines,
};
use crate::listener::{ListenerLimits, Mode, Slot, Table, accept_connections};

/// Requests of one connection that run at once.
const IN_FLIGHT_PER_CONNECTION: usize = 64;

/// Settings of a TCP initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// The route of requests that name none; `None` makes `route` required.
    pub default_route: Option<String>,
    /// Longest request line, in bytes. Default 1 MiB.
    pub max_line: usize,
    /// Connection slots and the deadlines that keep slow or silent clients from holding
    /// them. A line is the request head here (`head_timeout` runs from its first byte to its
    /// newline); a connection is idle while it has no line begun and no answer owed, busy
    /// while answers are owed. The body limits do not apply. Default: 1,024 connections, a
    /// quarter of them per client address, a line within 30 s (a long line may be 1 MiB),
    /// idle at most 120 s, a stalled write at most 30 s, an hour in all.
    pub limits: ListenerLimits,
    /// The memory that request lines being read and run may hold at once, shared with other
    /// initiators. Default: the process-wide [`MemoryBudget`].
    pub budget: MemoryBudget,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            default_route: None,
            max_line: 1 << 20,
            limits: ListenerLimits {
                head_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(120),
                max_lifetime: Duration::from_secs(3600),
                ..ListenerLimits::default()
            },
            budget: MemoryBudget::default(),
        }
    }
}

/// A running TCP initiator.
#[derive(Debug)]
pub struct TcpInitiator {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl TcpInitiator {
    /// Binds `addr` (port 0 picks a free one) and serves until [`TcpInitiator::shutdown`].
    ///
    /// Limits that do not validate fail with [`std::io::ErrorKind::InvalidInput`], the
    /// [`LimitsError`](crate::LimitsError) inside.
    pub async fn start(
        caller: RouteCaller,
        addr: SocketAddr,
        config: TcpConfig,
    ) -> std::io::Result<Self> {
        config
            .limits
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = Arc::new((caller, config));
        tasks.spawn(accept_loop(listener, state, stop.clone(), tasks.clone()));
        tracing::info!(%addr, "TCP initiator listening");
        Ok(Self { addr, stop, tasks })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and ends every connection.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for TcpInitiator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<(RouteCaller, TcpConfig)>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let table = Table::new(state.1.limits, Mode::Lines, "tcp initiator");
    let serve = {
        let stop = stop.clone();
        move |stream: TcpStream, slot: Arc<Slot>| {
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                tokio::select! {
                    () = serve(stream, &slot, &state) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    };
    accept_connections(listener, table, stop, tasks, serve).await;
}

async fn serve(stream: TcpStream, slot: &Arc<Slot>, state: &(RouteCaller, TcpConfig)) {
    let (caller, config) = state;
    let _ = stream.set_nodelay(true);
    // Both halves report to the slot: the bytes read say whether a line has begun, and a
    // write the client does not take ends the connection after the write timeout.
    let (read, write) = stream.into_split();
    let (read, mut write) = (slot.track(read), slot.track(write));
    // Past its lifetime the connection reads no more lines; the answers of those read are
    // written (within the drain grace) and then it closes.
    let answers = limited_lines(read, config.max_line, config.budget.clone())
        .take_until(slot.drained())
        // Blank lines are no requests: skipped, as the file initiator skips them, rather than
        // each costing an error answer.
        .filter(|line| {
            let blank = matches!(line, Ok(Line::Text(text, _)) if text.trim().is_empty());
            std::future::ready(!blank)
        })
        .map(|line| {
            // An answer is owed from here until it is written: the connection is busy.
            slot.answer_owed();
            async move {
                match line {
                    // The line's reservation is held until its answer is written.
                    Ok(Line::Text(line, held)) => {
                        Some((answer(caller, config, line).await, Some(held)))
                    }
                    Ok(Line::Refused(why)) => {
                        let failure = match why {
                            Refusal::OverBudget(e) => Failure::Overloaded {
                                message: e.to_string(),
                            },
                            other => Failure::BadRequest {
                                message: other.to_string(),
                            },
                        };
                        Some((error_line(&null(), &failure), None))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TCP initiator connection failed");
                        None
                    }
                }
            }
        })
        .buffered(IN_FLIGHT_PER_CONNECTION);
    tokio::pin!(answers);
    while let Some(Some((mut out, held))) = answers.next().await {
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        slot.answer_written();
        drop(held);
    }
}

/// Answers one request line (without its newline).
async fn answer(caller: &RouteCaller, config: &TcpConfig, line: String) -> String {
    let (id, run) = match prepare(&line, config.default_route.as_deref()) {
        Ok(prepared) => prepared,
        Err((id, failure)) => return error_line(&id, &failure),
    };
    // The router's request is a copy of the input: the line itself is not needed any more.
    drop(line);
    let output = caller.run_prepared(run).await;
    answer_line(None, &id, output.as_ref())
}

/// The id of a request line and its run, or the id (if readable) and why there is none.
pub(crate) fn prepare(
    line: &str,
    default_route: Option<&str>,
) -> Result<(Box<RawValue>, PreparedRun), (Box<RawValue>, Failure)> {
    let request = parse_request(line, default_route)?;
    let id = request.id.to_owned();
    match PreparedRun::new(&request.route, request.input) {
        Ok(run) => Ok((id, run)),
        Err(failure) => Err((id, failure)),
    }
}

/// One parsed request line, borrowed from it: the id and the input are the JSON text that
/// came. The id is echoed exactly as sent (`1e2` stays `1e2`, a 20-digit number keeps its
/// digits), and the input goes to the router as text, never as a tree of values many times
/// its size.
#[derive(Debug)]
pub(crate) struct LineRequest<'a> {
    pub(crate) id: &'a RawValue,
    pub(crate) route: String,
    pub(crate) input: &'a RawValue,
}

/// The JSON `null`, for a request without an id or whose id cannot be read.
pub(crate) fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// Parses `{"route": .., "input": .., "id": ..}` (other fields are ignored); on failure returns
/// the id (if readable) and why.
pub(crate) fn parse_request<'a>(
    line: &'a str,
    default_route: Option<&str>,
) -> Result<LineRequest<'a>, (Box<RawValue>, Failure)> {
    /// The fields, borrowed from the line: nothing is parsed beyond finding where they are.
    #[derive(serde::Deserialize)]
    struct Fields<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        route: Option<&'a RawValue>,
        #[serde(borrow)]
        input: Option<&'a RawValue>,
    }
    let bad = |id: Box<RawValue>, message: String| (id, Failure::BadRequest { message });
    let fields: Fields<'_> = serde_json::from_str(line).map_err(|e| {
        let message = match e.classify() {
            serde_json::error::Category::Data => {
                format!("a request is a JSON object with \"route\", \"input\" and \"id\": {e}")
            }
            _ => format!("not JSON: {e}"),
        };
        bad(null(), message)
    })?;
    let id = fields.id.unwrap_or(RawValue::NULL);
    let route = match (fields.route, default_route) {
        (Some(route), _) => match serde_json::from_str::<String>(route.get()) {
            Ok(route) => route,
            Err(_) => return Err(bad(id.to_owned(), "\"route\" must be a string".into())),
        },
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err(bad(id.to_owned(), "the request names no \"route\"".into()));
        }
    };
    let input = fields.input.unwrap_or(RawValue::NULL);
    Ok(LineRequest { id, route, input })
}

/// An error answer: `{"id": <the request's id as sent>, "error": {..}}`.
fn error_line(id: &RawValue, failure: &Failure) -> String {
    answer_line(None, id, Err(failure))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn requests_parse_with_ids_and_default_routes() {
        let r = parse_request(r#"{"route":"a","input":{"x":1},"id":7}"#, None).expect("ok");
        assert_eq!(r.route, "a");
        assert_eq!(r.id.get(), "7");
        assert_eq!(r.input.get(), r#"{"x":1}"#);
        let r = parse_request(r#"{"input":"x","other":[1,2]}"#, Some("hello")).expect("ok");
        assert_eq!((r.route.as_str(), r.id.get()), ("hello", "null"));

        let (id, f) = parse_request(r#"{"id":"q"}"#, None).expect_err("no route");
        assert_eq!(id.get(), r#""q""#);
        assert!(matches!(f, Failure::BadRequest { .. }));
        let (_, f) = parse_request("[1]", Some("a")).expect_err("not an object");
        assert!(f.to_string().contains("a request is a JSON object"), "{f}");
        let (_, f) = parse_request("{not json", Some("a")).expect_err("not JSON");
        assert!(f.to_string().contains("not JSON"), "{f}");
        let (id, _) = parse_request(r#"{"route":5,"id":1}"#, None).expect_err("route type");
        assert_eq!(id.get(), "1");
    }

    #[test]
    fn ids_are_echoed_as_sent() {
        for id in [
            "18446744073709551616",
            "1e2",
            "-0.0",
            r#""x\u0041""#,
            r#"{"a":[1, 2]}"#,
        ] {
            let line = format!(r#"{{"id":{id},"route":"r"}}"#);
            let request = parse_request(&line, None).expect("parses");
            assert_eq!(request.id.get(), id);
            let answer = error_line(request.id, &Failure::NoSuchRoute { route: "r".into() });
            assert!(
                answer.starts_with(&format!(r#"{{"id":{id},"error""#)),
                "{answer}"
            );
        }
    }

    #[test]
    fn error_lines_carry_the_id() {
        let id = RawValue::from_string("3".into()).expect("json");
        let line = error_line(&id, &Failure::NoSuchRoute { route: "x".into() });
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["kind"], "no_such_route");
    }
}
