//! When to say that a peer stopped answering, and when that it answers again.
//!
//! A member that is down fails every request sent to it, and the leader keeps sending (that is
//! how it notices the member's return). Logging each failure floods the log, so the network layer
//! keeps one [`Outage`] per peer that is failing and reports it only at its turning points: once
//! when the failures have lasted [`DOWN_AFTER`], at most once per [`SUMMARY_EVERY`] while they go
//! on (with counts), and once when the peer answers again. Single failures are at debug only.
//!
//! Pure: the caller passes the time and does the logging, so the decisions are unit-tested.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::NodeId;

/// A peer whose requests have failed for this long without an answer in between counts as down:
/// it is reported unreachable, and retried less often. Long enough that a few slow heartbeats on a
/// busy machine, or a dropped connection that redials at once, change nothing (a live follower
/// kept waiting would stand for election); short next to how long a dead member stays dead.
pub(super) const DOWN_AFTER: Duration = Duration::from_secs(1);
/// While a reported peer stays unreachable, a summary of its failures goes out this often at most.
pub(super) const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// The failures of one peer since it last answered.
#[derive(Debug, Clone)]
struct Outage {
    /// The address the last failed request went to.
    addr: String,
    /// When the first failure of the run happened.
    since: Instant,
    /// Failed requests in the run.
    failures: u64,
    /// When the last report (the warning, then each summary) went out; `None` before the warning.
    reported_at: Option<Instant>,
    /// `failures` at the last report.
    reported_failures: u64,
}

/// What a failed request calls for, above debug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Report {
    /// Nothing: the run of failures is too short, or was reported recently.
    Quiet,
    /// The peer has just become unreachable.
    Unreachable {
        /// The address it was tried at.
        addr: String,
        /// How long its requests have been failing.
        failing_for: Duration,
        /// How many have failed.
        failures: u64,
    },
    /// The peer is still unreachable; the last report was [`SUMMARY_EVERY`] or more ago.
    StillUnreachable {
        /// The address it was tried at.
        addr: String,
        /// How long its requests have been failing.
        failing_for: Duration,
        /// How many have failed in all.
        failures: u64,
        /// How many of those since the last report.
        failures_since_report: u64,
    },
}

/// The end of a run of failures: the peer answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Recovered {
    /// The address it answered at.
    pub(super) addr: String,
    /// How long its requests had been failing.
    pub(super) failed_for: Duration,
    /// How many had failed.
    pub(super) failures: u64,
    /// Whether the run was reported (then its end is, too).
    pub(super) reported: bool,
}

/// The runs of failures of this member's peers.
#[derive(Debug, Default)]
pub(super) struct Outages {
    peers: HashMap<NodeId, Outage>,
}

impl Outages {
    /// Records a failed request to `peer` at `addr`. Returns whether the peer counts as down
    /// (its requests have failed for [`DOWN_AFTER`] or longer), and what to report.
    pub(super) fn failed(&mut self, peer: NodeId, addr: &str, now: Instant) -> (bool, Report) {
        let Some(outage) = self.peers.get_mut(&peer) else {
            self.peers.insert(
                peer,
                Outage {
                    addr: addr.to_owned(),
                    since: now,
                    failures: 1,
                    reported_at: None,
                    reported_failures: 0,
                },
            );
            return (false, Report::Quiet);
        };
        outage.failures = outage.failures.saturating_add(1);
        if outage.addr != addr {
            outage.addr = addr.to_owned();
        }
        let failing_for = now.saturating_duration_since(outage.since);
        let report = match outage.reported_at {
            None if failing_for >= DOWN_AFTER => Report::Unreachable {
                addr: outage.addr.clone(),
                failing_for,
                failures: outage.failures,
            },
            Some(at) if now.saturating_duration_since(at) >= SUMMARY_EVERY => {
                Report::StillUnreachable {
                    addr: outage.addr.clone(),
                    failing_for,
                    failures: outage.failures,
                    failures_since_report: outage.failures - outage.reported_failures,
                }
            }
            _ => return (failing_for >= DOWN_AFTER, Report::Quiet),
        };
        outage.reported_at = Some(now);
        outage.reported_failures = outage.failures;
        (true, report)
    }

    /// Records an answer from `peer`: ends its run of failures, if it had one.
    pub(super) fn answered(&mut self, peer: NodeId, now: Instant) -> Option<Recovered> {
        let outage = self.peers.remove(&peer)?;
        Some(Recovered {
            addr: outage.addr,
            failed_for: now.saturating_duration_since(outage.since),
            failures: outage.failures,
            reported: outage.reported_at.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Fails `peer` every `every` from `start` for `count` requests; returns the reports made.
    /// Checks that the peer counts as down from [`DOWN_AFTER`] on.
    fn fail_run(
        o: &mut Outages,
        peer: NodeId,
        start: Instant,
        every: Duration,
        count: u32,
    ) -> Vec<Report> {
        (0..count)
            .map(|i| {
                let (down, report) = o.failed(peer, "a:1", start + every * i);
                assert_eq!(down, every * i >= DOWN_AFTER, "request {i}");
                report
            })
            .filter(|r| *r != Report::Quiet)
            .collect()
    }

    #[test]
    fn a_short_run_of_failures_is_not_reported() {
        let mut o = Outages::default();
        let t = Instant::now();
        assert_eq!(o.failed(1, "a:1", t), (false, Report::Quiet));
        assert_eq!(o.failed(1, "a:1", t + 500 * MS), (false, Report::Quiet));
        let back = o.answered(1, t + 600 * MS).expect("a run");
        assert_eq!(back.failures, 2);
        assert!(!back.reported);
        // The next failure starts a new run.
        assert_eq!(o.failed(1, "a:1", t + 700 * MS), (false, Report::Quiet));
    }

    #[test]
    fn a_long_run_is_reported_once_then_summarised() {
        let mut o = Outages::default();
        let t = Instant::now();
        assert_eq!(o.failed(7, "a:1", t), (false, Report::Quiet));
        assert_eq!(o.failed(7, "a:1", t + 999 * MS), (false, Report::Quiet));
        assert!(o.answered(7, t + 999 * MS).is_some());
        // A request every 250 ms for 65 s.
        let reports = fail_run(&mut o, 7, t, 250 * MS, 261);
        assert_eq!(reports.len(), 3, "{reports:?}");
        assert_eq!(
            reports[0],
            Report::Unreachable {
                addr: "a:1".into(),
                failing_for: DOWN_AFTER,
                failures: 5,
            }
        );
        let Report::StillUnreachable {
            failures,
            failures_since_report,
            failing_for,
            ..
        } = &reports[1]
        else {
            panic!("a summary: {reports:?}");
        };
        assert_eq!(*failing_for, DOWN_AFTER + SUMMARY_EVERY);
        assert_eq!((*failures, *failures_since_report), (125, 120));
        let back = o.answered(7, t + Duration::from_secs(66)).expect("a run");
        assert!(back.reported);
        assert_eq!(back.failures, 261);
        assert_eq!(back.failed_for, Duration::from_secs(66));
        assert_eq!(o.answered(7, t + Duration::from_secs(67)), None);
    }

    #[test]
    fn peers_are_counted_apart_and_the_last_address_is_named() {
        let mut o = Outages::default();
        let t = Instant::now();
        o.failed(1, "a:1", t);
        o.failed(2, "b:1", t);
        let (down, report) = o.failed(1, "a:2", t + DOWN_AFTER);
        assert!(down);
        assert_eq!(
            report,
            Report::Unreachable {
                addr: "a:2".into(),
                failing_for: DOWN_AFTER,
                failures: 2,
            }
        );
        assert_eq!(o.answered(2, t + MS).map(|r| r.failures), Some(1));
    }
}
