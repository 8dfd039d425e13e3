//! Many calls over real QUIC connections while calls start and stop overlapping all the time:
//! none may wait for a wake-up that never comes.
//!
//! `SKYNET_STRESS_CALLS` and `SKYNET_STRESS_SEED` change the number of calls and the seed; the
//! long run is the `call_stress` benchmark (`benches/call_stress.rs`).

mod driver;

use std::time::Duration;

#[test]
fn no_call_waits_for_a_lost_wake_up() -> anyhow::Result<()> {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let settings = driver::Settings {
        calls: env("SKYNET_STRESS_CALLS").unwrap_or(100_000),
        callers: 6,
        seed: env("SKYNET_STRESS_SEED").unwrap_or_else(clock_seed),
        slow: Duration::from_millis(100),
        deadline: Duration::from_secs(3),
        workers: 2,
    };
    let report = driver::run(&settings)?;
    println!("seed {}: {report}", settings.seed);
    assert_eq!(report.failed, 0, "seed {}: {report}", settings.seed);
    assert_eq!(report.stalled, 0, "seed {}: {report}", settings.seed);
    Ok(())
}

/// A seed from the clock, printed with the result so that a failing run can be repeated.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
