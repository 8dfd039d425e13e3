//! What `#[skynet::service]` generates, exercised through real nodes: calls through the typed
//! clients in the same process (no network) and between two nodes over QUIC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skynet::{CallError, Context, Encoding, Node, ServiceError};

type TestResult = anyhow::Result<()>;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Numbers {
    values: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Sum {
    total: i64,
    remote: bool,
}

/// Adds numbers up, and says whether the call came over the network.
#[skynet::service(name = "math", version = "1.1.0", idempotent)]
async fn sum(ctx: Context, req: Numbers) -> Result<Sum, ServiceError> {
    Ok(Sum {
        total: req.values.iter().sum(),
        remote: ctx.is_remote(),
    })
}

#[skynet::service]
async fn shout(text: String) -> Result<String, ServiceError> {
    if text.is_empty() {
        return Err(ServiceError::new("nothing to shout").with_code("empty"));
    }
    Ok(text.to_uppercase())
}

/// State shared by every call, local or remote.
pub struct Counter {
    hits: AtomicU64,
}

#[skynet::service(version = "2.0.0")]
impl Counter {
    fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
        }
    }

    /// Adds `n` and returns the new total.
    async fn add(&self, n: u64) -> Result<u64, ServiceError> {
        Ok(self.hits.fetch_add(n, Ordering::SeqCst) + n)
    }

    #[idempotent]
    async fn get(&self, ctx: Context, _: ()) -> Result<(u64, bool), ServiceError> {
        Ok((self.hits.load(Ordering::SeqCst), ctx.is_remote()))
    }

    async fn refuse(&self, why: String) -> Result<(), ServiceError> {
        Err(ServiceError::new(why).with_code("refused"))
    }

    async fn sleep(&self, ms: u64) -> Result<(), ServiceError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

/// A node hosting the services and a caller, sharing one development CA.
async fn cluster(dir: &tempfile::TempDir) -> anyhow::Result<(Node, Node)> {
    let server = Node::builder()
        .name("svc")
        .development_credentials(dir.path())
        .service(sum)
        .service(shout)
        .service(Counter::new())
        .start()
        .await?;
    let caller = Node::builder()
        .name("caller")
        .development_credentials(dir.path())
        .start()
        .await?;
    Ok((server, caller))
}

fn numbers(values: &[i64]) -> Numbers {
    Numbers {
        values: values.to_vec(),
    }
}

#[tokio::test]
async fn function_service_local_and_remote() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, caller) = cluster(&dir).await?;

    let local = sum::client(&server).call(numbers(&[1, 2, 3])).await?;
    assert_eq!(
        local,
        Sum {
            total: 6,
            remote: false
        }
    );

    let remote = sum::client(&caller)
        .at(server.local_addr())
        .call(numbers(&[4, 5]))
        .await?;
    assert_eq!(
        remote,
        Sum {
            total: 9,
            remote: true
        }
    );

    let json = sum::client(&caller)
        .at(server.local_addr())
        .with_encoding(Encoding::Json)
        .with_deadline(Duration::from_secs(5))
        .call(numbers(&[-1]))
        .await?;
    assert_eq!(
        json,
        Sum {
            total: -1,
            remote: true
        }
    );

    // `name = "math"` names the service; the method keeps the function's name.
    let client = sum::client(&caller);
    assert_eq!(client.service_client().service(), "math");
    let reply: Sum = caller
        .client("math")
        .at(server.local_addr())
        .call::<_, _, ServiceError>("sum", numbers(&[7]))
        .await?;
    assert_eq!(reply.total, 7);

    // Without `.at`, a client calls this process, which does not host the service.
    let err = client
        .call(numbers(&[]))
        .await
        .expect_err("not hosted here");
    assert!(matches!(err, CallError::Unreachable { .. }), "{err}");

    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn function_service_errors_and_run() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, caller) = cluster(&dir).await?;

    assert_eq!(shout::run("hi".into()).await?, "HI");

    for client in [
        shout::client(&server),
        shout::client(&caller).at(server.local_addr()),
    ] {
        assert_eq!(client.call("hey".into()).await?, "HEY");
        match client.call(String::new()).await {
            Err(CallError::Service(e)) => {
                assert_eq!((e.message(), e.code()), ("nothing to shout", Some("empty")));
            }
            other => panic!("expected a service error, got {other:?}"),
        }
    }

    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn impl_service_shares_state_between_local_and_remote_calls() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (server, caller) = cluster(&dir).await?;
    let local = Counter::client(&server);
    let remote = Counter::client(&caller).at(server.local_addr());
    assert_eq!(local.service_client().service(), "counter");

    assert_eq!(local.add(2).await?, 2);
    assert_eq!(remote.add(3).await?, 5);
    assert_eq!(local.get(()).await?, (5, false));
    assert_eq!(remote.get(()).await?, (5, true));

    for client in [&local, &remote] {
        match client.refuse("no".into()).await {
            Err(CallError::Service(e)) => {
                assert_eq!((e.message(), e.code()), ("no", Some("refused")));
            }
            other => panic!("expected a service error, got {other:?}"),
        }
    }

    let err = remote
        .clone()
        .with_deadline(Duration::from_millis(100))
        .sleep(10_000)
        .await
        .expect_err("deadline");
    assert!(matches!(err, CallError::DeadlineExceeded(_)), "{err}");
    remote.sleep(1).await?;

    caller.shutdown().await;
    server.shutdown().await;
    Ok(())
}

#[test]
fn definitions_carry_names_versions_and_idempotency() -> TestResult {
    use skynet::IntoService as _;

    let def = sum.into_service()?;
    assert_eq!(
        (def.name(), def.version().to_string()),
        ("math", "1.1.0".into())
    );
    assert_eq!(def.methods().collect::<Vec<_>>(), ["sum"]);
    assert_eq!(def.is_idempotent("sum"), Some(true));

    let def = shout.into_service()?;
    assert_eq!(
        (def.name(), def.version().to_string()),
        ("shout", "0.1.0".into())
    );
    assert_eq!(def.is_idempotent("shout"), Some(false));

    let def = Counter::new().into_service()?;
    assert_eq!(
        (def.name(), def.version().to_string()),
        ("counter", "2.0.0".into())
    );
    let mut methods: Vec<_> = def.methods().collect();
    methods.sort_unstable();
    assert_eq!(methods, ["add", "get", "refuse", "sleep"]);
    assert_eq!(def.is_idempotent("get"), Some(true));
    assert_eq!(def.is_idempotent("add"), Some(false));
    Ok(())
}
