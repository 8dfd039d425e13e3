//! `skynet hold-lease` (hidden): a store client that holds one lease with keys bound to it and
//! keeps it alive until stopped. It stands in for an application process that registers itself
//! (as services will), so tests can kill such an owner and watch its keys go. `skynet node` is
//! no such owner: a member's own leases would die with the member, which is exactly what cannot
//! be told apart from the store losing data.
//!
//! It prints `ready lease=<id> revision=<rev>` once the keys are written, then `kept lease=<id>`
//! after every keep-alive. SIGTERM or Ctrl-C revokes the lease (its keys go at once); SIGKILL
//! leaves it to expire.

use std::io::Write;
use std::time::Duration;

use skynet::{Node, StoreConfig};

use crate::CliError;
use crate::cli::HoldLeaseArgs;
use crate::signals::Signals;

/// Runs until a stop signal; lines go to `out`.
pub(crate) async fn run(args: HoldLeaseArgs, out: &mut impl Write) -> Result<(), CliError> {
    let ttl = Duration::from_millis(args.ttl_ms);
    let config = StoreConfig::client(args.seed.clone());
    config.validate()?;
    let mut signals = Signals::new()?;
    let node = Node::builder()
        .name(args.name.as_str())
        .development_credentials_existing(&args.certs)
        .store(config)
        .start()
        .await?;
    let result = hold(&node, &args, ttl, &mut signals, out).await;
    node.shutdown().await;
    result
}

async fn hold(
    node: &Node,
    args: &HoldLeaseArgs,
    ttl: Duration,
    signals: &mut Signals,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let store = node
        .store()
        .ok_or_else(|| skynet::NodeError::Config("the node started without a store".into()))?;
    let lease = store.lease_grant(ttl).await?;
    let mut revision = 0;
    for (key, value) in &args.put {
        revision = store
            .put_with_lease(key.as_str(), value.as_bytes(), lease)
            .await?;
    }
    line(out, &format!("ready lease={lease} revision={revision}"))?;
    // A third of the TTL: two keep-alives can be lost before the lease lapses.
    let mut beat = tokio::time::interval(ttl / 3);
    beat.tick().await;
    loop {
        tokio::select! {
            stop = signals.wait() => {
                stop?;
                store.lease_revoke(lease).await?;
                return Ok(());
            }
            _ = beat.tick() => match store.lease_keep_alive(lease).await {
                Ok(_) => line(out, &format!("kept lease={lease}"))?,
                // The lease is gone (expired or revoked): nothing left to hold.
                Err(e @ skynet::StoreError::Lease(_)) => return Err(e.into()),
                // No leader for a moment: the next beat tries again, well within the TTL.
                Err(e) => tracing::warn!(error = %e, "keep-alive failed; retrying"),
            },
        }
    }
}

fn line(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}
