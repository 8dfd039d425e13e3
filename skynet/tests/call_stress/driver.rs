//! Drives many calls over real QUIC connections with calls starting and stopping overlapping all
//! the time, and counts the calls that took far longer than a loopback call can. Shared by the
//! short test in CI (`skynet/tests/call_stress`) and the long benchmark
//! (`benches/call_stress.rs`, which includes this file by path).
//!
//! Three nodes in one process: `server` hosts `stress`, `relay` hosts `relay` (whose handlers
//! call `stress` on the server, as a router does), and `caller` runs the callers. Each caller
//! task picks at random: one call alone, a burst of calls polled together in its task (so each
//! is polled whenever any of them is woken), a call with a deadline so short that it is
//! cancelled on the way, a call polled alongside a future that keeps waking the task; with
//! random pauses between them. The handlers answer at once (inline, on the server's stream
//! reader), after a yield (in a task of their own), or after several yields.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use skynet::{CallError, Context, Node, ServiceClient, ServiceDef, ServiceError};

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Calls the callers make in all, about (calls the relay makes for them not counted).
    pub(crate) calls: u64,
    /// Caller tasks.
    pub(crate) callers: usize,
    /// Seeds the callers' choices.
    pub(crate) seed: u64,
    /// A call that takes longer than this (and was not given a shorter deadline) is slow.
    pub(crate) slow: Duration,
    /// The deadline of the calls that are not meant to be cancelled.
    pub(crate) deadline: Duration,
    /// Worker threads of each node's runtime.
    pub(crate) workers: usize,
}

/// What happened.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Calls issued.
    pub(crate) calls: u64,
    /// Calls with the long deadline that took longer than [`Settings::slow`].
    pub(crate) slow: u64,
    /// Of those, calls that ran into the long deadline.
    pub(crate) stalled: u64,
    /// Calls given a short deadline (cancelled on the way, or answered in time).
    pub(crate) short: u64,
    /// Calls with the long deadline that failed for another reason.
    pub(crate) failed: u64,
    /// The first unexpected error.
    pub(crate) first_error: Option<String>,
    /// The longest call with the long deadline.
    pub(crate) slowest: Duration,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls in {:.1} s: {} slower than the limit ({} ran into the deadline), \
             {} with short deadlines, {} failed, slowest {:.1} ms",
            self.calls,
            self.elapsed.as_secs_f64(),
            self.slow,
            self.stalled,
            self.short,
            self.failed,
            self.slowest.as_secs_f64() * 1000.0,
        )?;
        if let Some(e) = &self.first_error {
            write!(f, "; first error: {e}")?;
        }
        Ok(())
    }
}

/// Calls a caller makes in a round, on average.
const ROUND: u64 = 40;

/// A small, fast generator (xorshift64*): the choices need no quality, only speed and a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Counters the callers share.
#[derive(Default)]
struct Tally {
    issued: AtomicU64,
    slow: AtomicU64,
    stalled: AtomicU64,
    short: AtomicU64,
    failed: AtomicU64,
    slowest_us: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

fn stress_service() -> ServiceDef {
    ServiceDef::builder("stress", "1.0.0")
        // Answered inline, on the server's stream reader.
        .method("now", |_: Context, n: u64| async move {
            Ok::<u64, ServiceError>(n)
        })
        // Not ready at the inline poll: runs in a task of its own and answers through the
        // stream's writer task.
        .method("later", |_: Context, n: u64| async move {
            tokio::task::yield_now().await;
            Ok::<u64, ServiceError>(n)
        })
        .method("nap", |_: Context, n: u64| async move {
            for _ in 0..(n % 7) {
                tokio::task::yield_now().await;
            }
            Ok::<u64, ServiceError>(n)
        })
        .build()
        .expect("a valid service")
}

/// Forwards to `stress` on the server: a handler that is a call, as a router's is. Its first
/// poll (inline on the relay's stream reader, with a no-op waker) starts the inner call. The
/// client is the relay node's own, set once the node has started.
fn relay_service(server: Arc<OnceLock<ServiceClient>>) -> ServiceDef {
    let forward = move |method: &'static str| {
        let server = server.clone();
        move |_: Context, n: u64| {
            let server = server.get().cloned();
            async move {
                let server = server.ok_or_else(|| ServiceError::new("not started"))?;
                server
                    .call::<u64, u64, ServiceError>(method, n)
                    .await
                    .map_err(|e| ServiceError::new(e.to_string()))
            }
        }
    };
    ServiceDef::builder("relay", "1.0.0")
        .method("now", forward("now"))
        .method("later", forward("later"))
        .build()
        .expect("a valid service")
}

/// Starts the nodes, each on a runtime of its own (as if each were a process of its own, so
/// that their tasks really run at the same time and are preempted anywhere), runs the callers
/// until they made about `settings.calls` calls, and shuts the nodes down.
pub(crate) fn run(settings: &Settings) -> anyhow::Result<Report> {
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.workers.max(1))
            .thread_name(format!("stress-{name}"))
            .enable_all()
            .build()
    };
    let (server_rt, relay_rt, caller_rt) =
        (runtime("server")?, runtime("relay")?, runtime("caller")?);
    let dir = tempfile::tempdir()?;
    let builder = |name: &str| {
        Node::builder()
            .name(name)
            .development_credentials(dir.path())
    };
    let server = server_rt.block_on(builder("server").service(stress_service()).start())?;
    let inner = Arc::new(OnceLock::new());
    let relay = relay_rt.block_on(
        builder("relay")
            .service(relay_service(inner.clone()))
            .start(),
    )?;
    let _ = inner.set(
        relay
            .client("stress")
            .at(server.local_addr())
            .with_deadline(settings.deadline),
    );
    let caller = caller_rt.block_on(builder("caller").start())?;
    // The nodes' tasks run on their runtimes' worker threads; `block_on` only started them.

    let direct = caller
        .client("stress")
        .at(server.local_addr())
        .with_deadline(settings.deadline);
    let relayed = caller
        .client("relay")
        .at(relay.local_addr())
        .with_deadline(settings.deadline);
    let tally = Arc::new(Tally::default());
    let callers = settings.callers.max(1);
    let rounds = settings.calls.div_ceil(callers as u64 * ROUND);
    let started = Instant::now();
    let outcome = caller_rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(callers));
        let mut tasks = Vec::new();
        for i in 0..callers {
            let caller = Caller {
                direct: direct.clone(),
                relayed: relayed.clone(),
                rng: Rng::new(settings.seed ^ (i as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
                tally: tally.clone(),
                settings: settings.clone(),
            };
            tasks.push(tokio::spawn(caller.run(barrier.clone(), rounds)));
        }
        // Bounded: a connection that wedges for good fails the run instead of hanging it.
        let limit = settings.deadline * 4 + Duration::from_secs(3600);
        tokio::time::timeout(limit, async {
            for task in tasks {
                task.await?;
            }
            anyhow::Ok(())
        })
        .await
    });
    let elapsed = started.elapsed();

    caller_rt.block_on(caller.shutdown());
    relay_rt.block_on(relay.shutdown());
    server_rt.block_on(server.shutdown());
    outcome??;

    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    Ok(Report {
        calls: tally.issued.load(Ordering::Relaxed),
        slow: tally.slow.load(Ordering::Relaxed),
        stalled: tally.stalled.load(Ordering::Relaxed),
        short: tally.short.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        first_error,
        slowest: Duration::from_micros(tally.slowest_us.load(Ordering::Relaxed)),
        elapsed,
    })
}

type CallFuture = Pin<Box<dyn Future<Output = Result<u64, CallError<ServiceError>>> + Send>>;

/// One caller task.
struct Caller {
    direct: ServiceClient,
    relayed: ServiceClient,
    rng: Rng,
    tally: Arc<Tally>,
    settings: Settings,
}

impl Caller {
    /// A call with the long deadline, to a random method, direct or through the relay.
    fn call(&mut self) -> CallFuture {
        let n = self.rng.next() >> 8;
        let (client, method) = match self.rng.below(8) {
            0..=2 => (self.direct.clone(), "now"),
            3 => (self.direct.clone(), "later"),
            4 => (self.direct.clone(), "nap"),
            5 | 6 => (self.relayed.clone(), "now"),
            _ => (self.relayed.clone(), "later"),
        };
        Box::pin(async move { client.call::<u64, u64, ServiceError>(method, n).await })
    }

    /// Times a call with the long deadline and counts what came of it.
    async fn timed(tally: Arc<Tally>, slow: Duration, call: CallFuture) {
        tally.issued.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = call.await;
        let took = start.elapsed();
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        tally.slowest_us.fetch_max(us, Ordering::Relaxed);
        if took > slow {
            tally.slow.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(_) => {}
            Err(CallError::DeadlineExceeded(_)) => {
                tally.stalled.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = tally
                    .first_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Runs `rounds` rounds. In each, this caller makes a random number of calls (about
    /// [`ROUND`] on average), then waits at `barrier` for the others: every round ends with all
    /// calls finished and the connections quiet, so that a call left waiting for a wake-up
    /// that never comes has no later traffic to rescue it, and runs into its deadline.
    async fn run(mut self, barrier: Arc<tokio::sync::Barrier>, rounds: u64) {
        for _ in 0..rounds {
            let quota = 1 + self.rng.below(2 * ROUND);
            let mut issued = 0;
            while issued < quota {
                issued += self.step().await;
                self.pause().await;
            }
            barrier.wait().await;
        }
    }

    /// One random step; returns the number of calls it made.
    async fn step(&mut self) -> u64 {
        let slow = self.settings.slow;
        match self.rng.below(10) {
            // One call: alone on its connection whenever the other callers are between calls.
            0..=3 => {
                let call = self.call();
                Self::timed(self.tally.clone(), slow, call).await;
                1
            }
            // A burst polled together in this task: each call is polled whenever any of them
            // is woken, and they start overlapping at once.
            4 | 5 => {
                let k = 2 + self.rng.below(6);
                let calls: Vec<_> = (0..k)
                    .map(|_| Self::timed(self.tally.clone(), slow, self.call()))
                    .collect();
                futures_util::future::join_all(calls).await;
                k
            }
            // A call whose deadline is so short that it is often cancelled on the way (a
            // cancel frame follows), sometimes while it reads the stream for itself.
            6 | 7 => {
                let deadline = Duration::from_micros(20 + self.rng.below(1500));
                let client = if self.rng.below(2) == 0 {
                    &self.direct
                } else {
                    &self.relayed
                };
                let n = self.rng.next() >> 8;
                let _ = client
                    .clone()
                    .with_deadline(deadline)
                    .call::<u64, u64, ServiceError>("now", n)
                    .await;
                self.tally.issued.fetch_add(1, Ordering::Relaxed);
                self.tally.short.fetch_add(1, Ordering::Relaxed);
                1
            }
            // A call polled again and again for nothing: the task is woken by a neighbour
            // that asks to be polled again a random number of times.
            _ => {
                let call = Self::timed(self.tally.clone(), slow, self.call());
                let spins = self.rng.below(40);
                tokio::join!(call, Spin(spins));
                1
            }
        }
    }

    /// A pause: none, a few yields, or (rarely) a short sleep, so that the calls of the
    /// different callers start and stop overlapping in every order.
    async fn pause(&mut self) {
        match self.rng.below(8) {
            0..=3 => {}
            4..=6 => {
                for _ in 0..self.rng.below(16) {
                    tokio::task::yield_now().await;
                }
            }
            _ => {
                if self.rng.below(64) == 0 {
                    tokio::time::sleep(Duration::from_micros(self.rng.below(2000))).await;
                }
            }
        }
    }
}

/// Wakes its task `n` times, once per poll, then finishes: the futures polled beside it in the
/// same task are polled each time for nothing.
struct Spin(u64);

impl Future for Spin {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
