//! `skynet initiator http|tcp|file`: the library's initiators as processes.

use std::io::Write;
use std::time::Duration;

use skynet::ListenerLimits;
use skynet::initiator::file::{FileConfig, FileJob};
use skynet::initiator::http::{HttpConfig, HttpInitiator};
use skynet::initiator::tcp::{TcpConfig, TcpInitiator};
use skynet::initiator::{MemoryBudget, RouteCaller};

use crate::CliError;
use crate::cli::{FileInitiatorArgs, InitiatorCommand, ListenerArgs};
use crate::client;
use crate::signals::Signals;

/// Runs the chosen initiator until a stop signal (or, for a file, until it is done).
pub(crate) async fn run(command: InitiatorCommand, out: &mut impl Write) -> Result<(), CliError> {
    let mut signals = Signals::new()?;
    // A file run checks its files before it joins the cluster: bad files are refused at once,
    // with nothing written.
    let file = match &command {
        InitiatorCommand::File(a) => {
            let config = file_config(a);
            tokio::select! {
                job = FileJob::open(&a.input, &a.output, &config) => Some(job?),
                stop = signals.wait() => return stop,
            }
        }
        _ => None,
    };
    let (args, role) = match &command {
        InitiatorCommand::Http(a) => (&a.client, "http-initiator"),
        InitiatorCommand::Tcp(a) => (&a.client, "tcp-initiator"),
        InitiatorCommand::File(a) => (&a.client, "file-initiator"),
    };
    // With --direct the node hosts a router of its own, unlisted: its route runs are local
    // calls, and no other node sends it theirs.
    let router =
        matches!(&command, InitiatorCommand::Http(a) if a.direct).then(skynet::route::Router::new);
    let mut builder = client::builder(args, role);
    if let Some(router) = &router {
        builder = builder.unlisted_service(router.service());
    }
    let Some(node) = client::start(builder, &mut signals).await? else {
        return Ok(());
    };
    if let Some(router) = &router
        && let Err(e) = router.attach(&node)
    {
        node.shutdown().await;
        return Err(skynet::NodeError::Config(e.to_string()).into());
    }
    let result = serve(&command, file, &node, &mut signals, out).await;
    node.shutdown().await;
    result
}

async fn serve(
    command: &InitiatorCommand,
    file: Option<FileJob>,
    node: &skynet::Node,
    signals: &mut Signals,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let caller = |ms: u64| RouteCaller::new(node, Duration::from_millis(ms));
    let ready = |out: &mut dyn Write, kind: &str, addr: std::net::SocketAddr| {
        writeln!(
            out,
            "ready name={} addr={} {kind}={addr}{}",
            node.name(),
            node.local_addr(),
            client::admin_field(node)
        )
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
    };
    match command {
        InitiatorCommand::Http(a) => {
            let mut config = HttpConfig {
                form_route: a.route.clone(),
                budget: budget(a.memory_budget_mib),
                ..HttpConfig::default()
            };
            a.limits.apply(&mut config.limits);
            if let Some(ms) = a.body_timeout_ms {
                config.limits.body_timeout = Duration::from_millis(ms);
            }
            if let Some(rate) = a.min_body_rate {
                config.limits.min_body_rate = rate;
            }
            let http = HttpInitiator::start(caller(a.deadline_ms), a.listen, config)
                .await
                .map_err(|e| CliError::Listen(a.listen, e))?;
            ready(out, "http", http.addr())?;
            let stopped = signals.wait().await;
            http.shutdown().await;
            stopped
        }
        InitiatorCommand::Tcp(a) => {
            let mut config = TcpConfig {
                default_route: a.route.clone(),
                budget: budget(a.memory_budget_mib),
                ..TcpConfig::default()
            };
            a.limits.apply(&mut config.limits);
            let tcp = TcpInitiator::start(caller(a.deadline_ms), a.listen, config)
                .await
                .map_err(|e| CliError::Listen(a.listen, e))?;
            ready(out, "tcp", tcp.addr())?;
            let stopped = signals.wait().await;
            tcp.shutdown().await;
            stopped
        }
        InitiatorCommand::File(a) => {
            let job = match file {
                Some(job) => job,
                None => FileJob::open(&a.input, &a.output, &file_config(a)).await?,
            };
            let caller = caller(a.deadline_ms);
            let summary = tokio::select! {
                summary = job.run(&caller) => summary?,
                stop = signals.wait() => return stop,
            };
            writeln!(
                out,
                "done answered={} failed={} already_done={} unterminated={}",
                summary.answered, summary.failed, summary.already_done, summary.unterminated
            )
            .and_then(|()| out.flush())
            .map_err(CliError::Stdout)
        }
    }
}

impl ListenerArgs {
    /// Sets the limits these flags give; the others keep the initiator's defaults.
    fn apply(&self, limits: &mut ListenerLimits) {
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if let Some(n) = self.max_connections {
            limits.max_connections = count(n);
        }
        if let Some(n) = self.max_per_address {
            limits.max_per_address = Some(count(n));
        }
        for (flag, field) in [
            (self.head_timeout_ms, &mut limits.head_timeout),
            (self.idle_timeout_ms, &mut limits.idle_timeout),
            (self.write_timeout_ms, &mut limits.write_timeout),
            (self.max_lifetime_ms, &mut limits.max_lifetime),
        ] {
            if let Some(ms) = flag {
                *field = Duration::from_millis(ms);
            }
        }
    }
}

/// The process's memory budget for requests, from `--memory-budget-mib`.
fn budget(mib: u64) -> MemoryBudget {
    match usize::try_from(mib)
        .ok()
        .and_then(|m| m.checked_mul(1 << 20))
    {
        Some(bytes) => MemoryBudget::new(bytes),
        None => MemoryBudget::new(usize::MAX),
    }
}

fn file_config(a: &FileInitiatorArgs) -> FileConfig {
    FileConfig {
        default_route: a.route.clone(),
        concurrency: usize::try_from(a.concurrency).unwrap_or(16),
        ..FileConfig::default()
    }
}
