//! Seeking the member to ask: the pure decisions behind a request's attempts, with no I/O and
//! the time passed in, so that each one is tested on its own.
//!
//! - [`Seeker`]: which member a client asks next (the one that answered last, then the seeds
//!   and the members the store named, in turn, skipping suspects), and when a member is
//!   suspected or cleared.
//! - [`redirect`]: where a "not the leader" answer sends the attempt.
//! - [`call_failed`] and [`abandoned`]: what a failed call means, above all whether a write's
//!   outcome is unknown ([`StoreError::Indeterminate`]) or the request is safe to send again.
//! - [`Attempts`]: when a request stops, and the error it then reports.
//! - [`poll_failure_suspects`]: when a failed watch poll makes its member suspect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::StoreError;
use super::wire::{Refusal, Request};
use crate::error::CallError;

/// How long a client avoids a member that stopped answering.
pub(super) const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// What a client knows of the members it may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seeker {
    /// The configured seeds (never empty: a client's configuration is validated).
    seeds: Vec<SocketAddr>,
    /// The members the store named (beyond the seeds): a client whose seeds are gone still
    /// finds the cluster through them.
    learned: Vec<SocketAddr>,
    /// The member that answered the last request (the leader, for requests only it serves):
    /// tried first. Cleared when it fails.
    preferred: Option<SocketAddr>,
    /// Where this client starts in the list, so that clients spread over the members.
    start: usize,
    /// Members that stopped answering, and since when: skipped for [`SUSPECT_FOR`].
    suspects: HashMap<SocketAddr, Instant>,
}

impl Seeker {
    /// A client that knows only its `seeds` and starts at the `start`th.
    pub(super) fn new(seeds: Vec<SocketAddr>, start: usize) -> Self {
        Self {
            seeds,
            learned: Vec::new(),
            preferred: None,
            start,
            suspects: HashMap::new(),
        }
    }

    /// The members to ask: the seeds, then the members the store named that are not seeds.
    pub(super) fn candidates(&self) -> Vec<SocketAddr> {
        let mut all = self.seeds.clone();
        all.extend(self.learned.iter().filter(|a| !self.seeds.contains(a)));
        all
    }

    /// Takes the members a member named as the ones to fall back on (an empty list says
    /// nothing and is ignored).
    pub(super) fn learn(&mut self, members: Vec<SocketAddr>) {
        if !members.is_empty() {
            self.learned = members;
        }
    }

    /// The member that answered last, if it has not failed since.
    #[cfg(test)]
    pub(super) fn preferred(&self) -> Option<SocketAddr> {
        self.preferred
    }

    /// `addr` stopped answering at `now`: requests avoid it for [`SUSPECT_FOR`], and it is no
    /// longer the one tried first.
    pub(super) fn suspect(&mut self, addr: SocketAddr, now: Instant) {
        self.suspects.insert(addr, now);
        if self.preferred == Some(addr) {
            self.preferred = None;
        }
    }

    /// `addr` answered: whatever it was suspected of, it is up (a restarted member, say).
    pub(super) fn cleared(&mut self, addr: SocketAddr) {
        self.suspects.remove(&addr);
    }

    /// Whether `addr` is suspected at `now`; a suspicion older than [`SUSPECT_FOR`] is
    /// forgotten.
    pub(super) fn is_suspect(&mut self, addr: SocketAddr, now: Instant) -> bool {
        match self.suspects.get(&addr) {
            Some(since) if now.saturating_duration_since(*since) < SUSPECT_FOR => true,
            Some(_) => {
                self.suspects.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// An attempt that asked `target` (`None`: a member's own replica) got its answer there:
    /// the next request tries it first, and it is no longer suspected.
    pub(super) fn answered(&mut self, target: Option<SocketAddr>) {
        self.preferred = target;
        if let Some(addr) = target {
            self.cleared(addr);
        }
    }

    /// An attempt that asked `target` failed there: if it was the member tried first, the
    /// next request starts from the list again.
    pub(super) fn failed(&mut self, target: Option<SocketAddr>) {
        if self.preferred == target {
            self.preferred = None;
        }
    }

    /// Whether attempt `round` completed a pass over every member to ask.
    pub(super) fn asked_every_seed(&self, round: usize) -> bool {
        (round + 1).is_multiple_of(self.candidates().len().max(1))
    }

    /// The member to try first in attempt `round`: the preferred one, then the seeds and the
    /// members learned from the store in turn, skipping suspects unless every one is.
    pub(super) fn target(&mut self, round: usize, now: Instant) -> SocketAddr {
        if round == 0
            && let Some(addr) = self.preferred
        {
            return addr;
        }
        let candidates = self.candidates();
        let start = self.start;
        let nth = |i: usize| candidates[(start + round + i) % candidates.len()];
        (0..candidates.len())
            .map(nth)
            .find(|addr| !self.is_suspect(*addr, now))
            .unwrap_or_else(|| nth(0))
    }
}

/// Whether `req` may change the store: a write that reached a member which then stopped may or
/// may not have been proposed; anything else is safe to send again to the next leader.
pub(super) fn may_apply(req: &Request) -> bool {
    matches!(req, Request::Write(_) | Request::Remove { .. })
}

/// Whether a call waiting on a member is given up once another member is known to lead. A join
/// legitimately waits for the whole catch-up of the new member; a status is the asked member's
/// own answer, whoever leads.
pub(super) fn watches_leader(req: &Request) -> bool {
    !matches!(
        req,
        Request::Join { .. } | Request::Leader | Request::Status
    )
}

/// A request that may have reached a member which is now lost: for a request that may change
/// the store its outcome is unknown, anything else may be sent again.
fn lost(reason: String, may_apply: bool) -> Refusal {
    if may_apply {
        Refusal::Failed(StoreError::Indeterminate(reason))
    } else {
        Refusal::Unreachable(reason)
    }
}

/// The one text for a member that did not answer a request in the time it had.
pub(super) fn no_answer(member: SocketAddr, within: Duration) -> String {
    format!("{member} gave no answer within {within:?}")
}

/// What one failed call to a member means.
#[derive(Debug)]
pub(super) struct CallFailure {
    /// How the attempt ends.
    pub(super) refusal: Refusal,
    /// Whether the member is now suspected of being down.
    pub(super) suspect: bool,
}

/// What the failure `error` of a call to `addr` means, for a request that `may_apply` (see
/// [`may_apply`]).
pub(super) fn call_failed(
    addr: SocketAddr,
    error: CallError<Refusal>,
    may_apply: bool,
) -> CallFailure {
    let (refusal, suspect) = match error {
        CallError::Service(Refusal::Failed(StoreError::Stopped(reason))) => (
            lost(format!("the leader stopped: {reason}"), may_apply),
            false,
        ),
        CallError::Service(refusal) => (refusal, false),
        e @ (CallError::Unreachable { .. } | CallError::Unavailable(_)) => {
            (Refusal::Unreachable(e.to_string()), true)
        }
        CallError::DeadlineExceeded(d) => (
            Refusal::Failed(StoreError::Timeout(no_answer(addr, d))),
            false,
        ),
        // A member that refused the handshake (or whose certificate this node refused)
        // refuses it again: that is the answer, not a reason to retry until the timeout.
        e @ CallError::HandshakeRefused { .. } => (
            Refusal::Failed(StoreError::Unreachable(e.to_string())),
            false,
        ),
        CallError::ConnectionLost { reason, .. } => (lost(reason, may_apply), true),
        e => (Refusal::Failed(StoreError::Remote(e.to_string())), false),
    };
    CallFailure { refusal, suspect }
}

/// A call to `addr` given up because another member leads (the caller suspects `addr`). With
/// no live connection to the member (`connected` false) the request is still waiting for one
/// (a call on a connection that broke has ended already): it was never sent, and may go to the
/// next leader like anything else.
pub(super) fn abandoned(addr: SocketAddr, may_apply: bool, connected: bool) -> Refusal {
    let reason = format!("{addr} stopped answering; another member leads");
    if connected {
        lost(reason, may_apply)
    } else {
        Refusal::Unreachable(reason)
    }
}

/// Where a "not the leader" answer naming `leader_addr` sends the attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Redirect {
    /// Ask this member next (`None`: this node's own member).
    Ask(Option<SocketAddr>),
    /// The named leader is suspected: ask it first whether it leads (it may have been
    /// restarted and won an election). If it does, ask it; if not, the member that named it
    /// has not noticed yet that it is gone, and the attempt ends with no leader known.
    ConfirmFirst(SocketAddr),
    /// The address is not one; the attempt ends with this refusal.
    Fail(Refusal),
}

/// Where a redirect to `leader_addr` goes, asked from a node at `own` (a member when
/// `is_member`), with `suspected` telling whether the client suspects an address.
pub(super) fn redirect(
    leader_addr: &str,
    own: SocketAddr,
    is_member: bool,
    suspected: impl FnOnce(SocketAddr) -> bool,
) -> Redirect {
    match leader_addr.parse::<SocketAddr>() {
        Ok(addr) if suspected(addr) => Redirect::ConfirmFirst(addr),
        Ok(addr) => Redirect::Ask(Some(addr).filter(|a| !(is_member && *a == own))),
        Err(e) => Redirect::Fail(Refusal::Failed(StoreError::Remote(format!(
            "leader address {leader_addr:?}: {e}"
        )))),
    }
}

/// What the attempts of one request met, for the error if none succeeds: the members asked,
/// and the most telling failure (an attempt that only ran out of the time left says less than
/// the connection failures before it).
#[derive(Debug, Default)]
pub(super) struct Attempts {
    asked: Vec<SocketAddr>,
    cause: Option<StoreError>,
}

impl Attempts {
    /// An attempt starts at `first` (`None`: this node's own member).
    pub(super) fn asking(&mut self, first: Option<SocketAddr>) {
        if let Some(addr) = first.filter(|a| !self.asked.contains(a)) {
            self.asked.push(addr);
        }
    }

    /// An attempt failed with `refusal`: `Err` with a final answer, `Ok` if another attempt
    /// may follow (time permitting).
    pub(super) fn failed(&mut self, refusal: Refusal) -> Result<(), StoreError> {
        let last = match refusal {
            Refusal::Failed(e) => return Err(e),
            Refusal::NotLeader { .. } => StoreError::Timeout("no leader elected".into()),
            Refusal::NotReady(reason) => StoreError::Timeout(reason),
            Refusal::Unreachable(reason) => StoreError::Unreachable(reason),
        };
        if self.cause.is_none() || !matches!(last, StoreError::Timeout(_)) {
            self.cause = Some(last);
        }
        Ok(())
    }

    /// The error of a request whose every attempt within `timeout` failed: the most telling
    /// failure, with the members asked and for how long.
    pub(super) fn give_up(self, timeout: Duration) -> StoreError {
        let asked = match self.asked.as_slice() {
            [] => String::new(),
            addrs => format!(
                "; asked {}",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        match self.cause {
            Some(StoreError::Unreachable(reason)) => {
                StoreError::Unreachable(format!("{reason} (for {timeout:?}{asked})"))
            }
            Some(StoreError::Timeout(reason)) => {
                StoreError::Timeout(format!("{reason} (for {timeout:?}{asked})"))
            }
            Some(other) => other,
            None => StoreError::Timeout(format!("no attempt within {timeout:?}")),
        }
    }
}

/// Whether a watch poll that failed with `error` makes its member suspect. Only a failure of
/// the member itself does. A poll given up because the member was suspected already
/// (`abandoned`) must not renew the suspicion: the watch would keep every member it ever moved
/// away from suspected.
pub(super) fn poll_failure_suspects(error: &CallError<Refusal>, abandoned: bool) -> bool {
    !abandoned && !matches!(error, CallError::Service(_))
}

#[cfg(test)]
mod tests {
    use skynet_raft::state::Command;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Seeds at ports 1, 2, 3, starting at the second.
    fn seeker() -> Seeker {
        Seeker::new(vec![addr(1), addr(2), addr(3)], 1)
    }

    #[test]
    fn attempts_go_round_the_seeds_from_the_clients_start() {
        let now = Instant::now();
        let mut s = seeker();
        let order: Vec<_> = (0..4).map(|round| s.target(round, now)).collect();
        assert_eq!(order, [addr(2), addr(3), addr(1), addr(2)]);
    }

    #[test]
    fn the_member_that_answered_last_is_asked_first_until_it_fails() {
        let now = Instant::now();
        let mut s = seeker();
        s.answered(Some(addr(3)));
        assert_eq!(s.target(0, now), addr(3));
        // Later rounds of the same request go round the list.
        assert_eq!(s.target(1, now), addr(3));
        assert_eq!(s.target(2, now), addr(1));
        // A failure elsewhere leaves it; a failure there drops it.
        s.failed(Some(addr(1)));
        assert_eq!(s.preferred(), Some(addr(3)));
        s.failed(Some(addr(3)));
        assert_eq!(s.preferred(), None);
        assert_eq!(s.target(0, now), addr(2));
        // An answer from this node's own member prefers nobody.
        s.answered(Some(addr(1)));
        s.answered(None);
        assert_eq!(s.preferred(), None);
    }

    #[test]
    fn suspects_are_skipped_unless_every_member_is_one() {
        let now = Instant::now();
        let mut s = seeker();
        s.suspect(addr(2), now);
        assert_eq!(s.target(0, now), addr(3));
        s.suspect(addr(3), now);
        assert_eq!(s.target(0, now), addr(1));
        s.suspect(addr(1), now);
        // Every member is suspected: the round's own turn, as if none were.
        assert_eq!(s.target(0, now), addr(2));
        assert_eq!(s.target(1, now), addr(3));
    }

    #[test]
    fn a_suspicion_ends_with_an_answer_or_after_suspect_for() {
        let t0 = Instant::now();
        let mut s = seeker();
        s.answered(Some(addr(2)));
        s.suspect(addr(2), t0);
        // Suspecting the preferred member stops preferring it.
        assert_eq!(s.preferred(), None);
        assert!(s.is_suspect(addr(2), t0 + SUSPECT_FOR - Duration::from_millis(1)));
        assert!(!s.is_suspect(addr(2), t0 + SUSPECT_FOR));
        // Forgotten, not merely expired: an earlier clock does not bring it back.
        assert!(!s.is_suspect(addr(2), t0));
        s.suspect(addr(3), t0);
        s.cleared(addr(3));
        assert!(!s.is_suspect(addr(3), t0));
        s.suspect(addr(1), t0);
        s.answered(Some(addr(1)));
        assert!(!s.is_suspect(addr(1), t0));
        assert_eq!(s.preferred(), Some(addr(1)));
    }

    #[test]
    fn learned_members_follow_the_seeds_and_count_in_a_pass() {
        let now = Instant::now();
        let mut s = seeker();
        assert!(s.asked_every_seed(2) && !s.asked_every_seed(3));
        s.learn(vec![addr(3), addr(4)]);
        assert_eq!(s.candidates(), [addr(1), addr(2), addr(3), addr(4)]);
        // Saying nothing keeps what was learned.
        s.learn(Vec::new());
        assert_eq!(s.candidates().len(), 4);
        assert!(!s.asked_every_seed(2) && s.asked_every_seed(3));
        assert_eq!(s.target(2, now), addr(4));
        s.learn(vec![addr(5)]);
        assert_eq!(s.candidates(), [addr(1), addr(2), addr(3), addr(5)]);
    }

    fn write() -> Request {
        Request::Write(Command::LeaseRevoke { id: 1 })
    }

    fn lost_connection() -> CallError<Refusal> {
        CallError::ConnectionLost {
            target: "m".into(),
            reason: "reset".into(),
        }
    }

    #[test]
    fn only_writes_and_removals_may_apply_and_joins_and_status_wait_whoever_leads() {
        assert!(may_apply(&write()) && may_apply(&Request::Remove { id: 1 }));
        for req in [
            Request::Get("k".into()),
            Request::KeepAlive(1),
            Request::Status,
        ] {
            assert!(!may_apply(&req), "{req:?}");
        }
        for req in [
            Request::Join {
                id: 1,
                addr: "a".into(),
            },
            Request::Leader,
            Request::Status,
        ] {
            assert!(!watches_leader(&req), "{req:?}");
        }
        assert!(watches_leader(&write()) && watches_leader(&Request::Range("p".into())));
    }

    #[test]
    fn a_write_cut_off_after_sending_has_an_unknown_outcome_and_a_read_is_sent_again() {
        let write = call_failed(addr(1), lost_connection(), true);
        assert!(write.suspect);
        assert_eq!(
            write.refusal,
            Refusal::Failed(StoreError::Indeterminate("reset".into()))
        );
        let read = call_failed(addr(1), lost_connection(), false);
        assert!(read.suspect);
        assert_eq!(read.refusal, Refusal::Unreachable("reset".into()));
        // A leader that stopped while serving it: the same, but the member answered.
        let stopped = || CallError::Service(Refusal::Failed(StoreError::Stopped("bye".into())));
        let write = call_failed(addr(1), stopped(), true);
        assert!(!write.suspect);
        assert!(matches!(
            write.refusal,
            Refusal::Failed(StoreError::Indeterminate(ref r)) if r.contains("the leader stopped: bye")
        ));
        let read = call_failed(addr(1), stopped(), false);
        assert!(matches!(read.refusal, Refusal::Unreachable(_)));
    }

    #[test]
    fn an_unsent_request_is_sent_again_and_its_member_suspected() {
        for e in [
            CallError::Unreachable {
                target: "m".into(),
                reason: "refused".into(),
            },
            CallError::Unavailable("busy".into()),
        ] {
            let f = call_failed(addr(1), e, true);
            assert!(f.suspect);
            assert!(matches!(f.refusal, Refusal::Unreachable(_)), "{f:?}");
        }
    }

    #[test]
    fn final_answers_end_the_request_without_suspicion() {
        let f = call_failed(
            addr(1),
            CallError::DeadlineExceeded(Duration::from_secs(1)),
            true,
        );
        assert!(!f.suspect);
        assert_eq!(
            f.refusal,
            Refusal::Failed(StoreError::Timeout(no_answer(
                addr(1),
                Duration::from_secs(1)
            )))
        );
        let handshake = CallError::HandshakeRefused {
            target: "m".into(),
            reason: "unknown CA".into(),
        };
        let f = call_failed(addr(1), handshake, false);
        assert!(!f.suspect);
        assert!(
            matches!(f.refusal, Refusal::Failed(StoreError::Unreachable(ref r)) if r.contains("unknown CA"))
        );
        let not_leader = Refusal::NotLeader { leader_addr: None };
        let f = call_failed(addr(1), CallError::Service(not_leader.clone()), true);
        assert!(!f.suspect);
        assert_eq!(f.refusal, not_leader);
        let f = call_failed(
            addr(1),
            CallError::Rejected {
                reason: crate::error::RejectReason::TooLarge,
                message: "big".into(),
            },
            true,
        );
        assert!(matches!(f.refusal, Refusal::Failed(StoreError::Remote(_))));
    }

    #[test]
    fn a_request_given_up_is_unknown_only_if_it_may_apply_and_was_sent() {
        assert!(matches!(
            abandoned(addr(1), true, true),
            Refusal::Failed(StoreError::Indeterminate(_))
        ));
        assert!(matches!(
            abandoned(addr(1), true, false),
            Refusal::Unreachable(_)
        ));
        assert!(matches!(
            abandoned(addr(1), false, true),
            Refusal::Unreachable(_)
        ));
    }

    #[test]
    fn redirects_go_to_the_named_leader_confirming_a_suspect_first() {
        let own = addr(1);
        let never = |_| false;
        assert_eq!(
            redirect("127.0.0.1:2", own, false, never),
            Redirect::Ask(Some(addr(2)))
        );
        // A member named itself goes to its own replica; a client at the same address (not a
        // member) calls it.
        assert_eq!(
            redirect("127.0.0.1:1", own, true, never),
            Redirect::Ask(None)
        );
        assert_eq!(
            redirect("127.0.0.1:1", own, false, never),
            Redirect::Ask(Some(own))
        );
        assert_eq!(
            redirect("127.0.0.1:2", own, false, |a| a == addr(2)),
            Redirect::ConfirmFirst(addr(2))
        );
        assert!(matches!(
            redirect("not an address", own, false, never),
            Redirect::Fail(Refusal::Failed(StoreError::Remote(_)))
        ));
    }

    #[test]
    fn attempts_keep_the_most_telling_cause_and_stop_at_a_final_answer() {
        let mut a = Attempts::default();
        a.asking(Some(addr(1)));
        a.failed(Refusal::Unreachable("refused".into()))
            .expect("not final");
        a.asking(Some(addr(2)));
        a.asking(Some(addr(1)));
        a.asking(None);
        // Running out of time says less than the connection failure before it.
        a.failed(Refusal::NotReady("deadline".into()))
            .expect("not final");
        a.failed(Refusal::NotLeader { leader_addr: None })
            .expect("not final");
        let e = a.give_up(Duration::from_secs(1));
        assert_eq!(
            e,
            StoreError::Unreachable("refused (for 1s; asked 127.0.0.1:1, 127.0.0.1:2)".into())
        );
        let mut a = Attempts::default();
        a.failed(Refusal::NotLeader { leader_addr: None })
            .expect("not final");
        a.failed(Refusal::NotReady("later".into()))
            .expect("not final");
        assert_eq!(
            a.give_up(Duration::from_secs(1)),
            StoreError::Timeout("no leader elected (for 1s)".into())
        );
        assert_eq!(
            Attempts::default().give_up(Duration::from_secs(1)),
            StoreError::Timeout("no attempt within 1s".into())
        );
        let mut a = Attempts::default();
        assert_eq!(
            a.failed(Refusal::Failed(StoreError::Rejected("no".into()))),
            Err(StoreError::Rejected("no".into()))
        );
    }

    #[test]
    fn a_watch_poll_suspects_its_member_only_for_the_members_own_failure() {
        assert!(poll_failure_suspects(&lost_connection(), false));
        assert!(!poll_failure_suspects(&lost_connection(), true));
        let refused = CallError::Service(Refusal::NotReady("stopping".into()));
        assert!(!poll_failure_suspects(&refused, false));
    }
}
