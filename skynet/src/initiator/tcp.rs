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
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Failure, Line, RouteCaller, limited_lines};
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
    // Both halves report to the slot: lines read and answers written set its phase, and a
    // write the client does not take ends the connection after the write timeout.
    let (read, write) = stream.into_split();
    let (read, mut write) = (slot.track(read), slot.track(write));
    // Past its lifetime the connection reads no more lines; the answers of those read are
    // written (within the drain grace) and then it closes.
    let answers = limited_lines(read, config.max_line)
        .take_until(slot.drained())
        .map(|line| async move {
            match line {
                Ok(Line::Text(line)) => answer(caller, config, &line).await,
                Ok(Line::Refused(why)) => error_line(
                    &Value::Null,
                    &Failure::BadRequest {
                        message: format!("{why} (at most {} bytes)", config.max_line),
                    },
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "TCP initiator connection failed");
                    String::new()
                }
            }
        })
        .buffered(IN_FLIGHT_PER_CONNECTION);
    tokio::pin!(answers);
    while let Some(mut out) = answers.next().await {
        if out.is_empty() {
            return;
        }
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Answers one request line (without its newline).
async fn answer(caller: &RouteCaller, config: &TcpConfig, line: &str) -> String {
    let request = match parse_request(line, config.default_route.as_deref()) {
        Ok(request) => request,
        Err((id, failure)) => return error_line(&id, &failure),
    };
    match caller.run(&request.route, request.input).await {
        Ok(output) => serde_json::json!({ "id": request.id, "output": output }).to_string(),
        Err(failure) => error_line(&request.id, &failure),
    }
}

/// One parsed request line.
#[derive(Debug, PartialEq)]
pub(crate) struct LineRequest {
    pub(crate) id: Value,
    pub(crate) route: String,
    pub(crate) input: Value,
}

/// Parses `{"route": .., "input": .., "id": ..}`; on failure returns the id (if readable) and
/// why.
pub(crate) fn parse_request(
    line: &str,
    default_route: Option<&str>,
) -> Result<LineRequest, (Value, Failure)> {
    let value: Value = serde_json::from_str(line).map_err(|e| {
        (
            Value::Null,
            Failure::BadRequest {
                message: format!("not JSON: {e}"),
            },
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err((
            Value::Null,
            Failure::BadRequest {
                message: "a request is a JSON object".into(),
            },
        ));
    };
    let id = map.remove("id").unwrap_or(Value::Null);
    let route = match (map.remove("route"), default_route) {
        (Some(Value::String(route)), _) => route,
        (None, Some(default)) => default.to_owned(),
        (Some(_), _) => {
            return Err((
                id,
                Failure::BadRequest {
                    message: "\"route\" must be a string".into(),
                },
            ));
        }
        (None, None) => {
            return Err((
                id,
                Failure::BadRequest {
                    message: "the request names no \"route\"".into(),
                },
            ));
        }
    };
    let input = map.remove("input").unwrap_or(Value::Null);
    Ok(LineRequest { id, route, input })
}

fn error_line(id: &Value, failure: &Failure) -> String {
    let mut body = failure.to_json();
    if let Value::Object(map) = &mut body {
        map.insert("id".to_owned(), id.clone());
    }
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_ids_and_default_routes() {
        let r = parse_request(r#"{"route":"a","input":{"x":1},"id":7}"#, None).expect("ok");
        assert_eq!(r.route, "a");
        assert_eq!(r.id, serde_json::json!(7));
        assert_eq!(r.input, serde_json::json!({"x": 1}));
        let r = parse_request(r#"{"input":"x"}"#, Some("hello")).expect("ok");
        assert_eq!((r.route.as_str(), r.id), ("hello", Value::Null));

        let (id, f) = parse_request(r#"{"id":"q"}"#, None).expect_err("no route");
        assert_eq!(id, serde_json::json!("q"));
        assert!(matches!(f, Failure::BadRequest { .. }));
        assert!(parse_request("[1]", Some("a")).is_err());
        assert!(parse_request("{not json", Some("a")).is_err());
        assert!(parse_request(r#"{"route":5}"#, None).is_err());
    }

    #[test]
    fn error_lines_carry_the_id() {
        let line = error_line(
            &serde_json::json!(3),
            &Failure::NoSuchRoute { route: "x".into() },
        );
        let v: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["kind"], "no_such_route");
    }
}
