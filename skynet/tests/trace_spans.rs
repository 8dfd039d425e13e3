//! The spans of served and outgoing calls, with their trace id and outcome.
//!
//! In a test binary of its own: `tracing` caches each callsite's interest process-wide, and a
//! test on another thread reaching the same callsites with no subscriber could leave this
//! test's thread-local subscriber unasked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use skynet::trace::TraceId;
use skynet::{Context, Node, ServiceDef, ServiceError};
use tracing::{Level, span};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

type TestResult = anyhow::Result<()>;

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
