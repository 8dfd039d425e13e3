//! [`StoreWatch`]: a member's watch of its own history, or a client's long polls of members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{CLIENT_RETRY_PAUSE, ClientShared};
use super::seek::poll_failure_suspects;
use super::wire::{Refusal, WatchBatch, WatchPoll};
use super::{Event, Revision, STORE_SERVICE, StoreError, WATCH};
use crate::error::CallError;
use crate::rpc::RpcCore;

/// How long a client's watch poll waits before asking again (below `MAX_WATCH_WAIT`). It
/// also bounds, with the half-second margin of the poll's deadline, how long a watch sits on a
/// member that died silently, unless the client's other requests notice first. An idle watch
/// costs one small request a second.
const WATCH_WAIT: Duration = Duration::from_secs(1);

/// A watch on a key prefix from [`Store::watch`](crate::Store::watch): every later change, in order, with no gap.
pub struct StoreWatch {
    pub(super) inner: WatchInner,
}

pub(super) enum WatchInner {
    Member(skynet_raft::Watcher),
    Client(ClientWatch),
}

/// A client's watch: long polls of one member at a time.
pub(super) struct ClientWatch {
    pub(super) client: Arc<ClientShared>,
    pub(super) rpc: std::sync::Arc<RpcCore>,
    pub(super) prefix: String,
    pub(super) after: Revision,
    /// Which seed to poll (advances when a member fails).
    pub(super) round: usize,
}

impl ClientWatch {
    async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        let give_up = self.client.config.timeout;
        let mut failing_since: Option<Instant> = None;
        loop {
            let target = self.client.target(self.round);
            let poll = WatchPoll {
                prefix: self.prefix.clone(),
                after: self.after,
                wait_ms: u64::try_from(WATCH_WAIT.as_millis()).unwrap_or(u64::MAX),
            };
            let call = self.rpc.call_at::<WatchPoll, WatchBatch, Refusal>(
                STORE_SERVICE,
                target,
                WATCH,
                poll,
                WATCH_WAIT + Duration::from_millis(500),
            );
            // A poll moves on when a request of this client suspects its member meanwhile, but
            // a poll sent to a member already suspected (every member is) waits for its answer:
            // abandoning it at once would only spin.
            let watch_suspicion = !self.client.is_suspect(target);
            let mut abandoned = false;
            let reply = tokio::select! {
                reply = call => reply,
                () = self.client.until_suspect(target), if watch_suspicion => {
                    abandoned = true;
                    Err(CallError::Unavailable(format!("{target} stopped answering")))
                }
            };
            match reply {
                Ok(batch) => {
                    failing_since = None;
                    self.client.cleared(target);
                    // Members agree on the history, so any member's later revision is a safe
                    // place to resume from.
                    self.after = self.after.max(batch.scanned);
                    if !batch.events.is_empty() {
                        return Ok(batch.events);
                    }
                }
                Err(CallError::Service(Refusal::Failed(e))) => return Err(e),
                Err(e) => {
                    tracing::debug!(member = %target, error = %e, "watch poll failed; trying another member");
                    if poll_failure_suspects(&e, abandoned) {
                        self.client.suspect(target);
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= give_up {
                        return Err(StoreError::Unreachable(format!(
                            "no member answered a watch poll for {give_up:?}: {e}"
                        )));
                    }
                    if self.client.asked_every_seed(self.round) {
                        tokio::time::sleep(CLIENT_RETRY_PAUSE).await;
                    }
                    self.round += 1;
                }
            }
        }
    }
}

impl std::fmt::Debug for StoreWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWatch")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl StoreWatch {
    /// The last revision delivered (or started after).
    pub fn revision(&self) -> Revision {
        match &self.inner {
            WatchInner::Member(w) => w.revision(),
            WatchInner::Client(w) => w.after,
        }
    }

    /// Waits for the next changes (at least one), oldest first. Fails with
    /// [`StoreError::Compacted`] if the watch fell behind the kept history, and on a client with
    /// [`StoreError::Unreachable`] when no member answered for the store's timeout; either way
    /// a new watch can resume from [`StoreWatch::revision`] (after a fresh read, if compacted).
    pub async fn next(&mut self) -> Result<Vec<Event>, StoreError> {
        match &mut self.inner {
            WatchInner::Member(w) => w.next().await.map_err(StoreError::from_raft),
            WatchInner::Client(w) => w.next().await,
        }
    }
}
