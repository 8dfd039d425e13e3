//! `skynet router`: hosts the `skynet.router` service as a store client, so that initiators
//! find it by name, and runs the routes it follows through the store's watch.

use std::io::Write;
use std::time::Duration;

use skynet::route::{ROUTER_SERVICE, Router};
use skynet::{Node, StoreConfig};

use crate::cli::RouterArgs;
use crate::signals::Signals;
use crate::{CliError, client};

/// Runs the router until SIGTERM or Ctrl-C, then shuts it down gracefully. The ready line goes
/// to `out`.
pub(crate) async fn run(args: RouterArgs, out: &mut impl Write) -> Result<(), CliError> {
    StoreConfig::client(args.client.join.clone()).validate()?;
    let mut signals = Signals::new()?;
    let router = Router::new();
    let builder = client::builder(&args.client, "router").service(router.service());
    let Some(node) = client::start(builder, &mut signals).await? else {
        return Ok(());
    };
    let result = serve(&node, &router, &mut signals, out).await;
    tracing::info!("shutting down");
    node.shutdown().await;
    result
}

async fn serve(
    node: &Node,
    router: &Router,
    signals: &mut Signals,
    out: &mut impl Write,
) -> Result<(), CliError> {
    router.attach(node)?;
    let table = router
        .table()
        .ok_or_else(|| skynet::NodeError::Config("the router has no route table".into()))?;
    // Ready means ready to run routes: the routes have been read once. Until then the store
    // may be unreachable; a stop signal ends the wait.
    let loaded = async { while !table.loaded(Duration::from_secs(3600)).await {} };
    tokio::select! {
        () = loaded => {}
        stop = signals.wait() => return stop,
    }
    let routes = table.snapshot().routes().count();
    writeln!(
        out,
        "ready name={} addr={} service={ROUTER_SERVICE} routes={routes}{}",
        node.name(),
        node.local_addr(),
        client::admin_field(node)
    )
    .and_then(|()| out.flush())
    .map_err(CliError::Stdout)?;
    signals.wait().await?;
    tracing::info!("stop signal received");
    Ok(())
}
