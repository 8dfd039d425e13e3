//! The HTTP initiator: an HTML form for people and a JSON endpoint for programs.
//!
//! | request | what it does |
//! |---|---|
//! | `GET /` | the form (one field, `name`) |
//! | `GET /new?name=World`, `POST /new` (form-encoded) | runs the configured route with the form's fields as a JSON object (`{"name": "World"}`) and shows the result |
//! | `POST /v1/routes/{route}` (JSON body) | runs `route` with the body as input; answers the output as JSON |
//!
//! Failures answer with the fitting status (503 when no router or no instance of a service
//! can serve, 404 for an unknown route, 504 on timeout, 400 for bad input, 413 for a body over
//! the limit): a readable page for the form, `{"error": {...}}` for JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::{Failure, RouteCaller};
use crate::http::{self, BodyError, HttpServer};
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            form_route: "hello".to_owned(),
            max_body: 1 << 20,
            limits: ListenerLimits::default(),
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
    match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/") => html(StatusCode::OK, form_page()),
        (Method::GET, "/new") => {
            let fields = form_fields(request.uri().query().unwrap_or("").as_bytes());
            run_form(state, fields).await
        }
        (Method::POST, "/new") => {
            match http::read_request_body(request, state.config.max_body).await {
                Ok(body) => run_form(state, form_fields(&body)).await,
                Err(e) => body_error_page(&e),
            }
        }
        (Method::POST, path) if path.starts_with("/v1/routes/") => {
            let route = path.trim_start_matches("/v1/routes/").to_owned();
            run_json(state, &route, request).await
        }
        (_, "/" | "/new") => not_allowed("GET, POST"),
        (_, path) if path.starts_with("/v1/routes/") => not_allowed("POST"),
        _ => http::plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = http::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Form fields as a JSON object of strings; a repeated field keeps its last value.
fn form_fields(encoded: &[u8]) -> Value {
    Value::Object(
        form_urlencoded::parse(encoded)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect(),
    )
}

async fn run_form(state: &State, input: Value) -> Response<Full<Bytes>> {
    match state.caller.run(&state.config.form_route, input).await {
        Ok(output) => html(StatusCode::OK, result_page(&output)),
        Err(failure) => html(status_of(&failure), error_page(&failure)),
    }
}

async fn run_json(state: &State, route: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let failure = match http::read_request_body(request, state.config.max_body).await {
        Ok(body) => match serde_json::from_slice::<Value>(&body) {
            Ok(input) => match state.caller.run(route, input).await {
                Ok(output) => return json(StatusCode::OK, &output),
                Err(failure) => failure,
            },
            Err(e) => Failure::BadRequest {
                message: format!("the body is not JSON: {e}"),
            },
        },
        Err(BodyError::TooLarge) => {
            let body = serde_json::json!({"error": {
                "kind": "too_large",
                "message": format!("the body exceeds {} bytes", state.config.max_body),
            }});
            return json(StatusCode::PAYLOAD_TOO_LARGE, &body);
        }
        Err(BodyError::Failed(message)) => Failure::BadRequest { message },
    };
    json(status_of(&failure), &failure.to_json())
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
    match e {
        BodyError::TooLarge => html(
            StatusCode::PAYLOAD_TOO_LARGE,
            page(
                "Too large",
                "<p class=\"error\">That form is too large.</p>",
            ),
        ),
        BodyError::Failed(message) => html(
            StatusCode::BAD_REQUEST,
            error_page(&Failure::BadRequest {
                message: message.clone(),
            }),
        ),
    }
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
    fn form_fields_become_a_json_object() {
        assert_eq!(
            form_fields(b"name=World&x=a%20b&name=Again"),
            serde_json::json!({"name": "Again", "x": "a b"})
        );
        assert_eq!(form_fields(b""), serde_json::json!({}));
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
