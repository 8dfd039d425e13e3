//! `skynet node`: a plain config-store member.
//!
//! [`NodePlan::from_args`] turns the flags into what to start (pure, checked before any socket
//! opens); [`run`] starts it, prints the ready line and waits for a stop signal.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use skynet::{Node, StoreConfig};

use crate::CliError;
use crate::cli::NodeArgs;
use crate::signals::Signals;

/// What `skynet node` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodePlan {
    name: String,
    bind: SocketAddr,
    certs: PathBuf,
    /// Whether the node joins a cluster (`--join`): then its CA must be in `certs` already.
    joins: bool,
    store: StoreConfig,
}

impl NodePlan {
    /// Checks the flags together and builds the plan.
    pub(crate) fn from_args(args: &NodeArgs) -> Result<Self, CliError> {
        let store = if args.join.is_empty() {
            StoreConfig::bootstrap(&args.data_dir)
        } else {
            StoreConfig::join(&args.data_dir, args.join.clone())
        }
        .voters(args.voters);
        store.validate()?;
        Ok(Self {
            name: args.name.clone(),
            bind: SocketAddr::new(args.bind, args.port.unwrap_or(0)),
            certs: args.certs.clone(),
            joins: !args.join.is_empty(),
            store,
        })
    }
}

/// The one machine-readable line printed once the member follows a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ready<'a> {
    pub(crate) name: &'a str,
    pub(crate) addr: SocketAddr,
    pub(crate) id: u64,
}

impl fmt::Display for Ready<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ready name={} addr={} id={}",
            self.name, self.addr, self.id
        )
    }
}

/// Runs the member until SIGTERM or Ctrl-C, then shuts it down gracefully. The ready line goes
/// to `out`.
pub(crate) async fn run(args: NodeArgs, out: &mut impl Write) -> Result<(), CliError> {
    let plan = NodePlan::from_args(&args)?;
    let mut signals = Signals::new()?;
    let builder = Node::builder().name(plan.name.as_str()).bind(plan.bind);
    // Only the first node creates the cluster CA; one that joins and finds none was pointed
    // at the wrong directory, and a CA of its own would make it a stranger to the cluster.
    let builder = if plan.joins {
        builder.development_credentials_existing(&plan.certs)
    } else {
        builder.development_credentials(&plan.certs)
    };
    let start = builder.store(plan.store).start();
    // Joining may wait for a leader for a while; a stop signal meanwhile ends it.
    let node = tokio::select! {
        node = start => node?,
        stop = signals.wait() => return stop,
    };
    let Some(id) = node.store().and_then(|store| store.id()) else {
        node.shutdown().await;
        return Err(
            skynet::NodeError::Config("the node started without a store member".into()).into(),
        );
    };
    let ready = Ready {
        name: node.name(),
        addr: node.local_addr(),
        id,
    };
    let printed = writeln!(out, "{ready}").and_then(|()| out.flush());
    if let Err(e) = printed {
        node.shutdown().await;
        return Err(CliError::Stdout(e));
    }
    let stopped = signals.wait().await;
    tracing::info!("stop signal received; shutting down");
    node.shutdown().await;
    stopped
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(extra: &[&str]) -> NodeArgs {
        let base = [
            "skynet",
            "node",
            "--name",
            "a",
            "--data-dir",
            "d",
            "--certs",
            "c",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).expect("flags parse");
        let Command::Node(args) = cli.command else {
            panic!("node expected");
        };
        args
    }

    #[test]
    fn no_join_bootstraps_and_joins_take_seeds() {
        let plan = NodePlan::from_args(&args(&[])).expect("valid");
        assert_eq!(plan.store, StoreConfig::bootstrap("d"));
        assert_eq!(plan.bind, SocketAddr::from(([127, 0, 0, 1], 0)));

        let seed: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let plan = NodePlan::from_args(&args(&["--join", "127.0.0.1:7000", "--voters", "5"]))
            .expect("valid");
        assert_eq!(plan.store, StoreConfig::join("d", vec![seed]).voters(5));
    }

    #[test]
    fn the_ready_line_is_one_parseable_line() {
        let line = Ready {
            name: "a",
            addr: SocketAddr::from(([127, 0, 0, 1], 40123)),
            id: 1234,
        }
        .to_string();
        assert_eq!(line, "ready name=a addr=127.0.0.1:40123 id=1234");
    }
}
