//! A process hosting the sample `hello` and `count` services, registered in the cluster's
//! config store so that callers reach them by name.
//!
//! ```not_rust
//! hello-service --certs /tmp/skynet-dev --seed 127.0.0.1:7000 [--name greeter-1] [--port 0]
//! ```
//!
//! Prints one line, `ready name=.. addr=.. pid=..`, once the services are registered, then
//! serves until SIGTERM or Ctrl-C, when it shuts down gracefully: it unregisters, drains the
//! calls it accepted, and leaves the registry.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use skynet::registry::RegistrationConfig;
use skynet::{Node, StoreConfig};
use skynet_examples::{count, hello};

/// Hosts the sample Hello World services in a skynet cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The node's name (in logs and in the registry).
    #[arg(long, default_value = "hello-service")]
    name: String,
    /// The IP address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// The port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// A config store member to reach the store through (repeat for several).
    #[arg(long = "seed", required = true, value_name = "ADDR")]
    seeds: Vec<SocketAddr>,
    /// The cluster's development credentials directory, holding its CA (made by the first
    /// store member).
    #[arg(long, value_name = "DIR")]
    certs: PathBuf,
    /// The region this instance runs in.
    #[arg(long, default_value = "unknown")]
    region: String,
    /// The registration lease TTL in milliseconds: a killed instance leaves the registry
    /// about this long after its last keep-alive.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(300..=60_000))]
    ttl_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let node = Node::builder()
        .name(&args.name)
        .bind(SocketAddr::new(args.bind, args.port))
        // The cluster made the CA; a wrong directory is an error naming it, not a new CA.
        .development_credentials_existing(&args.certs)
        .region(&args.region)
        .registration(RegistrationConfig {
            ttl: Duration::from_millis(args.ttl_ms),
            ..RegistrationConfig::default()
        })
        .store(StoreConfig::client(args.seeds))
        .service(hello)
        .service(count)
        .start()
        .await
        .context("starting the node")?;
    println!(
        "ready name={} addr={} pid={}",
        args.name,
        node.local_addr(),
        std::process::id()
    );
    wait_for_stop().await?;
    node.shutdown().await;
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C.
async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c.context("listening for Ctrl-C")?,
    }
    Ok(())
}
