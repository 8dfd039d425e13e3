//! Trace ids across hops: node A calls a service on B whose handler calls a service on C (and
//! one on B itself, through the same-process fast path); everyone sees A's trace id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use skynet::{Context, Node, ServiceDef, ServiceError, TraceId};
use tracing::{Level, span};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

type TestResult = anyhow::Result<()>;

/// What each hop saw: the relay's own trace id, the remote hop's and the local hop's.
type Seen = (String, String, String);

fn who() -> ServiceDef {
    ServiceDef::builder("who", "1.0.0")
        .method("trace", |ctx: Context, (): ()| async move {
            Ok::<_, ServiceError>(ctx.trace_id().to_string())
        })
        .build()
        .expect("valid service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_pass_their_trace_id_on_without_being_told() -> TestResult {
    let dir = tempfile::tempdir()?;
    let node = |name: &str| {
        Node::builder()
            .name(name)
            .development_credentials(dir.path())
    };
    let c = node("c").service(who()).start().await?;
    let c_addr = c.local_addr();

    // B's handler calls C through B's own node, which exists only once B has started.
    let b_node: Arc<OnceLock<Node>> = Arc::default();
    let relay = ServiceDef::builder("relay", "1.0.0").method("via", {
        let b_node = b_node.clone();
        move |ctx: Context, (): ()| {
            let b = b_node.get().cloned();
            async move {
                let b = b.ok_or_else(|| ServiceError::new("not started"))?;
                let remote: String = b
                    .client("who")
                    .at(c_addr)
                    .call::<_, String, ServiceError>("trace", ())
                    .await
                    .map_err(|e| ServiceError::new(e.to_string()))?;
                let local: String = b
                    .client("local_who")
                    .call::<_, String, ServiceError>("trace", ())
                    .await
                    .map_err(|e| ServiceError::new(e.to_string()))?;
                Ok::<Seen, ServiceError>((ctx.trace_id().to_string(), remote, local))
            }
        }
    });
    let local_who = ServiceDef::builder("local_who", "1.0.0").method(
        "trace",
        |ctx: Context, (): ()| async move {
            assert!(!ctx.is_remote());
            Ok::<_, ServiceError>(ctx.trace_id().to_string())
        },
    );
    let b = node("b").service(relay).service(local_who).start().await?;
    b_node.set(b.clone()).expect("set once");
    let a = node("a").start().await?;
    let via = a.client("relay").at(b.local_addr());

    // A trace id in scope on A reaches B, C, and B's same-process hop.
    let trace = TraceId::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0001);
    let seen: Seen = trace
        .scope(via.call::<_, Seen, ServiceError>("via", ()))
        .await?;
    let want = trace.to_string();
    assert_eq!(seen, (want.clone(), want.clone(), want));

    // Without one, each call from A starts a new chain, still shared by every hop.
    let first: Seen = via.call::<_, Seen, ServiceError>("via", ()).await?;
    let second: Seen = via.call::<_, Seen, ServiceError>("via", ()).await?;
    for (relay, remote, local) in [&first, &second] {
        assert_eq!(relay, remote);
        assert_eq!(relay, local);
        assert_eq!(relay.len(), 32);
    }
    assert_ne!(first.0, second.0);
    assert_ne!(first.0, want_zero());

    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
    Ok(())
}

fn want_zero() -> String {
    TraceId::from_u128(0).to_string()
}

/// A span's name and fields, by field name.
type SeenSpan = (String, BTreeMap<String, String>);

/// Spans seen by a subscriber, with the fields recorded after they were created.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<SeenSpan>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, _: LayerContext<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        fields.insert("#id".to_owned(), id.into_u64().to_string());
        let mut spans = self.0.lock().expect("lock");
        spans.push((attrs.metadata().name().to_owned(), fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, _: LayerContext<'_, S>) {
        let mut spans = self.0.lock().expect("lock");
        let id = id.into_u64().to_string();
        if let Some((_, fields)) = spans.iter_mut().rev().find(|(_, f)| f["#id"] == id) {
            values.record(&mut Fields(fields));
        }
    }
}

// One thread, so that the thread-local subscriber sees the server's side too.
#[tokio::test(flavor = "current_thread")]
async fn served_and_outgoing_calls_run_in_spans_with_their_outcome() -> TestResult {
    let spans = Spans::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(
        spans.clone().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("skynet", Level::DEBUG),
        ),
    ));
    let dir = tempfile::tempdir()?;
    let echo = ServiceDef::builder("echo", "1.0.0")
        .method("say", |_: Context, s: String| async move {
            Ok::<_, ServiceError>(s)
        })
        .method("fail", |_: Context, s: String| async move {
            Err::<String, _>(ServiceError::new(s))
        });
    let server = Node::builder()
        .development_credentials(dir.path())
        .service(echo)
        .start()
        .await?;
    let caller = Node::builder()
        .development_credentials(dir.path())
        .start()
        .await?;
    let client = caller.client("echo").at(server.local_addr());
    let trace = TraceId::from_u128(77);
    trace
        .scope(async {
            client
                .call::<_, String, ServiceError>("say", "hi".to_owned())
                .await?;
            let failed = client
                .call::<_, String, ServiceError>("fail", "no".to_owned())
                .await;
            assert!(failed.is_err());
            anyhow::Ok(())
        })
        .await?;
    caller.shutdown().await;
    server.shutdown().await;

    let spans = spans.0.lock().expect("lock").clone();
    let find = |name: &str, method: &str| {
        spans
            .iter()
            .find(|(n, f)| n == name && f.get("method").map(String::as_str) == Some(method))
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no {name} span for {method} in {spans:?}"))
    };
    for (method, outcome) in [("say", "ok"), ("fail", "service_error")] {
        let call = find("skynet.call", method);
        assert_eq!(call["service"], "echo");
        assert_eq!(call["trace_id"], trace.to_string());
        assert_eq!(call["outcome"], outcome);
        let serve = find("skynet.serve", method);
        assert_eq!(serve["service"], "echo");
        assert_eq!(serve["trace_id"], trace.to_string());
        assert_eq!(serve["outcome"], outcome);
        assert_ne!(
            serve["request_id"], "0",
            "a remote call has its connection's id"
        );
    }
    Ok(())
}
