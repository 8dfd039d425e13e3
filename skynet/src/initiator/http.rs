//! The HTTP initiator: an HTML form for people and a JSON endpoint for programs.
//!
//! | request | what it does |
//! |---|---|
//! | `GET /` | the form (one field, `name`) |
//! | `GET /new?name=World`, `POST /new` (form-encoded) | runs the configured route with the form's fields as a JSON object (`{"name": "World"}`) and shows the result |
//! | `POST /v1/routes/{route}` (JSON body) | runs `route` with the body as input; answers the output as JSON |
//!
//! Failures answer with the fitting status (503 when no router or no instance of a service
//! can serve or when the initiator holds as many requests as its [`MemoryBudget`] allows, with
//! `Retry-After: 1`; 404 for an unknown route, 504 on timeout, 400 for bad input, 413 for a body
//! over the limit): a readable page for the form, `{"error": {...}}` for JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{ALLOW, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;

use super::budget::{OverBudget, Reservation};
use super::{Failure, MemoryBudget, PreparedRun, RouteCaller};
use crate::http::{self, HttpServer};
use crate::listener::ListenerLimits;

/// Settings of an HTTP initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The route the form runs. Default `"hello"`.
    pub form_route: String,
    /// Largest request body accepted. Default 1 MiB.
    pub max_body: usize,
    /// Connection slots and the deadlines that keep slow or silent clients from holding
    /// them. Default [`ListenerLimits::default`]: 1,024 connections, a quarter of them per
    /// client address; a head within 10 s, a body within 60 s and at 1 KiB/s after 5 s, idle
    /// at most 60 s, a write stalled at most 30 s, 300 s in all.
    pub limits: ListenerLimits,
    /// The memory that request bodies being read and run may hold at once, shared with other
    /// initiators. Default: the process-wide [`MemoryBudget`].
    pub budget: MemoryBudget,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            form_route: "hello".to_owned(),
            max_body: 1 << 20,
            limits: ListenerLimits::default(),
            budget: MemoryBudget::default(),
        }
    }
}

/// A running HTTP initiator.
pub struct HttpInitiator {
    server: HttpServer,
}

impl std::fmt::Debug for HttpInitiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpInitiator")
            .field("addr", &self.server.addr())
            .finish()
    }
}

struct State {
    caller: RouteCaller,
    config: HttpConfig,
}

impl HttpInitiator {
    /// Binds `addr` (port 0 picks a free one) and serves until [`HttpInitiator::shutdown`].
    ///
    /// Limits that do not validate fail with [`std::io::ErrorKind::InvalidInput`], the
    /// [`LimitsError`](crate::LimitsError) inside.
    pub async fn start(
        caller: RouteCaller,
        addr: SocketAddr,
        config: HttpConfig,
    ) -> std::io::Result<Self> {
        config
            .limits
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let limits = config.limits;
        let state = Arc::new(State { caller, config });
        let server = HttpServer::serve(listener, limits, "http initiator", move |request| {
            let state = state.clone();
            async move { handle(&state, request).await }
        })?;
        tracing::info!(addr = %server.addr(), "HTTP initiator listening");
        Ok(Self { server })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops accepting and closes connections once their responses are written.
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let mut response = match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/") => html(StatusCode::OK, form_page()),
        (Method::GET, "/new") => {
            let query = request.uri().query().unwrap_or("").as_bytes();
            match form_fields(query) {
                Ok(fields) => run_form(state, fields).await,
                Err(failure) => html(status_of(&failure), error_page(&failure)),
            }
        }
        (Method::POST, "/new") => match read_body_phased(request, &state.config).await {
            Ok(body) => match form_fields(&body.bytes) {
                Ok(fields) => run_form(state, fields).await,
                Err(failure) => html(status_of(&failure), error_page(&failure)),
            },
            Err(e) => body_error_page(&e),
        },
        (Method::POST, path) if path.starts_with(ROUTES_PATH) => match route_in_path(path) {
            Ok(route) => run_json(state, &route, request).await,
            Err(failure) => json(status_of(&failure), &failure.to_json()),
        },
        (_, "/" | "/new") => not_allowed("GET, POST"),
        (_, path) if path.starts_with(ROUTES_PATH) => not_allowed("POST"),
        _ => http::plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        // Nothing can serve, or the initiator is at its memory budget: both pass soon.
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The prefix of the JSON endpoint's paths; the route's name follows it.
const ROUTES_PATH: &str = "/v1/routes/";

/// The route named by a `/v1/routes/{route}` path: what follows the prefix (taken off once, so
/// `/v1/routes//v1/routes/hello` names no route rather than `hello`), percent-decoded as
/// UTF-8 (`hel%6Co` is `hello`; '+' stays '+', as in any path), and held to the rules of
/// route names, so a name that no route can have is refused here with the rule it breaks.
fn route_in_path(path: &str) -> Result<String, Failure> {
    let encoded = path.strip_prefix(ROUTES_PATH).unwrap_or(path);
    let name = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| Failure::BadRequest {
            message: "the route name in the path is not UTF-8 once percent-decoded".to_owned(),
        })?;
    crate::route::validate_name(&name).map_err(|e| Failure::BadRequest {
        message: e.to_string(),
    })?;
    Ok(name.into_owned())
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = http::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Most fields a form may have: the page has one, and each field costs far more held as a
/// JSON value than it takes on the wire.
const MAX_FORM_FIELDS: usize = 64;

/// Form fields as a JSON object of strings; a repeated field keeps its last value.
fn form_fields(encoded: &[u8]) -> Result<Value, Failure> {
    let mut fields = serde_json::Map::new();
    for (i, (k, v)) in form_urlencoded::parse(encoded).enumerate() {
        if i == MAX_FORM_FIELDS {
            return Err(Failure::BadRequest {
                message: format!("a form has at most {MAX_FORM_FIELDS} fields"),
            });
        }
        fields.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Ok(Value::Object(fields))
}

async fn run_form(state: &State, input: Value) -> Response<Full<Bytes>> {
    match state.caller.run(&state.config.form_route, input).await {
        Ok(output) => html(StatusCode::OK, result_page(&output)),
        Err(failure) => html(status_of(&failure), error_page(&failure)),
    }
}

async fn run_json(state: &State, route: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let failure = match read_body_phased(request, &state.config).await {
        // Checked as JSON but not parsed: the input goes to the router as the text it is.
        Ok(Body { bytes, held }) => {
            let run = match serde_json::from_slice::<&RawValue>(&bytes) {
                Ok(input) => PreparedRun::new(route, input),
                Err(e) => Err(Failure::BadRequest {
                    message: format!("the body is not JSON: {e}"),
                }),
            };
            // The router's request is a copy of the body: the body is not needed any more,
            // but its share of the budget is held until the answer is made.
            drop(bytes);
            let outcome = match run {
                Ok(run) => state.caller.run_prepared(run).await,
                Err(failure) => Err(failure),
            };
            drop(held);
            match outcome {
                Ok(output) => return json(StatusCode::OK, &output),
                Err(failure) => failure,
            }
        }
        Err(BodyError::TooLarge) => {
            let body = serde_json::json!({"error": {
                "kind": "too_large",
                "message": format!("the body exceeds {} bytes", state.config.max_body),
            }});
            return json(StatusCode::PAYLOAD_TOO_LARGE, &body);
        }
        Err(BodyError::OverBudget(e)) => Failure::Overloaded {
            message: e.to_string(),
        },
        Err(BodyError::Failed(message)) => Failure::BadRequest { message },
    };
    json(status_of(&failure), &failure.to_json())
}

/// A request body gathered into one buffer, with its share of the memory budget.
struct Body {
    bytes: BytesMut,
    held: Reservation,
}

/// Why a request body could not be read.
#[derive(Debug)]
enum BodyError {
    /// Longer than the limit.
    TooLarge,
    /// Keeping it would take the memory budget over its limit.
    OverBudget(OverBudget),
    /// The connection failed while the body was being read.
    Failed(String),
}

/// [`read_body`] of `request`, with its connection in the Body phase meanwhile.
async fn read_body_phased(
    request: Request<Incoming>,
    config: &HttpConfig,
) -> Result<Body, BodyError> {
    let _phase = http::body_phase(&request);
    read_body(request.into_body(), config).await
}

/// Reads a request body of at most `config.max_body` bytes, reserving its cost from the
/// budget before keeping its bytes.
///
/// Each frame is copied into one buffer and let go at once: a frame is a slice of the
/// connection's read buffer, and keeping frames (as `collect` does) keeps every buffer they
/// point into — a body sent one byte a packet then holds kilobytes for each byte.
async fn read_body(mut body: Incoming, config: &HttpConfig) -> Result<Body, BodyError> {
    let limit = config.max_body;
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    // Bounded by the limit just checked, so the cast cannot truncate.
    let declared = declared as usize;
    let mut held = config.budget.reservation();
    if let Err(e) = held.grow(declared) {
        return Err(refuse_over_budget(body, limit, e).await);
    }
    let mut reserved = declared;
    let mut bytes = BytesMut::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Failed(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = bytes.len() + data.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        if len > reserved {
            if let Err(e) = held.grow(len - reserved) {
                drop((bytes, held));
                return Err(refuse_over_budget(body, limit - len, e).await);
            }
            reserved = len;
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Body { bytes, held })
}

/// Reads what is left of a body over the budget (at most `limit` more bytes) without keeping
/// it, so that the client, still sending, reads its 503 rather than a connection reset: a
/// server that closes with unread bytes makes the kernel reset the connection, which can
/// destroy the answer before the client reads it. The slots' body deadlines bound the time
/// this may take; a body longer than `limit` is cut short and the connection closed.
async fn refuse_over_budget(mut body: Incoming, limit: usize, e: OverBudget) -> BodyError {
    let mut left = limit;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            match left.checked_sub(data.len()) {
                Some(rest) => left = rest,
                None => break,
            }
        }
    }
    BodyError::OverBudget(e)
}

fn status_of(failure: &Failure) -> StatusCode {
    StatusCode::from_u16(failure.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
}

fn json(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    http::respond(status, "application/json", body)
}

fn html(status: StatusCode, page: String) -> Response<Full<Bytes>> {
    http::respond(status, "text/html; charset=utf-8", page)
}

fn body_error_page(e: &BodyError) -> Response<Full<Bytes>> {
    let failure = match e {
        BodyError::TooLarge => {
            return html(
                StatusCode::PAYLOAD_TOO_LARGE,
                page(
                    "Too large",
                    "<p class=\"error\">That form is too large.</p>",
                ),
            );
        }
        BodyError::OverBudget(e) => Failure::Overloaded {
            message: e.to_string(),
        },
        BodyError::Failed(message) => Failure::BadRequest {
            message: message.clone(),
        },
    };
    html(status_of(&failure), error_page(&failure))
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · skynet</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         h1{{font-size:1.4rem}}input,button{{font-size:1rem;padding:.4rem .6rem}}\
         .result{{font-size:1.6rem;margin:1.5rem 0}}.error{{background:#fdecea;border:1px solid #f5c2c0;padding:1rem;border-radius:.4rem}}\
         .meta{{color:#666;font-size:.9rem}}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>\n",
        title = escape(title),
    )
}

fn form_page() -> String {
    page(
        "Say hello to skynet",
        "<form action=\"/new\" method=\"get\">\
         <label for=\"name\">Your name</label> \
         <input id=\"name\" name=\"name\" value=\"World\" autofocus> \
         <button type=\"submit\">Submit</button></form>\
         <p class=\"meta\">Programs can POST JSON to <code>/v1/routes/{route}</code>.</p>",
    )
}

fn result_page(output: &Value) -> String {
    let text = match output.get("greeting").and_then(Value::as_str) {
        Some(greeting) => greeting.to_owned(),
        None => serde_json::to_string_pretty(output).unwrap_or_default(),
    };
    let served_by = output
        .get("served_by")
        .map(|v| {
            format!(
                "<p class=\"meta\">Answered by process {}.</p>",
                escape(&v.to_string())
            )
        })
        .unwrap_or_default();
    page(
        "skynet says",
        &format!(
            "<p class=\"result\" id=\"result\">{}</p>{served_by}<p><a href=\"/\">Again</a></p>",
            escape(&text)
        ),
    )
}

fn error_page(failure: &Failure) -> String {
    page(
        "Sorry",
        &format!(
            "<div class=\"error\" id=\"error\"><p>{}</p><p class=\"meta\">{}</p></div>\
             <p><a href=\"/\">Back</a></p>",
            escape(&failure.friendly()),
            escape(&failure.to_string())
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_in_the_path_is_decoded_once_and_checked() {
        let name = |path: &str| route_in_path(path).map_err(|f| (f.http_status(), f.to_string()));
        assert_eq!(name("/v1/routes/hello"), Ok("hello".to_owned()));
        assert_eq!(name("/v1/routes/hel%6co"), Ok("hello".to_owned()));
        assert_eq!(name("/v1/routes/hel%6Co"), Ok("hello".to_owned()));
        for bad in [
            // The prefix is taken off once: what is left is not a route name.
            "/v1/routes//v1/routes/hello",
            "/v1/routes/v1/routes/hello",
            "/v1/routes/a%2Fb",
            "/v1/routes/",
            // '+' is not a space in a path, and not allowed in a route name either.
            "/v1/routes/a+b",
            "/v1/routes/a%20b",
            "/v1/routes/%ff",
        ] {
            let (status, message) = name(bad).expect_err(bad);
            assert_eq!(status, 400, "{bad}: {message}");
        }
        let (_, message) = name("/v1/routes/a%2Fb").expect_err("refused");
        assert!(message.contains("invalid route name \"a/b\""), "{message}");
        let (_, message) = name("/v1/routes/%ff").expect_err("refused");
        assert!(message.contains("not UTF-8"), "{message}");
    }

    #[test]
    fn form_fields_become_a_json_object() {
        assert_eq!(
            form_fields(b"name=World&x=a%20b&name=Again").expect("ok"),
            serde_json::json!({"name": "Again", "x": "a b"})
        );
        assert_eq!(form_fields(b"").expect("ok"), serde_json::json!({}));
        let many = "a=&".repeat(MAX_FORM_FIELDS + 1);
        assert!(form_fields(many.as_bytes()).is_err());
    }

    #[test]
    fn pages_escape_what_they_show() {
        let page = result_page(&serde_json::json!({"greeting": "<b>Hello</b>", "served_by": 7}));
        assert!(page.contains("&lt;b&gt;Hello&lt;/b&gt;"));
        assert!(page.contains("process 7"));
        let page = error_page(&Failure::Unavailable {
            route: "hello".into(),
            service: "hel<lo".into(),
            message: "no instance".into(),
        });
        assert!(page.contains("The hel&lt;lo service is not available"));
        assert!(!page.contains("hel<lo"));
    }
}
