//! Group commit: concurrent writes share one log entry.
//!
//! openraft 0.9 appends each client write as an entry of its own and, on the leader, waits for that
//! append's fsync before it looks at the next request, so N writers at once cost N fsyncs in a row.
//! Here every write joins a queue instead. One task takes what has queued up (at most
//! [`BatchLimits::commands`] commands and about [`BatchLimits::bytes`]) and proposes it as one
//! entry; at most [`BatchLimits::in_flight`] entries are in flight, and while they are, writes
//! queue up for the next batch. A lone writer never waits for a batch to fill, and a busy leader pays
//! one fsync per batch instead of one per write.
//!
//! The state machine applies a batch's commands in order as if each had an entry of its own (its own
//! revision, its own result), so batching changes nothing a client can see but the latency.

use std::sync::Arc;

use openraft::Raft;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::RaftNodeError;
use crate::state::{Command, Outcome};
use crate::storage::{Response, TypeConfig};

/// How large a batch may grow and how many may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchLimits {
    /// Most commands in one entry.
    pub(super) commands: usize,
    /// A batch stops growing once its commands' size reaches this (so it may exceed it by one
    /// command).
    pub(super) bytes: usize,
    /// Most entries proposed and not yet applied. More than one lets the leader append the next
    /// batch while the previous one is on its way to the followers.
    pub(super) in_flight: usize,
}

/// A write waiting to be proposed, and where its result goes.
struct Pending {
    cmd: Command,
    reply: oneshot::Sender<Result<Outcome, RaftNodeError>>,
}

/// The queue of writes and the task that proposes them.
pub(super) struct Proposer {
    queue: mpsc::Sender<Pending>,
    task: tokio::task::JoinHandle<()>,
}

/// Writes that may wait in the queue before callers have to wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

impl Proposer {
    pub(super) fn start(raft: Raft<TypeConfig>, limits: BatchLimits) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(run(raft, rx, limits));
        Self { queue, task }
    }

    /// Proposes `cmd` in the next batch and waits until it is applied.
    pub(super) async fn propose(&self, cmd: Command) -> Result<Outcome, RaftNodeError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Pending { cmd, reply })
            .await
            .map_err(|_| RaftNodeError::stopped("the proposer has stopped"))?;
        result
            .await
            .map_err(|_| RaftNodeError::stopped("the proposer dropped the write"))?
    }

    /// Stops taking writes; batches already proposed finish on their own.
    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Proposer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(raft: Raft<TypeConfig>, mut queue: mpsc::Receiver<Pending>, limits: BatchLimits) {
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    loop {
        // Take a slot before taking writes: while every slot is busy, writes gather in the queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let batch = fill_batch(first, || queue.try_recv().ok(), limits);
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch).await;
            drop(slot);
        });
    }
}

/// `first` and whatever `next` yields, up to the limits. Writes whose caller has given up are
/// left out: nobody was told they happened, and under overload they are the ones to shed.
fn fill_batch(
    first: Pending,
    mut next: impl FnMut() -> Option<Pending>,
    limits: BatchLimits,
) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut candidate = Some(first);
    while let Some(p) = candidate {
        if !p.reply.is_closed() {
            bytes += p.cmd.size_hint();
            batch.push(p);
            if batch.len() >= limits.commands || bytes >= limits.bytes {
                break;
            }
        }
        candidate = next();
    }
    batch
}

/// Proposes one batch and hands every caller its own command's result.
async fn commit(raft: &Raft<TypeConfig>, batch: Vec<Pending>) {
    let (cmds, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let results: Vec<Result<Outcome, RaftNodeError>> = match raft.client_write(cmds).await {
        Ok(resp) => match resp.data {
            Response::Applied(results) if results.len() == replies.len() => results
                .into_iter()
                .map(|r| r.map_err(RaftNodeError::from))
                .collect(),
            other => {
                let e = RaftNodeError::stopped(format!(
                    "a batch of {} commands was answered with {other:?}",
                    replies.len()
                ));
                vec![Err(e); replies.len()]
            }
        },
        Err(e) => vec![Err(RaftNodeError::from_write(e)); replies.len()],
    };
    for (reply, result) in replies.into_iter().zip(results) {
        // A caller that went away meanwhile does not need its result.
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Op;

    fn put(value_len: usize) -> (Pending, oneshot::Receiver<Result<Outcome, RaftNodeError>>) {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Op(Op::Put {
            key: "k".into(),
            value: vec![0; value_len],
            lease: None,
            prev_kv: false,
        });
        (Pending { cmd, reply }, rx)
    }

    const LIMITS: BatchLimits = BatchLimits {
        commands: 3,
        bytes: 1000,
        in_flight: 1,
    };

    #[test]
    fn a_batch_takes_what_is_queued_up_to_the_command_limit() {
        let (first, _r0) = put(1);
        let (queued, _receivers): (Vec<_>, Vec<_>) = (0..5).map(|_| put(1)).unzip();
        let mut rest = queued.into_iter();
        let batch = fill_batch(first, || rest.next(), LIMITS);
        assert_eq!(batch.len(), 3);
        assert_eq!(rest.len(), 3, "the others wait for the next batch");
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit() {
        let (first, _r0) = put(600);
        let (second, _r1) = put(600);
        let (third, _r2) = put(1);
        let mut rest = vec![second, third].into_iter();
        let batch = fill_batch(first, || rest.next(), LIMITS);
        assert_eq!(
            batch.len(),
            2,
            "the command that crosses the limit still goes"
        );
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn a_lone_write_goes_at_once() {
        let (first, _r0) = put(1);
        assert_eq!(fill_batch(first, || None, LIMITS).len(), 1);
    }

    #[test]
    fn writes_whose_caller_gave_up_are_left_out() {
        let (first, r0) = put(1);
        let (second, _r1) = put(1);
        drop(r0);
        let mut rest = vec![second].into_iter();
        let batch = fill_batch(first, || rest.next(), LIMITS);
        assert_eq!(batch.len(), 1);
        assert!(!batch[0].reply.is_closed());
    }
}
