//! What the admin port serves, rendered from values: no I/O here.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::stats::{LatencySnapshot, Outcome, StatsSnapshot};

/// Facts about the process, gathered by the caller.
pub(crate) struct ProcessInfo {
    pub(crate) node: String,
    pub(crate) cmdline: Vec<String>,
    /// `None` where the operating system does not say (not Linux).
    pub(crate) memory: Option<Memory>,
    /// Since the node started.
    pub(crate) uptime: Duration,
}

/// The process's memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    pub(crate) resident: u64,
    pub(crate) virtual_size: u64,
    pub(crate) peak_resident: Option<u64>,
}

/// Reads the memory lines of Linux's `/proc/self/status` (`VmRSS:  1234 kB`); `None` unless
/// both resident and virtual size are there. Kernel "kB" are KiB.
pub(crate) fn parse_proc_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some(Memory {
        resident: field("VmRSS")?,
        virtual_size: field("VmSize")?,
        peak_resident: field("VmHWM"),
    })
}

/// The quantiles `/debug/vars` shows per method.
const QUANTILES: [(&str, f64); 3] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];

/// `GET /debug/vars`: one JSON object in the spirit of Go's expvar, with keys
/// `"<service>.<method>-processed"`, `-errors`, `-inflight`, `-cancelled` and `-latency`, plus
/// `cmdline`, `memstats` and `node`.
pub(crate) fn vars(stats: &StatsSnapshot, process: &ProcessInfo) -> String {
    let mut vars = Map::new();
    vars.insert("node".into(), json!(process.node));
    vars.insert("cmdline".into(), json!(process.cmdline));
    let memory = process.memory;
    vars.insert(
        "memstats".into(),
        json!({
            "resident_bytes": memory.map(|m| m.resident),
            "virtual_bytes": memory.map(|m| m.virtual_size),
            "peak_resident_bytes": memory.and_then(|m| m.peak_resident),
            "uptime_seconds": process.uptime.as_secs_f64(),
        }),
    );
    for m in &stats.methods {
        let name = format!("{}.{}", m.service, m.method);
        vars.insert(format!("{name}-processed"), json!(m.processed()));
        vars.insert(format!("{name}-errors"), json!(m.errors()));
        vars.insert(format!("{name}-inflight"), json!(m.in_flight));
        vars.insert(
            format!("{name}-cancelled"),
            json!(m.count(Outcome::Cancelled)),
        );
        vars.insert(format!("{name}-latency"), latency(&m.latency));
    }
    let mut out = Value::Object(vars).to_string();
    out.push('\n');
    out
}

fn latency(h: &LatencySnapshot) -> Value {
    let mut v = Map::new();
    v.insert("count".into(), json!(h.count()));
    v.insert(
        "mean_seconds".into(),
        json!(h.mean().map(|d| d.as_secs_f64())),
    );
    for (name, q) in QUANTILES {
        let value = h.quantile(q).map(|d| d.as_secs_f64());
        v.insert(format!("{name}_seconds"), json!(value));
    }
    Value::Object(v)
}

/// The content type of [`prometheus`]'s output.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`: the Prometheus text exposition format, version 0.0.4.
pub(crate) fn prometheus(stats: &StatsSnapshot, process: &ProcessInfo) -> String {
    let mut out = String::with_capacity(1024 + stats.methods.len() * 2048);
    let labels = |service: &str, method: &str| {
        format!(
            "service=\"{}\",method=\"{}\"",
            escape_label(service),
            escape_label(method)
        )
    };

    family(
        &mut out,
        "skynet_calls_total",
        "counter",
        "Calls served by this node that finished, by outcome.",
    );
    for m in &stats.methods {
        let l = labels(&m.service, &m.method);
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "skynet_calls_total{{{l},outcome=\"{}\"}} {}",
                outcome.as_str(),
                m.count(outcome)
            );
        }
    }

    family(
        &mut out,
        "skynet_calls_in_flight",
        "gauge",
        "Calls this node is serving now.",
    );
    for m in &stats.methods {
        let l = labels(&m.service, &m.method);
        let _ = writeln!(out, "skynet_calls_in_flight{{{l}}} {}", m.in_flight);
    }

    family(
        &mut out,
        "skynet_call_duration_seconds",
        "histogram",
        "Time from dispatch of a served call to its reply, whatever the outcome.",
    );
    for m in &stats.methods {
        let l = labels(&m.service, &m.method);
        for (bound, count) in m.latency.cumulative() {
            let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.as_secs_f64().to_string());
            let _ = writeln!(
                out,
                "skynet_call_duration_seconds_bucket{{{l},le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "skynet_call_duration_seconds_sum{{{l}}} {}",
            m.latency.sum().as_secs_f64()
        );
        let _ = writeln!(
            out,
            "skynet_call_duration_seconds_count{{{l}}} {}",
            m.latency.count()
        );
    }

    if let Some(memory) = process.memory {
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", memory.resident);
        family(
            &mut out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        let _ = writeln!(out, "process_virtual_memory_bytes {}", memory.virtual_size);
    }
    family(
        &mut out,
        "skynet_node_uptime_seconds",
        "gauge",
        "Seconds since this node started.",
    );
    let _ = writeln!(
        out,
        "skynet_node_uptime_seconds {}",
        process.uptime.as_secs_f64()
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use super::*;
    use crate::service::{Context, ServiceDef, ServiceError};

    fn process() -> ProcessInfo {
        ProcessInfo {
            node: "n1".into(),
            cmdline: vec!["prog".into(), "--flag".into()],
            memory: Some(Memory {
                resident: 4096,
                virtual_size: 8192,
                peak_resident: None,
            }),
            uptime: Duration::from_millis(1500),
        }
    }

    /// A snapshot of one service named `name` with method `m`: two successes, one service
    /// error and one call still running.
    fn snapshot(name: &str) -> StatsSnapshot {
        let def = ServiceDef::builder(name, "1.0.0")
            .method("m", |_: Context, s: String| async move {
                Ok::<_, ServiceError>(s)
            })
            .build()
            .expect("def");
        let stats = &def.method("m").expect("method").stats;
        let t0 = Instant::now();
        for outcome in [Outcome::Ok, Outcome::Ok, Outcome::ServiceError] {
            stats.start_at(t0, tracing::Span::none()).finish(outcome);
        }
        let running = stats.start_at(t0, tracing::Span::none());
        let mut services = HashMap::new();
        services.insert(Box::from(name), def.clone());
        let snapshot = crate::service::stats_of(&services);
        std::mem::forget(running);
        snapshot
    }

    #[test]
    fn proc_status_memory_lines_parse() {
        let text =
            "Name:\tx\nVmPeak:\t  300 kB\nVmSize:\t  200 kB\nVmHWM:\t  20 kB\nVmRSS:\t   10 kB\n";
        assert_eq!(
            parse_proc_status(text),
            Some(Memory {
                resident: 10 * 1024,
                virtual_size: 200 * 1024,
                peak_resident: Some(20 * 1024),
            })
        );
        assert_eq!(parse_proc_status("VmRSS: 10 kB\n"), None);
        assert_eq!(parse_proc_status("VmRSS: x kB\nVmSize: 1 kB"), None);
    }

    #[test]
    fn vars_use_the_original_key_names() {
        let vars: Value = serde_json::from_str(&vars(&snapshot("echo"), &process())).expect("json");
        assert_eq!(vars["echo.m-processed"], 2);
        assert_eq!(vars["echo.m-errors"], 1);
        assert_eq!(vars["echo.m-inflight"], 1);
        assert_eq!(vars["echo.m-cancelled"], 0);
        assert_eq!(vars["echo.m-latency"]["count"], 3);
        assert_eq!(vars["cmdline"], json!(["prog", "--flag"]));
        assert_eq!(vars["memstats"]["resident_bytes"], 4096);
        assert_eq!(vars["memstats"]["virtual_bytes"], 8192);
        assert_eq!(vars["memstats"]["uptime_seconds"], 1.5);
        assert_eq!(vars["node"], "n1");
    }

    #[test]
    fn prometheus_families_are_typed_and_labels_escaped() {
        let text = prometheus(&snapshot("we\"ird\\na\nme"), &process());
        let l = r#"service="we\"ird\\na\nme",method="m""#;
        for line in [
            "# TYPE skynet_calls_total counter".to_owned(),
            "# TYPE skynet_calls_in_flight gauge".to_owned(),
            "# TYPE skynet_call_duration_seconds histogram".to_owned(),
            format!("skynet_calls_total{{{l},outcome=\"ok\"}} 2"),
            format!("skynet_calls_total{{{l},outcome=\"service_error\"}} 1"),
            format!("skynet_calls_total{{{l},outcome=\"cancelled\"}} 0"),
            format!("skynet_calls_in_flight{{{l}}} 1"),
            format!("skynet_call_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("skynet_call_duration_seconds_count{{{l}}} 3"),
            "process_resident_memory_bytes 4096".to_owned(),
            "skynet_node_uptime_seconds 1.5".to_owned(),
        ] {
            assert!(
                text.lines().any(|x| x == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` or `name value`, on one line: no raw
        // line feed or unescaped quote from the name got through.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("a value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(
                line.starts_with("skynet_") || line.starts_with("process_"),
                "{line}"
            );
        }
        let bounds: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .filter(|le| *le != "+Inf")
            .map(|le| le.parse().expect("a number"))
            .collect();
        assert_eq!(bounds.first(), Some(&0.000001));
        assert_eq!(bounds.last(), Some(&10.0));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }
}
