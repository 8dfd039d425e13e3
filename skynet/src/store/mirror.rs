//! A live in-memory mirror of one key prefix of the store: the one loop behind the registry's
//! view and the route table.
//!
//! The loop reads the prefix (`Store::range`), builds the view's state from it, publishes it,
//! then watches from that read's revision and applies every batch of events, publishing after
//! each. When the watch fails it reads again: at once if the watch only fell behind the kept
//! history (the store answered; it just compacted), after [`RESYNC_PAUSE`] if the store failed
//! (unreachable, slow), so a store that is down is not asked in a tight loop. A failed read is
//! retried after the same pause. What is built, how events apply and what is published are the
//! view's ([`MirrorView`]); the store itself is behind [`PrefixSource`] so that the loop is
//! tested with a scripted one.

use std::future::Future;
use std::time::Duration;

use super::{Event, KeyValue, Revision, Store, StoreError, StoreWatch};

/// Pause after a mirror failed to read or watch the store, before it reads again.
pub(crate) const RESYNC_PAUSE: Duration = Duration::from_millis(200);

/// What one mirror keeps and publishes. The mirror calls `load` after each read, `apply` for
/// each batch of watched events, `publish` after either, and `unreadable` when a read failed.
pub(crate) trait MirrorView: Send {
    /// How the view calls itself in its logs, e.g. "registry view".
    const NAME: &'static str;
    /// How its watch is called in its logs, e.g. "registry watch".
    const WATCH: &'static str;
    /// The state kept between batches.
    type State: Send;

    /// The state from a range read of the prefix at `revision`.
    fn load(&mut self, kvs: Vec<KeyValue>, revision: Revision) -> Self::State;

    /// Applies one batch of events (oldest first) to `state`.
    fn apply(&mut self, state: &mut Self::State, events: Vec<Event>);

    /// Makes `state` what readers see.
    fn publish(&mut self, state: &Self::State);

    /// A read failed (the store's own timeout and retries spent); the mirror reads again after
    /// a pause. Nothing by default: the last published state stays, stale but usable.
    fn unreadable(&mut self, _error: &StoreError) {}
}

/// Where a mirror reads and watches: the [`Store`], or a scripted fake in tests.
pub(crate) trait PrefixSource: Send + Sync {
    /// A watch from [`PrefixSource::watch`].
    type Watch: PrefixWatch;

    /// Every key under `prefix`, linearizably, with the revision the read saw.
    fn range(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, Revision), StoreError>> + Send;

    /// Every change under `prefix` after `after`, in order.
    fn watch(&self, prefix: &str, after: Revision) -> Self::Watch;
}

/// A watch of a prefix: batches of events, in order, with no gap.
pub(crate) trait PrefixWatch: Send {
    /// The next batch (at least one event), or why the watch cannot go on.
    fn next(&mut self) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
}

impl PrefixSource for Store {
    type Watch = StoreWatch;

    fn range(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, Revision), StoreError>> + Send {
        Store::range(self, prefix)
    }

    fn watch(&self, prefix: &str, after: Revision) -> StoreWatch {
        Store::watch(self, prefix, after)
    }
}

impl PrefixWatch for StoreWatch {
    fn next(&mut self) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
        StoreWatch::next(self)
    }
}

/// When a mirror whose watch failed reads the prefix again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resync {
    /// At once: the watch fell behind the store's kept history, but the store answered.
    Now,
    /// After [`RESYNC_PAUSE`]: the store itself failed, and asking again at once would spin.
    AfterPause,
}

fn resync_after(error: &StoreError) -> Resync {
    match error {
        StoreError::Compacted(_) => Resync::Now,
        _ => Resync::AfterPause,
    }
}

/// Keeps `view` a mirror of `prefix` in `source`, forever: the caller stops it by dropping the
/// future (a `select!` on its stop token).
pub(crate) async fn mirror_prefix<S: PrefixSource, V: MirrorView>(
    source: S,
    prefix: &str,
    mut view: V,
) {
    loop {
        let (kvs, revision) = match source.range(prefix).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "{} cannot read the store; retrying", V::NAME);
                view.unreadable(&e);
                tokio::time::sleep(RESYNC_PAUSE).await;
                continue;
            }
        };
        let mut state = view.load(kvs, revision);
        view.publish(&state);
        let mut watch = source.watch(prefix, revision);
        loop {
            let events = match watch.next().await {
                Ok(events) => events,
                Err(e) => {
                    match resync_after(&e) {
                        Resync::Now => tracing::info!(
                            "{} fell behind the store's history; reading again",
                            V::NAME
                        ),
                        Resync::AfterPause => {
                            tracing::warn!(error = %e, "{} failed; reading again", V::WATCH);
                            tokio::time::sleep(RESYNC_PAUSE).await;
                        }
                    }
                    break;
                }
            };
            view.apply(&mut state, events);
            view.publish(&state);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::EventKind;
    use crate::sync::Locked as _;

    #[test]
    fn only_a_compacted_watch_reads_again_at_once() {
        assert_eq!(resync_after(&StoreError::Compacted(7)), Resync::Now);
        for failure in [
            StoreError::Unreachable("no member answered".into()),
            StoreError::Timeout("no leader".into()),
            StoreError::Remote("boom".into()),
        ] {
            assert_eq!(resync_after(&failure), Resync::AfterPause, "{failure}");
        }
    }

    /// What the scripted store saw and the view did, in order, with the (paused) clock.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Range,
        Watch(Revision),
        Unreadable(String),
        Published(Revision, Vec<String>),
    }

    type Log = Arc<Mutex<Vec<(Duration, Seen)>>>;
    /// What each read answers, in order.
    type Reads = Mutex<VecDeque<Result<(Vec<KeyValue>, Revision), StoreError>>>;
    /// What each watch poll answers, in order, whichever watch asks.
    type Batches = Arc<Mutex<VecDeque<Result<Vec<Event>, StoreError>>>>;

    /// A store that answers reads and watch polls from scripts; once a script is spent, the
    /// call waits forever.
    struct Scripted {
        start: tokio::time::Instant,
        log: Log,
        reads: Reads,
        watches: Batches,
    }

    struct ScriptedWatch(Batches);

    fn note(log: &Log, start: tokio::time::Instant, seen: Seen) {
        log.locked().push((start.elapsed(), seen));
    }

    impl PrefixSource for Scripted {
        type Watch = ScriptedWatch;

        fn range(
            &self,
            prefix: &str,
        ) -> impl Future<Output = Result<(Vec<KeyValue>, Revision), StoreError>> + Send {
            assert_eq!(prefix, "p/");
            note(&self.log, self.start, Seen::Range);
            let next = self.reads.locked().pop_front();
            async move {
                match next {
                    Some(read) => read,
                    None => std::future::pending().await,
                }
            }
        }

        fn watch(&self, prefix: &str, after: Revision) -> ScriptedWatch {
            assert_eq!(prefix, "p/");
            note(&self.log, self.start, Seen::Watch(after));
            ScriptedWatch(self.watches.clone())
        }
    }

    impl PrefixWatch for ScriptedWatch {
        fn next(&mut self) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send {
            let next = self.0.locked().pop_front();
            async move {
                match next {
                    Some(batch) => batch,
                    None => std::future::pending().await,
                }
            }
        }
    }

    /// A view that keeps the keys and their revision, and logs what it publishes (and says
    /// which revision it published, for the test to await).
    struct Keys {
        start: tokio::time::Instant,
        log: Log,
        published: tokio::sync::mpsc::UnboundedSender<Revision>,
    }

    impl MirrorView for Keys {
        const NAME: &'static str = "test view";
        const WATCH: &'static str = "test watch";
        type State = (Revision, BTreeMap<String, Vec<u8>>);

        fn load(&mut self, kvs: Vec<KeyValue>, revision: Revision) -> Self::State {
            (
                revision,
                kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            )
        }

        fn apply(&mut self, state: &mut Self::State, events: Vec<Event>) {
            for event in events {
                state.0 = event.revision;
                match event.kind {
                    EventKind::Put => state.1.insert(event.key, event.value),
                    EventKind::Delete => state.1.remove(&event.key),
                };
            }
        }

        fn publish(&mut self, state: &Self::State) {
            let keys = state.1.keys().cloned().collect();
            note(&self.log, self.start, Seen::Published(state.0, keys));
            let _ = self.published.send(state.0);
        }

        fn unreadable(&mut self, error: &StoreError) {
            note(&self.log, self.start, Seen::Unreadable(error.to_string()));
        }
    }

    fn kv(key: &str, revision: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        }
    }

    fn event(kind: EventKind, key: &str, revision: Revision) -> Event {
        Event {
            revision,
            kind,
            key: key.into(),
            value: Vec::new(),
            prev: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reads_watches_from_the_read_and_resyncs_after_failures() {
        let start = tokio::time::Instant::now();
        let log: Log = Arc::default();
        let source = Scripted {
            start,
            log: log.clone(),
            reads: Mutex::new(VecDeque::from([
                Err(StoreError::Unreachable("no member answered".into())),
                Ok((vec![kv("p/a", 3)], 5)),
                Ok((vec![kv("p/b", 6), kv("p/c", 8)], 9)),
                Ok((vec![kv("p/c", 8)], 12)),
            ])),
            watches: Arc::new(Mutex::new(VecDeque::from([
                Ok(vec![
                    event(EventKind::Put, "p/b", 6),
                    event(EventKind::Delete, "p/a", 7),
                ]),
                Err(StoreError::Compacted(8)),
                Err(StoreError::Unreachable(
                    "no member answered a watch poll".into(),
                )),
            ]))),
        };
        let (published, mut revisions) = tokio::sync::mpsc::unbounded_channel();
        let view = Keys {
            start,
            log: log.clone(),
            published,
        };
        let mirror = tokio::spawn(mirror_prefix(source, "p/", view));
        // Every script is spent once the last read (at revision 12) has been published.
        let last = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(revision) = revisions.recv().await {
                if revision == 12 {
                    return true;
                }
            }
            false
        });
        assert_eq!(last.await, Ok(true), "{:?}", log.locked());
        // The mirror now waits on its watch; let it reach it.
        tokio::task::yield_now().await;
        mirror.abort();

        let pause = RESYNC_PAUSE;
        let zero = Duration::ZERO;
        let keys = |k: &[&str]| k.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            *log.locked(),
            vec![
                // A failed read tells the view, then waits before reading again.
                (zero, Seen::Range),
                (
                    zero,
                    Seen::Unreadable("store unreachable: no member answered".into())
                ),
                (pause, Seen::Range),
                (pause, Seen::Published(5, keys(&["p/a"]))),
                // The watch starts at the read's revision; a batch is applied, then published.
                (pause, Seen::Watch(5)),
                (pause, Seen::Published(7, keys(&["p/b"]))),
                // Compacted: read again at once.
                (pause, Seen::Range),
                (pause, Seen::Published(9, keys(&["p/b", "p/c"]))),
                (pause, Seen::Watch(9)),
                // The store failed: read again after a pause.
                (pause * 2, Seen::Range),
                (pause * 2, Seen::Published(12, keys(&["p/c"]))),
                (pause * 2, Seen::Watch(12)),
            ]
        );
    }
}
