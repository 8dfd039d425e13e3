//! Side-by-side benchmarks (see the `[[bench]]` targets) and the closed-loop harness the
//! newer ones share.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

/// One benchmark client: makes one call per [`Call::call`].
pub trait Call: Send + 'static {
    /// Makes one call and checks its answer.
    fn call(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// Throughput and latency of one measured window.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Calls per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Process CPU time per call in the measured window (callers, servers and runtime
    /// together), µs; `NaN` where the process's CPU time cannot be read. Less noisy than the
    /// rate on a shared machine, and what decides the rate once the CPUs are saturated.
    pub cpu_us_per_call: f64,
    /// Thread context switches per call in the measured window; `NaN` where unknown.
    pub switches_per_call: f64,
}

/// Runs each of `callers` in a closed loop on its own task for `warmup`, then for `measure`;
/// only calls started inside the measured window are recorded.
pub async fn closed_loop<C: Call>(
    callers: Vec<C>,
    warmup: Duration,
    measure: Duration,
) -> Result<Sample> {
    let from = Instant::now() + warmup;
    let until = from + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for mut caller in callers {
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)?;
            loop {
                let start = Instant::now();
                if start >= until {
                    break;
                }
                caller.call().await?;
                if start >= from {
                    hist.saturating_record(u64::try_from(start.elapsed().as_nanos())?);
                }
            }
            Ok::<_, anyhow::Error>(hist)
        });
    }
    // The process's CPU time and context switches over the measured window, read while the
    // callers run.
    tokio::time::sleep_until(from.into()).await;
    let before = process_cpu().zip(context_switches());
    tokio::time::sleep_until(until.into()).await;
    let used = before.and_then(|(cpu, switches)| {
        Some((
            process_cpu()?.saturating_sub(cpu),
            context_switches()?.saturating_sub(switches),
        ))
    });
    let mut total = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)?;
    while let Some(hist) = tasks.join_next().await {
        total.add(&hist??)?;
    }
    let calls = total.len().max(1) as f64;
    Ok(Sample {
        rps: total.len() as f64 / measure.as_secs_f64(),
        p50_us: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: total.value_at_quantile(0.99) as f64 / 1000.0,
        cpu_us_per_call: used.map_or(f64::NAN, |(cpu, _)| cpu.as_secs_f64() * 1e6 / calls),
        switches_per_call: used.map_or(f64::NAN, |(_, n)| n as f64 / calls),
    })
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`; `None` where
/// that is not available.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is the first, utime the 12th and
    // stime the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Context switches of all this process's threads so far (voluntary ones are mostly a worker
/// parking, i.e. going to sleep for want of work), from `/proc/self/task/*/status`.
pub fn context_switches() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().ok()?;
            }
        }
    }
    Some(total)
}

/// The value of the environment variable `name`, parsed, or `default` when it is not set.
pub fn env_or<T>(name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={value:?}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(anyhow::anyhow!("reading {name}: {e}")),
    }
}

/// The environment variable `name` as comma-separated positive counts (calls in flight, payload
/// sizes), or `default` when it is not set.
pub fn env_counts(name: &str, default: &[usize]) -> Result<Vec<usize>> {
    let list = match std::env::var(name) {
        Ok(list) => list,
        Err(std::env::VarError::NotPresent) => return Ok(default.to_vec()),
        Err(e) => return Err(anyhow::anyhow!("reading {name}: {e}")),
    };
    list.split(',')
        .map(|n| match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!(
                "{name}={list:?}: {n:?} is not a positive count"
            )),
        })
        .collect()
}

/// `SKYNET_BENCH_ONLY`: comma-separated parts of the names of what to run; everything when unset.
#[derive(Debug, Clone, Default)]
pub struct Only(Option<Vec<String>>);

impl Only {
    /// Reads `SKYNET_BENCH_ONLY`.
    pub fn from_env() -> Self {
        Self(std::env::var("SKYNET_BENCH_ONLY").ok().map(|list| {
            list.split(',')
                .map(|part| part.trim().to_owned())
                .filter(|part| !part.is_empty())
                .collect()
        }))
    }

    /// Whether `name` contains one of the parts (always, when the variable is unset).
    pub fn selects(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|parts| parts.iter().any(|part| name.contains(part.as_str())))
    }

    /// The parts, when the run is a partial one.
    pub fn parts(&self) -> Option<&[String]> {
        self.0.as_deref()
    }
}

/// The median of `values` (the upper one of an even count); `NaN` for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// How this benchmark was built, for its settings line: numbers of a debug build mean little.
pub fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "optimized"
    }
}
