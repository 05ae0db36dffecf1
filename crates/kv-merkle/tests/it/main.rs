//! Integration tests of kv-merkle.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::collections::BTreeMap;

use kv_merkle::{MerkleTree, Message, exchange_in_memory};
use proptest::prelude::*;

fn build(entries: &BTreeMap<u32, u64>, leaves: u32) -> MerkleTree {
    let mut t = MerkleTree::new(leaves).unwrap();
    for (k, d) in entries {
        t.insert(&k.to_be_bytes(), *d);
    }
    t
}

#[derive(Debug, Clone)]
enum Op {
    Put(u32, u64),
    Remove(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..500, 1u64..5).prop_map(|(k, d)| Op::Put(k, d)),
        1 => (0u32..500).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn contents_decide_the_root_not_the_order(entries in prop::collection::btree_map(0u32..10_000, 0u64..100, 0..300), seed in any::<u64>()) {
        let forward = build(&entries, 256);
        let mut shuffled: Vec<_> = entries.iter().collect();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut backward = MerkleTree::new(256).unwrap();
        for (k, d) in shuffled {
            backward.insert(&k.to_be_bytes(), *d);
        }
        prop_assert_eq!(&forward, &backward);
        prop_assert_eq!(forward.root(), backward.root());
    }

    #[test]
    fn incremental_updates_equal_a_rebuild(ops in prop::collection::vec(op(), 0..400), leaves_log in 0u32..10) {
        let leaves = 1 << leaves_log;
        let mut model: BTreeMap<u32, u64> = BTreeMap::new();
        let mut tree = MerkleTree::new(leaves).unwrap();
        for op in ops {
            match op {
                Op::Put(k, d) => match model.insert(k, d) {
                    Some(old) => tree.update(&k.to_be_bytes(), old, d),
                    None => tree.insert(&k.to_be_bytes(), d),
                },
                Op::Remove(k) => {
                    if let Some(old) = model.remove(&k) {
                        tree.remove(&k.to_be_bytes(), old);
                    }
                }
            }
        }
        let rebuilt = build(&model, leaves);
        prop_assert_eq!(tree.root(), rebuilt.root());
        prop_assert_eq!(tree.diff_leaves(&rebuilt).unwrap(), Vec::<u32>::new());
        prop_assert_eq!(tree.len(), model.len() as u64);
    }

    #[test]
    fn the_exchange_finds_exactly_the_differing_buckets(
        base in prop::collection::btree_map(0u32..5_000, 0u64..4, 0..500),
        changes in prop::collection::vec((0u32..5_000, prop::option::of(0u64..4)), 0..40),
        leaves_log in 0u32..12,
        fanout in 1usize..300,
    ) {
        let leaves = 1 << leaves_log;
        let mut other = base.clone();
        for (k, d) in changes {
            match d {
                Some(d) => { other.insert(k, d); }
                None => { other.remove(&k); }
            }
        }
        let (ours, theirs) = (build(&base, leaves), build(&other, leaves));
        let (found, _) = exchange_in_memory(&ours, &theirs, fanout).unwrap();
        prop_assert_eq!(&found, &ours.diff_leaves(&theirs).unwrap());
        // Every differing key's bucket is found.
        for k in base.keys().chain(other.keys()) {
            if base.get(k) != other.get(k) {
                prop_assert!(found.contains(&ours.bucket(&k.to_be_bytes())));
            }
        }
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = Message::decode(&bytes);
    }
}

/// Two trees of `keys` keys, `differing` of which have another version.
fn pair(keys: u32, differing: u32) -> (MerkleTree, MerkleTree) {
    let mut a = MerkleTree::new(kv_merkle::DEFAULT_LEAVES).unwrap();
    let mut b = MerkleTree::new(kv_merkle::DEFAULT_LEAVES).unwrap();
    let stride = keys / differing.max(1);
    for k in 0..keys {
        a.insert(&k.to_be_bytes(), 1);
        let differs = differing > 0 && k % stride == 0 && k / stride < differing;
        b.insert(&k.to_be_bytes(), if differs { 2 } else { 1 });
    }
    (a, b)
}

#[test]
fn bytes_grow_with_differences_not_with_keys() {
    let (small_a, small_b) = pair(1_000, 10);
    let (big_a, big_b) = pair(200_000, 10);
    let (found_small, bytes_small) = exchange_in_memory(&small_a, &small_b, 256).unwrap();
    let (found_big, bytes_big) = exchange_in_memory(&big_a, &big_b, 256).unwrap();
    assert_eq!(found_small.len(), 10);
    assert_eq!(found_big.len(), 10);
    // Same differences, 200 times the keys: about the same traffic.
    let ratio = bytes_big as f64 / bytes_small as f64;
    assert!(
        (0.8..1.25).contains(&ratio),
        "{bytes_small} vs {bytes_big} bytes"
    );
    // A hundred times the differences: much more traffic.
    let (more_a, more_b) = pair(200_000, 1_000);
    let (found_more, bytes_more) = exchange_in_memory(&more_a, &more_b, 256).unwrap();
    assert!(found_more.len() > 900, "{} buckets", found_more.len());
    assert!(bytes_more > 20 * bytes_big, "{bytes_more} vs {bytes_big}");
    // Equal trees: one round, a root.
    let (found_none, bytes_none) = exchange_in_memory(&big_a, &big_a, 256).unwrap();
    assert!(found_none.is_empty());
    assert!(bytes_none < 40, "{bytes_none} bytes for equal trees");
}

#[test]
fn bytes_exchanged_for_a_million_keys_with_ten_thousand_differing() {
    let (a, b) = pair(1_000_000, 10_000);
    let (found, bytes) = exchange_in_memory(&a, &b, 1024).unwrap();
    let direct = a.diff_leaves(&b).unwrap();
    assert_eq!(found, direct);
    println!(
        "merkle exchange: 1000000 keys, 10000 differing, {} buckets differ, {bytes} bytes exchanged ({:.1} per differing key)",
        found.len(),
        bytes as f64 / 10_000.0
    );
    // Far below sending every key's digest (1M x 8 bytes).
    assert!(bytes < 1_000_000);
}
