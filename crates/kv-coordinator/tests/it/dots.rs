//! Dots are never issued twice, whatever a node's local state loses:
//! tombstone collection, restarts, a wiped disk, a restored backup.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_clock::{Dot, VectorClock};
use kv_coordinator::{Config, Error, Replica, ReplicaSettings};
use kv_core::{NodeId, Partitioner, StorageEngine};
use kv_ring::ConsistentHashRing;
use kv_testkit::MemEngine;
use proptest::prelude::*;

use super::{Cluster, seeded};

/// Node 1's replica of a one-node ring on `engine` and `hints`, with
/// `settings` (N is set to 1).
fn single(
    engine: Arc<MemEngine>,
    hints: Arc<MemEngine>,
    settings: ReplicaSettings,
) -> Replica<Arc<MemEngine>> {
    let ring: Arc<dyn Partitioner + Send + Sync> = Arc::new(
        ConsistentHashRing::builder()
            .vnodes(8)
            .nodes([NodeId(1)])
            .build()
            .unwrap(),
    );
    let settings = ReplicaSettings { n: 1, ..settings };
    Replica::new(NodeId(1), engine, hints, &settings, ring).unwrap()
}

/// Node 1's replica of a one-node ring on `engine`, started in `epoch`.
fn replica(engine: Arc<MemEngine>, epoch: u32) -> Replica<Arc<MemEngine>> {
    let settings = ReplicaSettings {
        epoch,
        ..ReplicaSettings::default()
    };
    single(engine, Arc::new(MemEngine::new()), settings)
}

/// What happens to the replica's node.
#[derive(Debug, Clone)]
enum Op {
    /// A write of key `key`: blind, or with the context of the state it
    /// holds; a delete writes a tombstone.
    Write { key: u8, blind: bool, delete: bool },
    /// The key's state is collected (tombstone collection forgets a key).
    Reap { key: u8 },
    /// The process restarts on its disk.
    Restart,
    /// The disk is replaced: the node restarts empty.
    Wipe,
    /// A backup of the disk is taken.
    Backup,
    /// The last backup is restored and the node restarts on it (also what
    /// a crash that loses the unsynced tail looks like).
    Restore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..4, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(key, blind, delete)| Op::Write { key, blind, delete }),
        2 => (0u8..4).prop_map(|key| Op::Reap { key }),
        1 => Just(Op::Restart),
        1 => Just(Op::Wipe),
        1 => Just(Op::Backup),
        1 => Just(Op::Restore),
    ]
}

/// Runs `ops` and returns the first dot issued twice for one key, if any.
/// `fresh_epochs`: every start takes a new epoch (what a node does); off,
/// every start reuses epoch 0 (the design before epochs).
fn first_reused_dot(ops: &[Op], fresh_epochs: bool) -> Option<(u8, Dot, usize, usize)> {
    let mut epoch = 1;
    let mut next_epoch = || {
        if fresh_epochs {
            epoch += 1;
            epoch
        } else {
            0
        }
    };
    let mut engine = Arc::new(MemEngine::new());
    let mut node = replica(engine.clone(), next_epoch());
    let mut backup: Option<MemEngine> = None;
    let mut issued: BTreeMap<(u8, Dot), usize> = BTreeMap::new();
    let prune = kv_clock::PrunePolicy::default();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Write { key, blind, delete } => {
                let k = [*key];
                let context = if *blind {
                    VectorClock::new()
                } else {
                    node.state(&k).unwrap().context().clone()
                };
                let value = (!delete).then(|| vec![*key]);
                let (_, dot) = node.coordinate(&k, value, &context, 1000, &prune).unwrap();
                if let Some(&earlier) = issued.get(&(*key, dot)) {
                    return Some((*key, dot, earlier, i));
                }
                issued.insert((*key, dot), i);
            }
            Op::Reap { key } => {
                if let Some(bytes) = node.engine().get(&[*key]).unwrap() {
                    assert!(node.reap(&[*key], &bytes).unwrap());
                }
            }
            Op::Restart => node = replica(engine.clone(), next_epoch()),
            Op::Wipe => {
                engine = Arc::new(MemEngine::new());
                node = replica(engine.clone(), next_epoch());
            }
            Op::Backup => backup = Some(engine.snapshot()),
            Op::Restore => {
                if let Some(b) = &backup {
                    engine = Arc::new(b.snapshot());
                    node = replica(engine.clone(), next_epoch());
                }
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The property: across any sequence of writes, collections,
    /// restarts, wipes and restores, no two writes of a key share a dot.
    #[test]
    fn no_two_writes_share_a_dot(ops in prop::collection::vec(op(), 1..120)) {
        let reused = first_reused_dot(&ops, true);
        prop_assert!(reused.is_none(), "dot issued twice: {reused:?}");
    }
}

#[test]
fn each_way_of_losing_state_reuses_dots_without_fresh_epochs() {
    // The property test above can fail: without epochs, each of these
    // histories issues a dot twice. With them, none does.
    let write = |blind| Op::Write {
        key: 0,
        blind,
        delete: false,
    };
    let histories = [
        ("wiped disk", vec![write(true), Op::Wipe, write(true)]),
        (
            "restored backup",
            vec![Op::Backup, write(true), Op::Restore, write(true)],
        ),
        (
            "restart after a collection",
            vec![
                write(true),
                write(false),
                Op::Reap { key: 0 },
                Op::Restart,
                write(true),
            ],
        ),
    ];
    for (name, ops) in histories {
        assert!(
            first_reused_dot(&ops, false).is_some(),
            "{name}: expected a reused dot without epochs"
        );
        assert_eq!(first_reused_dot(&ops, true), None, "{name}");
    }
    // Within one process, a collected key is numbered above what it had:
    // even without epochs, collection alone reuses nothing.
    let collected = [write(true), write(false), Op::Reap { key: 0 }, write(true)];
    assert_eq!(first_reused_dot(&collected, false), None);
}

#[test]
fn forged_contexts_are_refused_and_never_give_two_siblings_one_dot() {
    let node = replica(Arc::new(MemEngine::new()), 7);
    let prune = kv_clock::PrunePolicy::default();
    let empty = VectorClock::new();
    node.coordinate(b"k", Some(b"a".to_vec()), &empty, 10, &prune)
        .unwrap();
    // A counter of this node's actor it never issued.
    let ahead = VectorClock::from_counters([(node.actor(), 1_000)]);
    let err = node
        .coordinate(b"k", Some(b"b".to_vec()), &ahead, 10, &prune)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("not issued"), "{err}");
    // A counter no node reaches, for another actor.
    let forged = VectorClock::from_counters([(NodeId(2), u64::MAX)]);
    let err = node
        .coordinate(b"k", Some(b"c".to_vec()), &forged, 10, &prune)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    // Nothing was stored by the refused writes, and blind writes of the
    // key still work and stay distinct.
    for _ in 0..3 {
        node.coordinate(b"k", Some(b"d".to_vec()), &empty, 10, &prune)
            .unwrap();
    }
    let state = node.state(b"k").unwrap();
    assert_eq!(state.len(), 4);
    let mut dots: Vec<Dot> = state.siblings().iter().map(|s| s.dot).collect();
    dots.dedup();
    assert_eq!(dots.len(), 4, "distinct dots");
    // One bad write in a batch fails alone.
    let updates = vec![
        kv_coordinator::Update {
            key: b"x".to_vec(),
            value: Some(b"1".to_vec()),
            context: empty.clone(),
            write: None,
            expires: None,
        },
        kv_coordinator::Update {
            key: b"y".to_vec(),
            value: Some(b"2".to_vec()),
            context: ahead.clone(),
            write: None,
            expires: None,
        },
        kv_coordinator::Update {
            key: b"z".to_vec(),
            value: Some(b"3".to_vec()),
            context: empty,
            write: None,
            expires: None,
        },
    ];
    let results = node.coordinate_many(updates, 10, &prune);
    assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok());
    assert!(node.state(b"y").unwrap().is_empty());
    assert_eq!(node.state(b"z").unwrap().len(), 1);
}

#[test]
fn a_state_over_the_limit_fails_alone() {
    let settings = ReplicaSettings {
        max_state_bytes: 1_000,
        ..ReplicaSettings::default()
    };
    let node = single(
        Arc::new(MemEngine::new()),
        Arc::new(MemEngine::new()),
        settings,
    );
    let prune = kv_clock::PrunePolicy::default();
    let empty = VectorClock::new();
    // Siblings accumulate until the state would pass the limit: that
    // write alone is refused, with the reason.
    let mut refused = None;
    for i in 0..10 {
        if let Err(e) = node.coordinate(b"k", Some(vec![i; 300]), &empty, 100, &prune) {
            refused = Some((i, e));
            break;
        }
    }
    let (at, err) = refused.expect("the fourth sibling passes 1,000 bytes");
    assert_eq!(at, 3);
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(node.state(b"k").unwrap().len(), 3);
}

#[test]
fn undecodable_states_are_quarantined_and_the_node_starts() {
    let engine = Arc::new(MemEngine::new());
    let hints = Arc::new(MemEngine::new());
    engine.put(b"bad", b"\x07not a state").unwrap();
    let node = single(engine.clone(), hints, ReplicaSettings::default());
    assert_eq!(node.hints().quarantined(), 1);
    assert_eq!(
        node.hints().quarantine_entries().unwrap(),
        vec![(b"bad".to_vec(), b"\x07not a state".to_vec())]
    );
    assert_eq!(engine.get(b"bad").unwrap(), None, "moved out of the store");
    // The key is writable again.
    let prune = kv_clock::PrunePolicy::default();
    node.coordinate(b"bad", Some(b"v".to_vec()), &VectorClock::new(), 10, &prune)
        .unwrap();
}

/// A cluster under writes, deletes, collections with a short grace,
/// restarts, wipes and restores, with anti-entropy between: every write
/// gets a dot no other write of its key ever had, and after healing the
/// replicas converge.
async fn cluster_run(seed: u64, ops: usize) -> (usize, usize) {
    let config = Config {
        max_siblings: 10_000,
        tombstone_grace: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    let mut c = Cluster::new(4, config);
    let mut next = seeded(seed);
    let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("d:{i}").into_bytes()).collect();
    let mut dots: BTreeMap<(Vec<u8>, Dot), usize> = BTreeMap::new();
    let mut last_read: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut backups: BTreeMap<u64, (MemEngine, MemEngine)> = BTreeMap::new();
    let (mut written, mut collected) = (0, 0);
    // Collections run at a clock past every tombstone's grace.
    let later = kv_core::unix_secs() + 10;
    for op in 0..ops {
        let id = 1 + next(4);
        match next(20) {
            0 => c.restart(NodeId(id)),
            1 => c.wipe(NodeId(id)),
            2 => {
                let (data, hints) = &c.disks[(id - 1) as usize];
                backups.insert(id, (data.snapshot(), hints.snapshot()));
            }
            3 => {
                if let Some((data, hints)) = backups.get(&id) {
                    c.restore(NodeId(id), data.snapshot(), hints.snapshot());
                }
            }
            4..=5 => {
                for node in &c.nodes {
                    let (_, errors) = node.anti_entropy_round(64).await;
                    assert!(errors.is_empty(), "seed {seed}: {errors:?}");
                    collected += node.collect_tombstones(later).await.unwrap().1;
                }
            }
            6..=8 => {
                let key = &keys[next(keys.len() as u64) as usize];
                if let Ok(got) = c.coordinator(key).get(key, Some(2)).await {
                    last_read.insert(key.clone(), got.context);
                }
            }
            kind => {
                let key = keys[next(keys.len() as u64) as usize].clone();
                let context = if kind % 2 == 0 {
                    Vec::new()
                } else {
                    last_read.get(&key).cloned().unwrap_or_default()
                };
                let node = c.coordinator(&key);
                let result = if kind == 19 {
                    node.delete(&key, &context, Some(3)).await
                } else {
                    node.put(&key, format!("v{op}").as_bytes(), &context, Some(3))
                        .await
                };
                let dot = result
                    .unwrap_or_else(|e| panic!("seed {seed} op {op}: {e}"))
                    .dot;
                if let Some(earlier) = dots.insert((key.clone(), dot), op) {
                    panic!(
                        "seed {seed}: dot {dot} of {key:?} issued at op {earlier} and again at op {op}"
                    );
                }
                written += 1;
            }
        }
    }
    c.converge(seed).await;
    c.assert_agree(&keys, &format!("seed {seed}"));
    (written, collected)
}

#[tokio::test(start_paused = true)]
async fn a_cluster_never_issues_a_dot_twice_through_wipes_restores_and_collections() {
    let (mut written, mut collected) = (0, 0);
    for seed in 1..=6 {
        let (w, r) = cluster_run(seed, 400).await;
        written += w;
        collected += r;
    }
    println!("dots: {written} writes, each with its own dot; {collected} tombstones collected");
    assert!(collected > 0, "collections ran, so the test covers them");
}
