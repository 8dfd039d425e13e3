//! The command line: every subcommand's flags, parsed and checked by clap. No I/O here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run processes of a skynet cluster: services that are very hard to kill.
#[derive(Debug, Parser)]
#[command(name = "skynet", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or directives like
    /// "info,skynet=debug". Logs go to stderr.
    #[arg(long, global = true, value_name = "FILTER", default_value = "info")]
    pub(crate) log_level: String,

    /// What to run.
    #[command(subcommand)]
    pub(crate) command: Command,
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

    /// Test aid: hold a lease with keys on it, as a store client, until stopped.
    #[command(hide = true)]
    HoldLease(HoldLeaseArgs),
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

    /// Development credentials directory: the cluster CA (created on first use) and node
    /// certificates. Every process of a cluster must use the same one.
    #[arg(long, value_name = "DIR")]
    pub(crate) certs: PathBuf,
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

    /// Development credentials directory of the cluster.
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
        let Command::Node(args) = cli.command else {
            panic!("node expected");
        };
        assert_eq!(args.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((args.port, args.voters), (None, 3));
        assert!(args.join.is_empty());
        assert_eq!(cli.log_level, "info");

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
        let Command::Node(args) = cli.command else {
            panic!("node expected");
        };
        assert_eq!(args.join.len(), 2);
        assert_eq!((args.port, args.voters), (Some(7001), 5));
        assert_eq!(cli.log_level, "debug");
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
