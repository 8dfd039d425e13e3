//! The long run of the call stress test (`skynet/tests/call_stress`): 10 million calls over
//! loopback QUIC connections whose calls start and stop overlapping all the time, with random
//! cancellations, counting the calls slower than 100 ms. A call that waits for a wake-up that
//! never comes runs into its deadline (the driver quiets every connection between rounds, so
//! no later call rescues it).
//!
//! `cargo bench -p skynet-benches --bench call_stress`; `SKYNET_STRESS_CALLS`,
//! `SKYNET_STRESS_SEED` and `SKYNET_BENCH_WORKERS` change the number of calls, the seed and
//! the runtime's worker threads (2 by default).

#[path = "../skynet/tests/call_stress/driver.rs"]
mod driver;

use std::time::Duration;

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    let env = |name: &str| -> Result<Option<u64>> {
        std::env::var(name)
            .ok()
            .map(|v| v.parse::<u64>().with_context(|| format!("{name}={v}")))
            .transpose()
    };
    let settings = driver::Settings {
        calls: env("SKYNET_STRESS_CALLS")?.unwrap_or(10_000_000),
        callers: 6,
        seed: env("SKYNET_STRESS_SEED")?.unwrap_or(1),
        slow: Duration::from_millis(100),
        deadline: Duration::from_secs(3),
        workers: usize::try_from(env("SKYNET_BENCH_WORKERS")?.unwrap_or(2))?,
    };
    let report = driver::run(&settings)?;
    println!(
        "call_stress: seed {}, {} callers, {} workers per node: {report}",
        settings.seed, settings.callers, settings.workers
    );
    Ok(())
}
