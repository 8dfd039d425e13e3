//! Two processes, one service, one call across them over QUIC with mutual TLS.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release --example hello
//! ```
//!
//! The program starts a copy of itself as a second OS process that hosts the `hello` service,
//! reads the address it prints, calls it by that address through the typed client, and stops
//! it. Both processes share a development CA in a private directory (random name, mode 0700)
//! that the caller makes under the system temp directory, passes to the service process and
//! removes at the end.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use skynet::Node;
use skynet_examples::{HelloRequest, hello};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("serve") {
        let certs = args
            .next()
            .context("usage: hello serve <credentials dir>")?;
        return serve(PathBuf::from(certs)).await;
    }
    call().await
}

/// The service process: host `hello`, print the address, run until stdin closes.
async fn serve(certs: PathBuf) -> anyhow::Result<()> {
    let node = Node::builder()
        .name("greeter")
        .development_credentials(certs)
        .service(hello)
        .start()
        .await?;
    println!("{}", node.local_addr());
    // The parent closes our stdin to stop us; then we shut down gracefully.
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
    node.shutdown().await;
    Ok(())
}

/// The calling process.
async fn call() -> anyhow::Result<()> {
    // A new directory only this user can enter: a fixed name in the shared temp directory
    // could be made first by someone else, with a CA of their own.
    let certs = tempfile::Builder::new()
        .prefix("skynet-example-hello-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("creating the credentials directory")?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg(certs.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the service process")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let addr: SocketAddr = BufReader::new(stdout)
        .lines()
        .next()
        .context("the service process exited before printing its address")??
        .parse()
        .context("the service process printed something that is not an address")?;
    println!("service process {} hosts `hello` at {addr}", child.id());

    let node = Node::builder()
        .name("caller")
        .development_credentials(certs.path())
        .start()
        .await?;
    let client = hello::client(&node)
        .at(addr)
        .with_deadline(Duration::from_secs(5));

    let started = Instant::now();
    let reply = client
        .call(HelloRequest {
            name: "World".into(),
        })
        .await?;
    println!(
        "{} (answered by process {}, first call incl. TLS handshake: {:?})",
        reply.greeting,
        reply.served_by,
        started.elapsed()
    );

    let started = Instant::now();
    let calls = 1000;
    for i in 0..calls {
        client
            .call(HelloRequest {
                name: format!("caller {i}"),
            })
            .await?;
    }
    println!(
        "{calls} sequential calls on the open connection: {:?} per call",
        started.elapsed() / calls
    );

    match client.call(HelloRequest { name: " ".into() }).await {
        Err(skynet::CallError::Service(e)) => {
            println!("an empty name is refused by the service: {e}");
        }
        other => anyhow::bail!("expected the service's own error, got {other:?}"),
    }

    node.shutdown().await;
    drop(child.stdin.take());
    let status = child.wait()?;
    println!("service process stopped ({status})");
    certs.close().context("removing the credentials directory")
}
