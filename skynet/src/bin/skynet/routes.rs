//! `skynet routes list|get|set|delete`: operators' access to the routes in the config store.
//! Output is JSON on stdout; errors go to stderr with exit status 1.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use skynet::route::{self, MAX_ROUTE_JSON, Route, RouteError};
use skynet::{Node, Store, StoreConfig};

use crate::CliError;
use crate::cli::{RoutesArgs, RoutesCommand};

/// Runs one `skynet routes` subcommand; its JSON goes to `out`.
pub(crate) async fn run(args: RoutesArgs, out: &mut impl Write) -> Result<(), CliError> {
    // A route to write is read and validated before any connection is made: a bad one is
    // refused without touching the cluster.
    let new_route = match &args.command {
        RoutesCommand::Set { file, .. } => Some(read_route(file.as_deref())?),
        _ => None,
    };
    let flags = args.command.store();
    let config = StoreConfig::client(flags.join.clone());
    config.validate()?;
    let node = Node::builder()
        .name("skynet-routes")
        .development_credentials_existing(&flags.certs)
        .store(config)
        .start()
        .await?;
    let result = match node.store() {
        Some(store) => execute(&store, &args.command, new_route, out).await,
        None => Err(skynet::NodeError::Config("the node started without a store".into()).into()),
    };
    node.shutdown().await;
    result
}

async fn execute(
    store: &Store,
    command: &RoutesCommand,
    new_route: Option<Route>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let json = match command {
        RoutesCommand::List { .. } => {
            let routes = route::list(store).await?;
            serde_json::to_string_pretty(&routes).unwrap_or_default()
        }
        RoutesCommand::Get { name, .. } => match route::get(store, name).await? {
            Some(route) => route.to_json_pretty(),
            None => return Err(RouteError::NotFound(name.clone()).into()),
        },
        RoutesCommand::Set { .. } => {
            let Some(route) = new_route else {
                return Err(skynet::NodeError::Config("no route to set".into()).into());
            };
            let revision = route::put(store, &route).await?;
            serde_json::json!({ "name": route.name, "revision": revision }).to_string()
        }
        RoutesCommand::Delete { name, .. } => {
            route::delete(store, name).await?;
            serde_json::json!({ "name": name, "deleted": true }).to_string()
        }
    };
    writeln!(out, "{json}")
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

/// Reads a route's JSON from `file` (stdin if absent or "-"), at most one byte past the limit
/// so that an oversized input is refused without reading all of it.
fn read_route(file: Option<&Path>) -> Result<Route, CliError> {
    let limit = u64::try_from(MAX_ROUTE_JSON).unwrap_or(u64::MAX) + 1;
    let mut bytes = Vec::new();
    let (source, read) = match file {
        None => (
            PathBuf::from("-"),
            read_limited(std::io::stdin(), limit, &mut bytes),
        ),
        Some(path) if path == Path::new("-") => (
            path.to_owned(),
            read_limited(std::io::stdin(), limit, &mut bytes),
        ),
        Some(path) => (
            path.to_owned(),
            std::fs::File::open(path).and_then(|f| read_limited(f, limit, &mut bytes)),
        ),
    };
    read.map_err(|source_error| CliError::Input {
        path: source,
        source: source_error,
    })?;
    Ok(Route::from_slice(&bytes)?)
}

fn read_limited(reader: impl Read, limit: u64, into: &mut Vec<u8>) -> std::io::Result<()> {
    reader.take(limit).read_to_end(into).map(|_| ())
}
