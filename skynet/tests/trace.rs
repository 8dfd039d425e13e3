//! Trace ids across hops: node A calls a service on B whose handler calls a service on C (and
//! one on B itself, through the same-process fast path); everyone sees A's trace id.

use std::sync::{Arc, OnceLock};

use skynet::trace::TraceId;
use skynet::{Context, Node, ServiceDef, ServiceError};

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
