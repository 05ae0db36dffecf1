//! The engine against a `BTreeMap`, across flushes, compactions and reopens.

use std::collections::BTreeMap;
use std::ops::Bound;

use kv_core::{StorageEngine, WriteBatch};
use kv_lsm::LsmEngine;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u16, u8, usize),
    Delete(u16),
    Batch(Vec<(u16, Option<u8>)>),
    Get(u16),
    Scan(u16, u16),
    Flush,
    Compact,
    Reopen,
}

fn key(k: u16) -> Vec<u8> {
    format!("key{k:05}").into_bytes()
}

fn value(tag: u8, len: usize) -> Vec<u8> {
    vec![tag; len]
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u16..400;
    prop_oneof![
        30 => (k.clone(), any::<u8>(), 0usize..300).prop_map(|(k, t, l)| Op::Put(k, t, l)),
        10 => k.clone().prop_map(Op::Delete),
        6 => prop::collection::vec((k.clone(), prop::option::of(any::<u8>())), 1..8).prop_map(Op::Batch),
        15 => k.clone().prop_map(Op::Get),
        5 => (k.clone(), k).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    // The crash tests of this binary spawn child processes; between fork
    // and exec a child briefly holds a copy of every descriptor, the
    // engine's LOCK file included, so a reopen can meet `Locked` for a
    // moment. Retry that one error, a bounded number of times.
    let open = || {
        let mut attempts = 0;
        loop {
            match crate::small(dir.path()).open() {
                Err(kv_lsm::Error::Locked(_)) if attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other.unwrap(),
            }
        }
    };
    let mut engine: LsmEngine = open();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put(k, t, l) => {
                engine.put(&key(*k), &value(*t, *l)).unwrap();
                model.insert(key(*k), value(*t, *l));
            }
            Op::Delete(k) => {
                engine.delete(&key(*k)).unwrap();
                model.remove(&key(*k));
            }
            Op::Batch(items) => {
                let mut batch = WriteBatch::new();
                for (k, v) in items {
                    match v {
                        Some(t) => {
                            batch.put(key(*k), value(*t, 20));
                            model.insert(key(*k), value(*t, 20));
                        }
                        None => {
                            batch.delete(key(*k));
                            model.remove(&key(*k));
                        }
                    }
                }
                engine.write(batch).unwrap();
            }
            Op::Get(k) => {
                assert_eq!(
                    engine.get(&key(*k)).unwrap(),
                    model.get(&key(*k)).cloned(),
                    "op {i}: get {k}"
                );
            }
            Op::Scan(a, b) => {
                let (a, b) = (key(*a), key(*b));
                let got: Vec<_> = engine
                    .scan(Bound::Included(&a), Bound::Excluded(&b))
                    .unwrap()
                    .map(|r| r.unwrap())
                    .collect();
                let want: Vec<_> = model
                    .range(a..b)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "op {i}: scan");
            }
            Op::Flush => engine.flush().unwrap(),
            Op::Compact => engine.compact_all().unwrap(),
            Op::Reopen => {
                drop(engine);
                engine = open();
            }
        }
    }
    // Everything, at the end and after one more reopen.
    for round in 0..2 {
        let all: Vec<_> = engine
            .scan(Bound::Unbounded, Bound::Unbounded)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(all, want, "final scan, round {round}");
        drop(engine);
        engine = open();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn engine_matches_a_btreemap(ops in prop::collection::vec(op(), 1..400)) {
        run(&ops);
    }
}

/// Enough data that flushes and several levels of compaction happen.
#[test]
fn heavy_overwrite_and_delete_through_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crate::small(dir.path()).open().unwrap();
    let mut model = BTreeMap::new();
    let mut state = 1u64;
    for i in 0..30_000u32 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = key((state >> 40) as u16 % 3000);
        if state.is_multiple_of(5) {
            engine.delete(&k).unwrap();
            model.remove(&k);
        } else {
            let v = i.to_le_bytes().repeat(8);
            engine.put(&k, &v).unwrap();
            model.insert(k, v);
        }
    }
    engine.wait_for_compactions().unwrap();
    let stats = engine.stats();
    assert!(stats.flushes > 10, "{stats:?}");
    assert!(stats.compactions > 0, "{stats:?}");
    let all: Vec<_> = engine
        .scan(Bound::Unbounded, Bound::Unbounded)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(all, model.clone().into_iter().collect::<Vec<_>>());
    engine.compact_all().unwrap();
    let stats = engine.stats();
    let populated = stats.tables_per_level.iter().filter(|&&n| n > 0).count();
    assert_eq!(populated, 1, "compact_all leaves one level: {stats:?}");
    for (k, v) in &model {
        assert_eq!(engine.get(k).unwrap().as_ref(), Some(v));
    }
}
