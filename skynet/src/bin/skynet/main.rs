//! `skynet`: run cluster processes from the command line.
//!
//! `skynet node` runs a plain config-store member, `skynet router` a router, and `skynet routes`
//! reads and changes routes; later roles (initiator, watcher, ...) become subcommands next to
//! them. Parsing lives in `cli`, each subcommand's logic in its own
//! module, and this file does the process-level I/O: logging, the runtime, the exit code.

mod cli;
mod client;
mod hold_lease;
mod initiator;
mod node;
mod router;
mod routes;
mod signals;
mod watcher;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// jemalloc rather than the system allocator: its background threads hand freed memory back to
/// the system within seconds, where glibc's malloc keeps what a burst of large requests took
/// (its threshold for giving large blocks their own mappings rises with every large block
/// freed, and what then comes from its heaps stays), so an initiator's memory goes back when
/// the load goes.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Why a subcommand failed. Printed to stderr; the process exits with status 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum CliError {
    /// The node could not be configured or started.
    #[error(transparent)]
    Node(skynet::NodeError),
    /// A role that joins a cluster found no cluster CA in its `--certs` directory.
    #[error(
        "no cluster CA in {}: the first node (skynet node without --join) creates it; \
         pass the same --certs as the cluster",
        .0.display()
    )]
    NoClusterCa(std::path::PathBuf),
    /// A config store request failed.
    #[error(transparent)]
    Store(#[from] skynet::StoreError),
    /// A route was refused, or a route operation failed.
    #[error(transparent)]
    Route(#[from] skynet::route::RouteError),
    /// The router could not start.
    #[error(transparent)]
    Router(#[from] skynet::route::RouterError),
    /// An input file (or stdin) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Input {
        /// The file, `-` for stdin.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log filter does not parse.
    #[error("invalid --log-level {filter:?}: {reason}")]
    LogFilter {
        /// The filter given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The ready line could not be written.
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    /// A listening socket could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    /// A file initiator run failed.
    #[error(transparent)]
    File(#[from] skynet::initiator::file::FileError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<skynet::NodeError> for CliError {
    fn from(e: skynet::NodeError) -> Self {
        match e {
            // The library's words do not know the command line; these say which flag to fix.
            skynet::NodeError::Tls(skynet::tls::TlsError::NoClusterCa { dir }) => {
                CliError::NoClusterCa(dir)
            }
            e => CliError::Node(e),
        }
    }
}

fn main() -> ExitCode {
    // clap prints its own errors (and --help) and exits with status 2.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skynet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    init_logging(cli.log_filter())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        match cli.command {
            Command::Node(args) => node::run(args, &mut std::io::stdout()).await,
            Command::Router(args) => router::run(args, &mut std::io::stdout()).await,
            Command::Routes(args) => routes::run(args, &mut std::io::stdout()).await,
            Command::HoldLease(args) => hold_lease::run(args, &mut std::io::stdout()).await,
            Command::Initiator(command) => initiator::run(command, &mut std::io::stdout()).await,
            Command::Watcher(args) => watcher::run(args, &mut std::io::stdout()).await,
            Command::Services(args) => watcher::list(args, &mut std::io::stdout()).await,
        }
    })
}

/// Logs go to stderr, so stdout carries only machine-readable lines.
///
/// A line is logged if `filter` passes it and so does the store's quieting of openraft
/// ([`skynet::store::RECOMMENDED_LOG_FILTER`]: openraft would log every request to a member that
/// is down, several lines each, many a second). The two are separate filters, so that the
/// quieting never shows what `filter` hides (`--log-level error` shows no openraft warnings); a
/// `filter` that names openraft replaces the quieting, to debug openraft itself.
fn init_logging(filter: &str) -> Result<(), CliError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let error = |reason: String| CliError::LogFilter {
        filter: filter.to_owned(),
        reason,
    };
    let parse = |directives: &str| {
        tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| error(e.to_string()))
    };
    let quiet = if filter.contains("openraft") {
        None
    } else {
        Some(parse(&format!(
            "trace,{}",
            skynet::store::RECOMMENDED_LOG_FILTER
        ))?)
    };
    // Colours only for a person at a terminal, not in a file or a journal.
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(parse(filter)?.and(quiet));
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| error(e.to_string()))
}
