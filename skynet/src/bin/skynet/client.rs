//! Starting a node that reaches the config store as a client: what every role but `node` runs
//! on.

use std::net::SocketAddr;

use skynet::{Node, NodeBuilder, StoreConfig};

use crate::CliError;
use crate::cli::ClientArgs;

/// A builder for the client node `args` describe; `role` names it when `--name` is absent.
pub(crate) fn builder(args: &ClientArgs, role: &str) -> NodeBuilder {
    let name = args.name.clone().unwrap_or_else(|| role.to_owned());
    let mut builder = Node::builder()
        .name(name)
        .bind(SocketAddr::new(args.bind, args.port.unwrap_or(0)))
        .development_credentials_existing(&args.certs)
        .store(StoreConfig::client(args.join.clone()));
    if let Some(admin) = args.admin {
        builder = builder.admin(admin);
    }
    builder
}

/// Starts the node, or returns early on a stop signal.
pub(crate) async fn start(
    builder: NodeBuilder,
    signals: &mut crate::signals::Signals,
) -> Result<Option<Node>, CliError> {
    tokio::select! {
        node = builder.start() => Ok(Some(node?)),
        stop = signals.wait() => stop.map(|()| None),
    }
}

/// ` admin=<addr>` when the node serves an admin port, for ready lines.
pub(crate) fn admin_field(node: &Node) -> String {
    node.admin_addr()
        .map(|a| format!(" admin={a}"))
        .unwrap_or_default()
}
