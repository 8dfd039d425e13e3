use super::*;

fn put(key: &str, value: &str) -> Command {
    Command::Op(put_op(key, value))
}

fn put_op(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: None,
        prev_kv: false,
    }
}

fn put_lease(key: &str, value: &str, lease: LeaseId) -> Command {
    Command::Op(Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: Some(lease),
        prev_kv: false,
    })
}

fn del(key: &str, prefix: bool) -> Command {
    Command::Op(Op::Delete {
        key: key.into(),
        prefix,
        prev_kv: true,
    })
}

fn apply(s: &mut KvState, cmd: Command) -> Outcome {
    s.apply(&cmd).expect("command applies")
}

fn value(s: &KvState, key: &str) -> Option<Vec<u8>> {
    s.get(key).map(|kv| kv.value.clone())
}

#[test]
fn put_tracks_revisions_and_versions() {
    let mut s = KvState::default();
    assert_eq!(apply(&mut s, put("a", "1")).revision, 1);
    assert_eq!(apply(&mut s, put("b", "1")).revision, 2);
    assert_eq!(apply(&mut s, put("a", "2")).revision, 3);
    let a = s.get("a").expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
    assert_eq!(a.value, b"2");
    assert_eq!(s.revision(), 3);
}

#[test]
fn put_returns_prev_only_when_asked() {
    let mut s = KvState::default();
    apply(&mut s, put("a", "1"));
    let out = apply(
        &mut s,
        Command::Op(Op::Put {
            key: "a".into(),
            value: b"2".to_vec(),
            lease: None,
            prev_kv: true,
        }),
    );
    let OpResponse::Put { prev: Some(prev) } = &out.responses[0] else {
        panic!("expected a previous value, got {out:?}");
    };
    assert_eq!(prev.value, b"1");
    let out = apply(&mut s, put("a", "3"));
    assert_eq!(out.responses, vec![OpResponse::Put { prev: None }]);
}

#[test]
fn delete_recreate_resets_create_revision_and_version() {
    let mut s = KvState::default();
    apply(&mut s, put("a", "1"));
    apply(&mut s, put("a", "2"));
    let out = apply(&mut s, del("a", false));
    assert_eq!(out.revision, 3);
    assert_eq!(s.get("a"), None);
    apply(&mut s, put("a", "3"));
    let a = s.get("a").expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (4, 4, 1));
}

#[test]
fn delete_of_missing_key_does_not_bump_revision() {
    let mut s = KvState::default();
    apply(&mut s, put("a", "1"));
    let out = apply(&mut s, del("zzz", false));
    assert_eq!(out.revision, 1);
    assert_eq!(
        out.responses,
        vec![OpResponse::Delete {
            deleted: 0,
            prev: vec![]
        }]
    );
    assert_eq!(s.events_since(1, "").expect("history"), vec![]);
}

#[test]
fn prefix_delete_removes_only_the_prefix_at_one_revision() {
    let mut s = KvState::default();
    for k in ["svc/a", "svc/b", "svc", "svd/a", "sv"] {
        apply(&mut s, put(k, "x"));
    }
    let out = apply(&mut s, del("svc/", true));
    assert_eq!(out.revision, 6);
    let OpResponse::Delete { deleted, prev } = &out.responses[0] else {
        panic!("expected a delete response");
    };
    assert_eq!(*deleted, 2);
    assert_eq!(prev.len(), 2);
    let keys: Vec<String> = s.range("", 0).kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["sv", "svc", "svd/a"]);
    let events = s.events_since(5, "").expect("history");
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.revision == 6 && e.kind == EventKind::Delete)
    );
}

#[test]
fn range_respects_prefix_and_limit() {
    let mut s = KvState::default();
    for k in ["a/1", "a/2", "a/3", "b/1"] {
        apply(&mut s, put(k, "x"));
    }
    let page = s.range("a/", 2);
    assert_eq!(page.kvs.len(), 2);
    assert!(page.more);
    assert_eq!(page.revision, 4);
    let page = s.range("a/", 3);
    assert_eq!(page.kvs.len(), 3);
    assert!(!page.more);
    assert_eq!(s.range("a/", 0).kvs.len(), 3);
    assert_eq!(s.range("c", 0).kvs.len(), 0);
    assert_eq!(s.range("", 0).kvs.len(), 4);
}

fn cmp(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: key.into(),
        op,
        target,
    }
}

#[test]
fn txn_cas_on_value_picks_the_right_branch() {
    let mut s = KvState::default();
    apply(&mut s, put("lock", "free"));
    let take = |expect: &str| {
        Command::Txn(Txn {
            compares: vec![cmp(
                "lock",
                CompareOp::Equal,
                CompareTarget::Value(expect.as_bytes().to_vec()),
            )],
            success: vec![put_op("lock", "mine"), put_op("owner", "me")],
            failure: vec![Op::Get { key: "lock".into() }],
        })
    };
    let out = apply(&mut s, take("free"));
    assert!(out.succeeded);
    assert_eq!(out.revision, 2);
    assert_eq!(s.get("lock").map(|kv| kv.mod_revision), Some(2));
    assert_eq!(s.get("owner").map(|kv| kv.mod_revision), Some(2));

    // The CAS now fails: the failure branch only reads, so the revision stays.
    let out = apply(&mut s, take("free"));
    assert!(!out.succeeded);
    assert_eq!(out.revision, 2);
    let OpResponse::Get { kv: Some(kv) } = &out.responses[0] else {
        panic!("expected a read");
    };
    assert_eq!(kv.value, b"mine");
}

#[test]
fn txn_compares_on_revision_and_version_with_missing_keys() {
    let mut s = KvState::default();
    let create_if_missing = Command::Txn(Txn {
        compares: vec![cmp("k", CompareOp::Equal, CompareTarget::Version(0))],
        success: vec![put_op("k", "1")],
        failure: vec![],
    });
    assert!(apply(&mut s, create_if_missing.clone()).succeeded);
    assert!(!apply(&mut s, create_if_missing).succeeded);

    let holds = |s: &KvState, c: Compare| s.compare_holds(&c);
    assert!(holds(
        &s,
        cmp("k", CompareOp::Equal, CompareTarget::ModRevision(1))
    ));
    assert!(holds(
        &s,
        cmp("k", CompareOp::Greater, CompareTarget::ModRevision(0))
    ));
    assert!(holds(
        &s,
        cmp("k", CompareOp::Less, CompareTarget::ModRevision(2))
    ));
    assert!(holds(
        &s,
        cmp("k", CompareOp::NotEqual, CompareTarget::Version(2))
    ));
    assert!(holds(
        &s,
        cmp("nope", CompareOp::Equal, CompareTarget::ModRevision(0))
    ));
    assert!(holds(
        &s,
        cmp("nope", CompareOp::Less, CompareTarget::Version(1))
    ));
    // A missing key has no value: only NotEqual holds.
    let v = || CompareTarget::Value(Vec::new());
    assert!(!holds(&s, cmp("nope", CompareOp::Equal, v())));
    assert!(holds(&s, cmp("nope", CompareOp::NotEqual, v())));
    assert!(!holds(&s, cmp("nope", CompareOp::Greater, v())));
    assert!(!holds(&s, cmp("nope", CompareOp::Less, v())));
    assert!(holds(
        &s,
        cmp("k", CompareOp::Greater, CompareTarget::Value(b"0".to_vec()))
    ));
}

#[test]
fn rejected_txn_changes_nothing() {
    let mut s = KvState::default();
    apply(&mut s, put("a", "1"));
    let before = s.clone();
    let txn = Command::Txn(Txn {
        compares: vec![],
        success: vec![
            put_op("b", "1"),
            Op::Put {
                key: "c".into(),
                value: vec![],
                lease: Some(42),
                prev_kv: false,
            },
        ],
        failure: vec![],
    });
    assert_eq!(s.apply(&txn), Err(CommandError::LeaseNotFound { id: 42 }));
    assert_eq!(s, before);
}

#[test]
fn leases_bind_keys_and_revoke_deletes_them() {
    let mut s = KvState::default();
    apply(
        &mut s,
        Command::LeaseGrant {
            id: 7,
            ttl_ms: 1000,
        },
    );
    assert_eq!(s.revision(), 0, "a grant changes no key");
    assert_eq!(
        s.apply(&Command::LeaseGrant { id: 7, ttl_ms: 1 }),
        Err(CommandError::LeaseExists { id: 7 })
    );
    assert_eq!(
        s.apply(&Command::LeaseGrant { id: 8, ttl_ms: 0 }),
        Err(CommandError::ZeroTtl { id: 8 })
    );
    apply(&mut s, put_lease("svc/a", "1", 7));
    apply(&mut s, put_lease("svc/b", "1", 7));
    apply(&mut s, put("svc/c", "1"));
    // Rebinding a key to no lease detaches it.
    apply(&mut s, put_lease("svc/d", "1", 7));
    apply(&mut s, put("svc/d", "2"));
    let out = apply(&mut s, Command::LeaseRevoke { id: 7 });
    assert_eq!(out.lease_deleted, ["svc/a", "svc/b"]);
    assert_eq!(out.revision, 6);
    let keys: Vec<String> = s.range("", 0).kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["svc/c", "svc/d"]);
    assert_eq!(s.leases().count(), 0);
    assert_eq!(
        s.apply(&Command::LeaseRevoke { id: 7 }),
        Err(CommandError::LeaseNotFound { id: 7 })
    );
    assert_eq!(
        s.apply(&put_lease("x", "1", 7)),
        Err(CommandError::LeaseNotFound { id: 7 })
    );
}

#[test]
fn lease_expire_ends_many_leases_at_one_revision_and_ignores_unknown() {
    let mut s = KvState::default();
    for id in [1, 2, 3] {
        apply(&mut s, Command::LeaseGrant { id, ttl_ms: 500 });
        apply(&mut s, put_lease(&format!("k{id}"), "v", id));
    }
    let out = apply(
        &mut s,
        Command::LeaseExpire {
            ids: vec![1, 3, 99],
        },
    );
    assert_eq!(out.revision, 4);
    assert_eq!(out.lease_deleted, ["k1", "k3"]);
    assert_eq!(value(&s, "k2"), Some(b"v".to_vec()));
    assert_eq!(s.leases().map(|(id, _)| id).collect::<Vec<_>>(), [2]);
    // Expiring leases without keys changes nothing.
    apply(&mut s, Command::LeaseGrant { id: 5, ttl_ms: 500 });
    assert_eq!(
        apply(&mut s, Command::LeaseExpire { ids: vec![5] }).revision,
        4
    );
}

#[test]
fn events_since_filters_by_prefix_and_reports_compaction() {
    let mut s = KvState::new(3);
    for i in 1..=5 {
        apply(
            &mut s,
            put(if i % 2 == 0 { "a/x" } else { "b/x" }, &i.to_string()),
        );
    }
    // Revisions 3, 4, 5 are kept.
    assert_eq!(s.compacted_revision(), 2);
    assert_eq!(
        s.events_since(1, ""),
        Err(Compacted {
            compacted_revision: 2
        })
    );
    let all = s.events_since(2, "").expect("kept");
    assert_eq!(
        all.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let a = s.events_since(2, "a/").expect("kept");
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].revision, 4);
    assert_eq!(a[0].value, b"4");
    assert_eq!(
        a[0].prev.as_ref().map(|p| p.value.clone()),
        Some(b"2".to_vec())
    );
    assert_eq!(s.events_since(5, "").expect("up to date"), vec![]);
}

#[test]
fn state_round_trips_through_the_codec() {
    let mut s = KvState::new(10);
    apply(&mut s, Command::LeaseGrant { id: 1, ttl_ms: 10 });
    apply(&mut s, put_lease("a", "1", 1));
    apply(&mut s, put("b", "2"));
    apply(&mut s, del("b", false));
    let bytes = crate::codec::encode(&s).expect("encode");
    let back: KvState = crate::codec::decode(&bytes).expect("decode");
    assert_eq!(back, s);
}

/// xorshift64*: a tiny deterministic generator, so failures replay exactly from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A modelled key: (value, create_revision, mod_revision, version).
type ModelKv = (Vec<u8>, u64, u64, u64);

/// The model: key -> [`ModelKv`], plus the revision.
#[derive(Default)]
struct Model {
    rev: u64,
    kvs: BTreeMap<String, ModelKv>,
}

impl Model {
    fn put(&mut self, key: &str, value: &[u8], rev: u64) {
        let e = self
            .kvs
            .entry(key.to_owned())
            .or_insert((Vec::new(), rev, 0, 0));
        e.0 = value.to_vec();
        e.2 = rev;
        e.3 += 1;
    }

    fn delete(&mut self, key: &str, prefix: bool) -> bool {
        let before = self.kvs.len();
        if prefix {
            self.kvs.retain(|k, _| !k.starts_with(key));
        } else {
            self.kvs.remove(key);
        }
        self.kvs.len() != before
    }
}

#[test]
fn model_based_random_ops_match_a_btreemap() {
    const KEYS: [&str; 8] = ["a", "a/1", "a/2", "ab", "b", "b/1", "c", ""];
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut s = KvState::new(u64::MAX);
        let mut m = Model::default();
        for step in 0..300 {
            let key = KEYS[rng.below(KEYS.len() as u64) as usize];
            let val = rng.below(4).to_string().into_bytes();
            let cmd = match rng.below(4) {
                0 | 1 => {
                    m.rev += 1;
                    let rev = m.rev;
                    m.put(key, &val, rev);
                    Command::Op(Op::Put {
                        key: key.into(),
                        value: val,
                        lease: None,
                        prev_kv: false,
                    })
                }
                2 => {
                    let prefix = rng.below(2) == 0;
                    if m.delete(key, prefix) {
                        m.rev += 1;
                    }
                    Command::Op(Op::Delete {
                        key: key.into(),
                        prefix,
                        prev_kv: false,
                    })
                }
                _ => {
                    // CAS: set `key` to `val` if it currently holds `expect`.
                    let expect = rng.below(4).to_string().into_bytes();
                    if m.kvs.get(key).is_some_and(|e| e.0 == expect) {
                        m.rev += 1;
                        let rev = m.rev;
                        m.put(key, &val, rev);
                    }
                    Command::Txn(Txn {
                        compares: vec![cmp(key, CompareOp::Equal, CompareTarget::Value(expect))],
                        success: vec![Op::Put {
                            key: key.into(),
                            value: val,
                            lease: None,
                            prev_kv: false,
                        }],
                        failure: vec![],
                    })
                }
            };
            let out = s.apply(&cmd).expect("no leases involved: never rejected");
            assert_eq!(out.revision, m.rev, "seed {seed} step {step}: {cmd:?}");
            let got: Vec<(String, ModelKv)> = s
                .range("", 0)
                .kvs
                .into_iter()
                .map(|kv| {
                    (
                        kv.key,
                        (kv.value, kv.create_revision, kv.mod_revision, kv.version),
                    )
                })
                .collect();
            let want: Vec<_> = m.kvs.clone().into_iter().collect();
            assert_eq!(got, want, "seed {seed} step {step}: {cmd:?}");
        }
        // Replaying the full watch history rebuilds the same keyspace, with gapless revisions.
        let mut replay: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut last = 0;
        for e in s.events_since(0, "").expect("unbounded history") {
            assert!(
                e.revision == last || e.revision == last + 1,
                "gap at {}",
                e.revision
            );
            last = e.revision;
            match e.kind {
                EventKind::Put => replay.insert(e.key, e.value),
                EventKind::Delete => replay.remove(&e.key),
            };
        }
        assert_eq!(last, m.rev);
        let want: BTreeMap<String, Vec<u8>> = m.kvs.into_iter().map(|(k, v)| (k, v.0)).collect();
        assert_eq!(replay, want, "seed {seed}");
    }
}
