//! The storage-engine conformance suite.
//!
//! Each function takes a fresh, empty engine and panics (with a message)
//! where the engine falls short of the [`StorageEngine`] contract. Use them
//! through [`engine_conformance!`](crate::engine_conformance), which makes
//! one test per case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use kv_core::{StorageEngine, WriteBatch};

fn collect<E: StorageEngine + ?Sized>(
    engine: &E,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .scan(start, end)
        .expect("scan starts")
        .map(|r| r.expect("scan item"))
        .collect()
}

/// Put, overwrite, get, delete, delete of an absent key.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn put_get_delete<E: StorageEngine + ?Sized>(engine: &E) {
    assert_eq!(engine.get(b"a").unwrap(), None, "a fresh engine is empty");
    engine.put(b"a", b"1").unwrap();
    assert_eq!(engine.get(b"a").unwrap(), Some(b"1".to_vec()));
    engine.put(b"a", b"2").unwrap();
    assert_eq!(
        engine.get(b"a").unwrap(),
        Some(b"2".to_vec()),
        "overwrite wins"
    );
    engine.delete(b"a").unwrap();
    assert_eq!(engine.get(b"a").unwrap(), None, "deleted");
    engine.delete(b"never-written").unwrap();
    engine.put(b"a", b"3").unwrap();
    assert_eq!(
        engine.get(b"a").unwrap(),
        Some(b"3".to_vec()),
        "a key lives again after delete"
    );
}

/// An empty value is a value, not an absence; keys are raw bytes ordered
/// bytewise (0x00 and 0xff included).
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn empty_values_and_binary_keys<E: StorageEngine + ?Sized>(engine: &E) {
    engine.put(b"empty", b"").unwrap();
    assert_eq!(engine.get(b"empty").unwrap(), Some(Vec::new()));
    let keys: [&[u8]; 5] = [b"\x00", b"\x00\x00", b"\x01", b"\x7f\xff", b"\xff\xff\xff"];
    for (i, key) in keys.iter().enumerate() {
        engine.put(key, &[i as u8]).unwrap();
    }
    let got: Vec<Vec<u8>> = collect(engine, Bound::Unbounded, Bound::Unbounded)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != b"empty")
        .collect();
    let want: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    assert_eq!(got, want, "bytewise order");
}

/// A batch's operations all apply, later ones on a key winning.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn batch_is_atomic_and_last_op_wins<E: StorageEngine + ?Sized>(engine: &E) {
    engine.put(b"gone", b"x").unwrap();
    let mut batch = WriteBatch::new();
    batch
        .put(b"k", b"first")
        .put(b"k", b"second")
        .delete(b"gone")
        .put(b"other", b"o")
        .delete(b"other")
        .put(b"other", b"back");
    engine.write(batch).unwrap();
    assert_eq!(engine.get(b"k").unwrap(), Some(b"second".to_vec()));
    assert_eq!(engine.get(b"gone").unwrap(), None);
    assert_eq!(engine.get(b"other").unwrap(), Some(b"back".to_vec()));
    // An empty batch is accepted and changes nothing.
    engine.write(WriteBatch::new()).unwrap();
    assert_eq!(collect(engine, Bound::Unbounded, Bound::Unbounded).len(), 2);
}

/// Scans honour every kind of bound, return ascending keys, hide deletes.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn scan_respects_bounds_and_order<E: StorageEngine + ?Sized>(engine: &E) {
    for i in 0..20u8 {
        engine.put(&[b'k', i], &[i]).unwrap();
    }
    engine.delete(&[b'k', 5]).unwrap();
    let keys = |s: Bound<&[u8]>, e: Bound<&[u8]>| -> Vec<u8> {
        collect(engine, s, e)
            .into_iter()
            .map(|(k, _)| k[1])
            .collect()
    };
    let all: Vec<u8> = (0..20).filter(|&i| i != 5).collect();
    assert_eq!(keys(Bound::Unbounded, Bound::Unbounded), all);
    assert_eq!(
        keys(Bound::Included(b"k\x03"), Bound::Excluded(b"k\x07")),
        [3, 4, 6]
    );
    assert_eq!(
        keys(Bound::Excluded(b"k\x03"), Bound::Included(b"k\x07")),
        [4, 6, 7]
    );
    assert_eq!(keys(Bound::Included(b"k\x12"), Bound::Unbounded), [18, 19]);
    assert_eq!(keys(Bound::Unbounded, Bound::Excluded(b"k\x02")), [0, 1]);
    assert!(keys(Bound::Included(b"k\x09"), Bound::Excluded(b"k\x09")).is_empty());
    assert!(
        keys(Bound::Included(b"k\x09"), Bound::Excluded(b"k\x03")).is_empty(),
        "inverted range"
    );
    assert_eq!(
        keys(Bound::Included(b"k\x09"), Bound::Included(b"k\x09")),
        [9]
    );
    for (k, v) in collect(engine, Bound::Unbounded, Bound::Unbounded) {
        assert_eq!(v, [k[1]], "values follow their keys");
    }
}

/// A scan sees the engine as it was when the scan began.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn scan_is_a_point_in_time_view<E: StorageEngine + ?Sized>(engine: &E) {
    for i in 0..100u32 {
        engine.put(&i.to_be_bytes(), b"old").unwrap();
    }
    let mut iter = engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
    let first = iter.next().unwrap().unwrap();
    for i in 0..100u32 {
        engine.put(&i.to_be_bytes(), b"new").unwrap();
    }
    for i in 100..200u32 {
        engine.put(&i.to_be_bytes(), b"new").unwrap();
    }
    engine.delete(&50u32.to_be_bytes()).unwrap();
    let rest: Vec<_> = iter.map(|r| r.unwrap()).collect();
    assert_eq!(first.1, b"old");
    assert_eq!(rest.len(), 99, "no key added or removed mid-scan");
    assert!(
        rest.iter().all(|(_, v)| v == b"old"),
        "no value changed mid-scan"
    );
}

/// Every write advances the sequence number.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn sequence_numbers_advance<E: StorageEngine + ?Sized>(engine: &E) {
    let s0 = engine.last_sequence();
    engine.put(b"a", b"1").unwrap();
    let s1 = engine.last_sequence();
    assert!(s1 > s0);
    let mut batch = WriteBatch::new();
    batch.put(b"b", b"2").delete(b"a");
    engine.write(batch).unwrap();
    let s2 = engine.last_sequence();
    assert!(s2 > s1);
    assert_eq!(engine.get(b"a").unwrap(), None);
    // Reads do not advance it.
    let _ = engine.get(b"b").unwrap();
    assert_eq!(engine.last_sequence(), s2);
}

/// A deferred write is seen by `get_latest` as soon as `write_deferred`
/// returns (a read-modify-write builds on it), by `get` once its `Durable`
/// resolves, the latest of several deferred writes of a key winning.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn deferred_writes_are_seen_by_get_latest_at_once_and_by_get_once_durable<
    E: StorageEngine + ?Sized,
>(
    engine: &E,
) {
    let mut pending = Vec::new();
    for round in 0..3u8 {
        let mut batch = WriteBatch::new();
        batch.put(b"k", [round]).put([b'x', round], b"v");
        pending.push(engine.write_deferred(batch).unwrap());
        assert_eq!(
            engine.get_latest(b"k").unwrap(),
            Some(vec![round]),
            "get_latest misses a deferred write"
        );
    }
    for durable in pending {
        durable.wait().unwrap();
    }
    assert_eq!(engine.get(b"k").unwrap(), Some(vec![2]));
    for round in 0..3u8 {
        assert_eq!(engine.get(&[b'x', round]).unwrap(), Some(b"v".to_vec()));
    }
}

/// A flush changes nothing a reader can see.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn flush_keeps_everything<E: StorageEngine + ?Sized>(engine: &E) {
    for i in 0..500u32 {
        engine.put(&i.to_be_bytes(), &i.to_le_bytes()).unwrap();
    }
    for i in (0..500u32).step_by(3) {
        engine.delete(&i.to_be_bytes()).unwrap();
    }
    let before = collect(engine, Bound::Unbounded, Bound::Unbounded);
    engine.flush().unwrap();
    engine.put(b"after", b"flush").unwrap();
    engine.flush().unwrap();
    let mut after = collect(engine, Bound::Unbounded, Bound::Unbounded);
    assert_eq!(after.pop(), Some((b"after".to_vec(), b"flush".to_vec())));
    assert_eq!(before, after);
    assert_eq!(engine.get(&3u32.to_be_bytes()).unwrap(), None);
    assert_eq!(
        engine.get(&4u32.to_be_bytes()).unwrap(),
        Some(4u32.to_le_bytes().to_vec())
    );
}

/// Thousands of random puts, deletes and batches agree with a `BTreeMap`.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn matches_a_model_over_many_keys<E: StorageEngine + ?Sized>(engine: &E) {
    let mut rng = crate::Rng::new(7);
    let mut model = BTreeMap::new();
    for round in 0..5_000u32 {
        let key = (rng.next() % 1_000).to_be_bytes().to_vec();
        match rng.next() % 10 {
            0..=5 => {
                let value = vec![(rng.next() % 251) as u8; (rng.next() % 64) as usize];
                engine.put(&key, &value).unwrap();
                model.insert(key, value);
            }
            6 | 7 => {
                engine.delete(&key).unwrap();
                model.remove(&key);
            }
            8 => {
                let mut batch = WriteBatch::new();
                for _ in 0..(rng.next() % 8) {
                    let k = (rng.next() % 1_000).to_be_bytes().to_vec();
                    if rng.next().is_multiple_of(3) {
                        batch.delete(k.clone());
                        model.remove(&k);
                    } else {
                        let v = round.to_le_bytes().to_vec();
                        batch.put(k.clone(), v.clone());
                        model.insert(k, v);
                    }
                }
                engine.write(batch).unwrap();
            }
            _ => assert_eq!(
                engine.get(&key).unwrap(),
                model.get(&key).cloned(),
                "get at round {round}"
            ),
        }
    }
    let all = collect(engine, Bound::Unbounded, Bound::Unbounded);
    let want: Vec<_> = model.into_iter().collect();
    assert_eq!(all, want);
}

/// Writers on several threads: every acknowledged write is readable.
///
/// # Panics
///
/// Where the engine falls short of the [`StorageEngine`] contract, with a
/// message naming what it got wrong: these are test cases.
pub fn concurrent_writers_lose_nothing<E: StorageEngine + ?Sized>(engine: &E) {
    let threads = 4u32;
    let per_thread = 500u32;
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in 0..per_thread {
                    let key = [t.to_be_bytes(), i.to_be_bytes()].concat();
                    engine.put(&key, &i.to_le_bytes()).unwrap();
                }
            });
        }
    });
    let all = collect(engine, Bound::Unbounded, Bound::Unbounded);
    assert_eq!(all.len(), (threads * per_thread) as usize);
    let shared = Arc::new(all);
    for (key, value) in shared.iter() {
        assert_eq!(
            &value[..],
            &key[4..8].iter().rev().copied().collect::<Vec<_>>()[..]
        );
    }
}
