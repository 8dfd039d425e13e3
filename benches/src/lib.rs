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
    let mut total = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)?;
    while let Some(hist) = tasks.join_next().await {
        total.add(&hist??)?;
    }
    Ok(Sample {
        rps: total.len() as f64 / measure.as_secs_f64(),
        p50_us: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: total.value_at_quantile(0.99) as f64 / 1000.0,
    })
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
