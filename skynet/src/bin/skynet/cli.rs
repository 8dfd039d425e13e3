//! The command line: every subcommand's flags, parsed and checked by clap. No I/O here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run processes of a skynet cluster: services that are very hard to kill.
#[derive(Debug, Parser)]
#[command(name = "skynet", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or directives like
    /// "info,skynet=debug". Logs go to stderr. [default: info; warn for `routes`]
    #[arg(long, global = true, value_name = "FILTER")]
    pub(crate) log_level: Option<String>,

    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The log filter in force: `--log-level`, else `warn` for the one-shot `routes` commands
    /// (whose stdout is the answer) and `info` for the long-running roles.
    pub(crate) fn log_filter(&self) -> &str {
        match (&self.log_level, &self.command) {
            (Some(filter), _) => filter,
            (None, Command::Routes(_)) => "warn",
            (None, _) => "info",
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a config store member: bootstrap a new cluster, or join one through a member.
    ///
    /// Once the member follows a leader it prints one line to stdout,
    /// `ready name=<name> addr=<ip:port> id=<member id>`, and runs until SIGTERM or Ctrl-C,
    /// then shuts down gracefully. Restarted with the same --data-dir (and address), it
    /// resumes as the same member.
    #[command(after_help = "Examples:\n  \
        skynet node --name a --port 7000 --data-dir /var/lib/skynet/a --certs /etc/skynet/dev\n  \
        skynet node --name b --join 127.0.0.1:7000 --data-dir /var/lib/skynet/b --certs /etc/skynet/dev")]
    Node(NodeArgs),

    /// Run a router: host the skynet.router service, which runs the routes stored in the
    /// config store.
    ///
    /// The router reaches the store as a client through --join, follows every route through
    /// the store's watch (a changed route is used as soon as it arrives, no restart), and
    /// registers itself, so that initiators find it by name and fail over to another router
    /// when it dies. Once it has read the routes it prints one line to stdout,
    /// `ready name=<name> addr=<ip:port> service=skynet.router routes=<count>` (and
    /// ` admin=<ip:port>` with --admin), and runs until SIGTERM or
    /// Ctrl-C, then stops gracefully: it stops taking new requests, finishes the ones it has,
    /// and leaves the registry.
    #[command(after_help = "Example:\n  \
        skynet router --name router-1 --join 127.0.0.1:7000 --certs /etc/skynet/dev")]
    Router(RouterArgs),

    /// Read and change the routes in the config store (JSON in and out).
    ///
    /// A route is a named list of hops, each a call of one method of one service; see
    /// docs/routes.md for the format. Every route is validated before it is written.
    #[command(after_help = "Examples:\n  \
        skynet routes list --join 127.0.0.1:7000 --certs /etc/skynet/dev\n  \
        skynet routes get hello --join 127.0.0.1:7000 --certs /etc/skynet/dev > hello.json\n  \
        skynet routes set hello.json --join 127.0.0.1:7000 --certs /etc/skynet/dev\n  \
        echo '{\"name\":\"hello\",\"hops\":[{\"service\":\"hello\",\"method\":\"hello\"}]}' \\\n    \
        | skynet routes set --join 127.0.0.1:7000 --certs /etc/skynet/dev\n  \
        skynet routes delete hello --join 127.0.0.1:7000 --certs /etc/skynet/dev")]
    Routes(RoutesArgs),

    /// Test aid: hold a lease with keys on it, as a store client, until stopped.
    #[command(hide = true)]
    HoldLease(HoldLeaseArgs),

    /// Take requests in from outside (HTTP, TCP or a file) and run them as routes on the
    /// cluster's routers.
    #[command(subcommand)]
    Initiator(InitiatorCommand),

    /// Follow the service registry: log every instance that joins, changes or leaves (the
    /// reaper's work: an instance whose process died leaves when its lease runs out), and
    /// serve the statistics on the admin port.
    ///
    /// Prints `ready name=<name> addr=<ip:port> admin=<ip:port>`, then one line per change:
    /// `joined|updated|left service=<name> addr=<ip:port> node=<name>`.
    Watcher(WatcherArgs),

    /// List the service instances the registry holds, one JSON object per line.
    Services(ServicesArgs),
}

/// The initiators.
#[derive(Debug, Subcommand)]
pub(crate) enum InitiatorCommand {
    /// Serve an HTML form at / and JSON at POST /v1/routes/{route}.
    ///
    /// Prints `ready name=<name> addr=<ip:port> http=<ip:port> admin=<ip:port>`.
    #[command(after_help = "Example:\n  \
        skynet initiator http --join 127.0.0.1:7000 --certs /tmp/skynet-dev --listen 127.0.0.1:8080")]
    Http(HttpInitiatorArgs),

    /// Serve newline-delimited JSON requests ({"route", "input", "id"}) over TCP.
    ///
    /// Prints `ready name=<name> addr=<ip:port> tcp=<ip:port> admin=<ip:port>`.
    Tcp(TcpInitiatorArgs),

    /// Run every request of a JSONL file and append the answers to another, resuming where
    /// an earlier run stopped.
    ///
    /// Both files are checked before the cluster is joined: they must be regular files, not
    /// the same file, and an existing output must hold only answers; otherwise the run is
    /// refused and nothing is written. A last input line without a newline is left for a later
    /// run. Prints `done answered=<n> failed=<n> already_done=<n> unterminated=<n>` and exits
    /// when the file is done.
    File(FileInitiatorArgs),
}

/// Flags of every process that reaches the store as a client.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// This process's name, used in its certificate and its logs.
    #[arg(long)]
    pub(crate) name: Option<String>,

    /// IP address of the QUIC endpoint.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub(crate) bind: IpAddr,

    /// UDP port of the QUIC endpoint; absent or 0 picks a free one.
    #[arg(long)]
    pub(crate) port: Option<u16>,

    /// Address of a config store member; repeat for more.
    #[arg(long = "join", value_name = "ADDR", required = true)]
    pub(crate) join: Vec<SocketAddr>,

    /// Development credentials directory of the cluster: its CA must be there already (the
    /// cluster's first node created it); this process's certificate is issued on first use.
    #[arg(long, value_name = "DIR")]
    pub(crate) certs: PathBuf,

    /// Serve /debug/vars and /metrics on this address (port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<SocketAddr>,
}

/// Flags of `skynet initiator http`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HttpInitiatorArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,

    /// Where to serve HTTP.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,

    /// The route the form runs.
    #[arg(long, default_value = "hello", value_parser = parse_route_name)]
    pub(crate) route: String,

    /// Run routes in this process instead of on router processes (the original's "advanced
    /// configuration": initiators calling services without a router).
    #[arg(long)]
    pub(crate) direct: bool,

    /// Deadline of one request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) deadline_ms: u64,

    /// Memory that requests being read and run may hold at once, in MiB; over it, new
    /// requests are refused (HTTP 503 with Retry-After, an error line on TCP) until some finish.
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub(crate) memory_budget_mib: u64,

    #[command(flatten)]
    pub(crate) limits: ListenerArgs,

    /// A request body must arrive within this, in milliseconds. [default: 60000]
    #[arg(long, value_name = "MS", value_parser = millis())]
    pub(crate) body_timeout_ms: Option<u64>,

    /// After its first 5 s a request body must have arrived at this many bytes a second on
    /// average; 0 turns the check off. [default: 1024]
    #[arg(long, value_name = "BYTES")]
    pub(crate) min_body_rate: Option<u64>,
}

/// The connection slots and deadlines of an initiator's listener; absent flags keep the
/// initiator's defaults.
#[derive(Debug, Clone, Args)]
pub(crate) struct ListenerArgs {
    /// Connections served at once; when all are taken, a new one closes the longest idle (else
    /// the slowest sender). [default: 1024]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_connections: Option<u64>,

    /// Connections one client IP address may hold at once. [default: a quarter of
    /// --max-connections]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) max_per_address: Option<u64>,

    /// A request head (http) or line (tcp) must arrive within this from its first byte, in
    /// milliseconds. [default: 10000 for http, 30000 for tcp]
    #[arg(long, value_name = "MS", value_parser = millis())]
    pub(crate) head_timeout_ms: Option<u64>,

    /// A connection with nothing in flight is closed after this, in milliseconds. [default:
    /// 60000 for http, 120000 for tcp]
    #[arg(long, value_name = "MS", value_parser = millis())]
    pub(crate) idle_timeout_ms: Option<u64>,

    /// A connection whose answers the client does not read is closed after this, in
    /// milliseconds. [default: 30000]
    #[arg(long, value_name = "MS", value_parser = millis())]
    pub(crate) write_timeout_ms: Option<u64>,

    /// A connection is closed after this, once its request in progress is done, in
    /// milliseconds. [default: 300000 for http, 3600000 for tcp]
    #[arg(long, value_name = "MS", value_parser = millis())]
    pub(crate) max_lifetime_ms: Option<u64>,
}

/// Milliseconds from 1 to a year: every limit a listener validates.
fn millis() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=365 * 24 * 3600 * 1000)
}

/// Flags of `skynet initiator tcp`.
#[derive(Debug, Clone, Args)]
pub(crate) struct TcpInitiatorArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,

    /// Where to listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,

    /// The route of requests that name none (otherwise "route" is required).
    #[arg(long, value_parser = parse_route_name)]
    pub(crate) route: Option<String>,

    /// Deadline of one request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) deadline_ms: u64,

    /// Memory that requests being read and run may hold at once, in MiB; over it, new
    /// requests are refused (HTTP 503 with Retry-After, an error line on TCP) until some finish.
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub(crate) memory_budget_mib: u64,

    #[command(flatten)]
    pub(crate) limits: ListenerArgs,
}

/// Flags of `skynet initiator file`.
#[derive(Debug, Clone, Args)]
pub(crate) struct FileInitiatorArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,

    /// The JSONL file of requests.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,

    /// The JSONL file answers are appended to (created with the first answer; an existing
    /// one must hold only answers).
    #[arg(long, value_name = "FILE")]
    pub(crate) output: PathBuf,

    /// The route of requests that name none (otherwise "route" is required).
    #[arg(long, value_parser = parse_route_name)]
    pub(crate) route: Option<String>,

    /// Requests that run at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) concurrency: u64,

    /// Deadline of one request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(crate) deadline_ms: u64,
}

/// Flags of `skynet watcher`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WatcherArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Flags of `skynet services`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServicesArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,

    /// Only this service's instances.
    #[arg(long)]
    pub(crate) service: Option<String>,
}

/// Flags of `skynet node`.
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeArgs {
    /// This process's name, used in its certificate and its logs.
    #[arg(long)]
    pub(crate) name: String,

    /// IP address to listen on. Peers dial the address a member binds, so it must be one they
    /// can reach (not 0.0.0.0).
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub(crate) bind: IpAddr,

    /// UDP port to listen on; absent or 0 picks a free one (see the ready line).
    #[arg(long)]
    pub(crate) port: Option<u16>,

    /// Address of a cluster member to join through; repeat for more. Without it the node
    /// bootstraps a new cluster.
    #[arg(long = "join", value_name = "ADDR")]
    pub(crate) join: Vec<SocketAddr>,

    /// Directory of this member's id and Raft data; created if missing.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,

    /// How many voters the cluster keeps (1, 3 or 5). Members beyond it are learners, and
    /// take a voter's seat when one stops answering. Used while this member leads.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = parse_voters)]
    pub(crate) voters: usize,

    /// Development credentials directory: the cluster CA and node certificates. Every process
    /// of a cluster must use the same one. Without --join the node creates the CA if the
    /// directory has none; with --join the CA must be there already.
    #[arg(long, value_name = "DIR")]
    pub(crate) certs: PathBuf,
}

/// Flags of `skynet router`: those of every store client (`--name` defaults to `router`).
#[derive(Debug, Clone, Args)]
pub(crate) struct RouterArgs {
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// Flags of `skynet routes`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RoutesArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: RoutesCommand,
}

/// How `skynet routes` reaches the config store.
#[derive(Debug, Clone, Args)]
pub(crate) struct StoreFlags {
    /// Address of a config store member; repeat for more.
    #[arg(long = "join", value_name = "ADDR", required = true)]
    pub(crate) join: Vec<SocketAddr>,

    /// Development credentials directory of the cluster: its CA must be there already (the
    /// cluster's first node created it); this process's certificate is issued on first use.
    #[arg(long, value_name = "DIR")]
    pub(crate) certs: PathBuf,
}

/// The subcommands of `skynet routes`.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum RoutesCommand {
    /// Print every route as a JSON array, in name order, each with its revision.
    List {
        /// The store.
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Print one route as JSON, with its revision (exit status 1 if there is none).
    Get {
        /// The route's name.
        name: String,
        /// The store.
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Validate a route and write it; prints {"name":..,"revision":..}.
    ///
    /// The route's JSON comes from FILE, or from stdin if FILE is absent or "-". If it has a
    /// "revision" (as `routes get` prints it), the write happens only if the stored route is
    /// still at that revision, so that concurrent edits are never silently lost; without one
    /// it overwrites. Routers use the new route as soon as their watch delivers it.
    Set {
        /// The route's JSON file; "-" or absent for stdin.
        file: Option<PathBuf>,
        /// The store.
        #[command(flatten)]
        store: StoreFlags,
    },
    /// Delete a route (exit status 1 if there is none); prints {"name":..,"deleted":true}.
    Delete {
        /// The route's name.
        name: String,
        /// The store.
        #[command(flatten)]
        store: StoreFlags,
    },
}

impl RoutesCommand {
    /// How to reach the store.
    pub(crate) fn store(&self) -> &StoreFlags {
        match self {
            RoutesCommand::List { store }
            | RoutesCommand::Get { store, .. }
            | RoutesCommand::Set { store, .. }
            | RoutesCommand::Delete { store, .. } => store,
        }
    }
}

/// Flags of the hidden `skynet hold-lease`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HoldLeaseArgs {
    /// This process's name, used in its certificate.
    #[arg(long, default_value = "lease-holder")]
    pub(crate) name: String,

    /// Address of a cluster member; repeat for more.
    #[arg(long, value_name = "ADDR", required = true)]
    pub(crate) seed: Vec<SocketAddr>,

    /// Development credentials directory of the cluster: its CA must be there already (the
    /// cluster's first node created it); this process's certificate is issued on first use.
    #[arg(long, value_name = "DIR")]
    pub(crate) certs: PathBuf,

    /// The lease's time to live, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub(crate) ttl_ms: u64,

    /// A key to write, bound to the lease; repeat for more.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) put: Vec<(String, String)>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE with a non-empty key".into()),
    }
}

/// A route name, held to the rules every stored route's name follows: a name no route can
/// have would only fail each request later.
fn parse_route_name(s: &str) -> Result<String, String> {
    skynet::route::validate_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_voters(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err("must be 1, 3 or 5 (an odd number, so that a majority is clear)".into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("skynet").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_flags_and_defaults() {
        let cli = parse(&["node", "--name", "a", "--data-dir", "d", "--certs", "c"]).expect("ok");
        let Command::Node(args) = &cli.command else {
            panic!("node expected");
        };
        assert_eq!(args.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((args.port, args.voters), (None, 3));
        assert!(args.join.is_empty());
        assert_eq!(cli.log_filter(), "info");

        let cli = parse(&[
            "node",
            "--name",
            "b",
            "--data-dir",
            "d",
            "--certs",
            "c",
            "--join",
            "10.0.0.1:7000",
            "--join",
            "10.0.0.2:7000",
            "--voters",
            "5",
            "--port",
            "7001",
            "--log-level",
            "debug",
        ])
        .expect("ok");
        let Command::Node(args) = &cli.command else {
            panic!("node expected");
        };
        assert_eq!(args.join.len(), 2);
        assert_eq!((args.port, args.voters), (Some(7001), 5));
        assert_eq!(cli.log_filter(), "debug");
    }

    #[test]
    fn bad_flags_are_refused() {
        let base = ["node", "--name", "a", "--data-dir", "d", "--certs", "c"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args).map(|_| ())
        };
        assert!(with(&["--voters", "2"]).is_err());
        assert!(with(&["--join", "not-an-address"]).is_err());
        assert!(with(&["--port", "70000"]).is_err());
        assert!(with(&["--bind", "localhost"]).is_err());
        assert!(
            parse(&["node", "--name", "a", "--certs", "c"]).is_err(),
            "--data-dir is required"
        );
        assert!(parse(&["frobnicate"]).is_err());

        // A route name that no route can have is refused by every initiator, with the rule.
        let initiator = |kind: &'static str, route: &'static str| {
            let mut args = vec![
                "initiator",
                kind,
                "--join",
                "127.0.0.1:7000",
                "--certs",
                "c",
            ];
            if kind == "file" {
                args.extend_from_slice(&["--input", "in", "--output", "out"]);
            }
            args.extend_from_slice(&["--route", route]);
            parse(&args).map(|_| ())
        };
        for kind in ["http", "tcp", "file"] {
            assert!(initiator(kind, "hello").is_ok(), "{kind}");
            for bad in ["", "a/b", "sp ace"] {
                let e = initiator(kind, bad).expect_err(bad).to_string();
                assert!(e.contains("invalid route name"), "{kind} {bad:?}: {e}");
            }
        }
        let e = initiator("http", "").expect_err("empty").to_string();
        assert!(e.contains("a route needs a name"), "{e}");
    }

    #[test]
    fn router_flags_need_a_store_to_join() {
        let cli = parse(&["router", "--join", "127.0.0.1:7000", "--certs", "c"]).expect("ok");
        let Command::Router(args) = cli.command else {
            panic!("router expected");
        };
        assert_eq!((args.client.name, args.client.port), (None, None));
        assert_eq!(args.client.join.len(), 1);
        assert!(
            parse(&["router", "--certs", "c"]).is_err(),
            "--join is required"
        );
        assert!(parse(&["router", "--join", "x", "--certs", "c"]).is_err());
    }

    #[test]
    fn routes_subcommands_parse() {
        let routes_args = |extra: &[&'static str]| {
            let mut args = vec!["routes"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--join", "127.0.0.1:7000", "--certs", "c"]);
            args
        };
        let routes = |extra: &[&'static str]| {
            parse(&routes_args(extra)).map(|cli| match cli.command {
                Command::Routes(args) => args.command,
                other => panic!("routes expected, got {other:?}"),
            })
        };
        assert!(matches!(routes(&["list"]), Ok(RoutesCommand::List { .. })));
        let quiet = parse(&routes_args(&["list"])).expect("ok");
        assert_eq!(quiet.log_filter(), "warn");
        assert!(
            matches!(routes(&["get", "hello"]), Ok(RoutesCommand::Get { name, .. }) if name == "hello")
        );
        assert!(matches!(
            routes(&["set"]),
            Ok(RoutesCommand::Set { file: None, .. })
        ));
        assert!(matches!(
            routes(&["set", "r.json"]),
            Ok(RoutesCommand::Set { file: Some(_), .. })
        ));
        assert!(matches!(
            routes(&["delete", "hello"]),
            Ok(RoutesCommand::Delete { .. })
        ));
        assert!(routes(&["get"]).is_err(), "get needs a name");
        assert!(routes(&["rename"]).is_err());
        assert!(
            parse(&["routes", "list", "--certs", "c"]).is_err(),
            "--join is required"
        );
    }

    #[test]
    fn initiators_take_listener_limits() {
        let base = [
            "initiator",
            "http",
            "--join",
            "127.0.0.1:7000",
            "--certs",
            "c",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        let cli = with(&[]).expect("ok");
        let Command::Initiator(InitiatorCommand::Http(args)) = cli.command else {
            panic!("http initiator expected");
        };
        assert_eq!(args.limits.max_connections, None);
        assert_eq!(args.min_body_rate, None);
        let cli = with(&[
            "--max-connections",
            "16",
            "--max-per-address",
            "2",
            "--head-timeout-ms",
            "500",
            "--idle-timeout-ms",
            "700",
            "--min-body-rate",
            "0",
        ])
        .expect("ok");
        let Command::Initiator(InitiatorCommand::Http(args)) = cli.command else {
            panic!("http initiator expected");
        };
        assert_eq!(
            (args.limits.max_connections, args.limits.max_per_address),
            (Some(16), Some(2))
        );
        assert_eq!(
            (args.limits.head_timeout_ms, args.limits.idle_timeout_ms),
            (Some(500), Some(700))
        );
        assert_eq!(args.min_body_rate, Some(0));
        assert!(with(&["--max-connections", "0"]).is_err());
        assert!(with(&["--idle-timeout-ms", "0"]).is_err());
        let tcp = parse(&[
            "initiator",
            "tcp",
            "--join",
            "127.0.0.1:7000",
            "--certs",
            "c",
            "--write-timeout-ms",
            "100",
        ])
        .expect("ok");
        let Command::Initiator(InitiatorCommand::Tcp(args)) = tcp.command else {
            panic!("tcp initiator expected");
        };
        assert_eq!(args.limits.write_timeout_ms, Some(100));
        assert!(
            parse(&[
                "initiator",
                "tcp",
                "--join",
                "127.0.0.1:7000",
                "--certs",
                "c",
                "--min-body-rate",
                "5"
            ])
            .is_err(),
            "tcp reads no bodies"
        );
    }

    #[test]
    fn hold_lease_takes_seeds_and_key_values() {
        let cli = parse(&[
            "hold-lease",
            "--seed",
            "127.0.0.1:7000",
            "--certs",
            "c",
            "--put",
            "svc/a=1=2",
        ])
        .expect("ok");
        let Command::HoldLease(args) = cli.command else {
            panic!("hold-lease expected");
        };
        assert_eq!(args.put, [("svc/a".to_owned(), "1=2".to_owned())]);
        assert_eq!(args.ttl_ms, 2000);
        assert!(
            parse(&["hold-lease", "--certs", "c"]).is_err(),
            "a seed is required"
        );
        assert!(
            parse(&[
                "hold-lease",
                "--seed",
                "127.0.0.1:1",
                "--certs",
                "c",
                "--put",
                "=x"
            ])
            .is_err()
        );
        assert!(
            !Cli::command()
                .render_help()
                .to_string()
                .contains("hold-lease")
        );
    }
}
