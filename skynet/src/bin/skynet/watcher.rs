//! `skynet watcher`: follows the registry and reports every change; serves statistics.

use std::io::Write;

use skynet::registry::Change;

use crate::CliError;
use crate::cli::{ServicesArgs, WatcherArgs};
use crate::client;
use crate::signals::Signals;

/// One line per registry change.
pub(crate) fn change_line(change: &Change) -> String {
    let (what, i) = match change {
        Change::Joined(i) => ("joined", i),
        Change::Updated(i) => ("updated", i),
        Change::Left(i) => ("left", i),
        _ => return String::new(),
    };
    format!(
        "{what} service={} addr={} node={} registered={}",
        i.service, i.addr, i.node, i.registered
    )
}

/// Runs until a stop signal.
pub(crate) async fn run(args: WatcherArgs, out: &mut impl Write) -> Result<(), CliError> {
    let mut signals = Signals::new()?;
    let Some(node) = client::start(client::builder(&args.client, "watcher"), &mut signals).await?
    else {
        return Ok(());
    };
    let result = print_changes(&node, &mut signals, out).await;
    node.shutdown().await;
    result
}

async fn print_changes(
    node: &skynet::Node,
    signals: &mut Signals,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let registry = node
        .registry()
        .ok_or_else(|| skynet::NodeError::Config("the watcher's node has no registry".into()))?;
    let mut changes = registry.changes();
    let print = |out: &mut dyn Write, line: &str| {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(CliError::Stdout)
    };
    print(
        out,
        &format!(
            "ready name={} addr={}{}",
            node.name(),
            node.local_addr(),
            client::admin_field(node)
        ),
    )?;
    loop {
        tokio::select! {
            stop = signals.wait() => return stop,
            change = changes.recv() => match change {
                Ok(change) => {
                    let line = change_line(&change);
                    if !line.is_empty() {
                        print(out, &line)?;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "the watcher fell behind the registry");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// `skynet services`: prints every instance as one JSON object per line.
pub(crate) async fn list(args: ServicesArgs, out: &mut impl Write) -> Result<(), CliError> {
    let node = client::builder(&args.client, "services").start().await?;
    let result = async {
        let store = node
            .store()
            .ok_or_else(|| skynet::NodeError::Config("the node has no store".into()))?;
        let snapshot = skynet::registry::read(&store).await?;
        for instance in snapshot.all() {
            if args
                .service
                .as_ref()
                .is_some_and(|s| *s != instance.service)
            {
                continue;
            }
            let line = serde_json::to_string(instance).map_err(|e| {
                skynet::NodeError::Config(format!("an instance record does not encode: {e}"))
            })?;
            writeln!(out, "{line}").map_err(CliError::Stdout)?;
        }
        out.flush().map_err(CliError::Stdout)
    }
    .await;
    node.shutdown().await;
    result
}
