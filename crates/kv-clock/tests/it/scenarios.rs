//! The scenarios of the design: what clients see through coordinators.

use kv_clock::{DvvSet, VectorClock};
use kv_core::NodeId;

const COORD: NodeId = NodeId(1);
const OTHER: NodeId = NodeId(2);

fn sorted(s: &DvvSet<&'static str>) -> Vec<&'static str> {
    let mut v: Vec<_> = s.values().copied().collect();
    v.sort_unstable();
    v
}

#[test]
fn two_clients_same_context_same_coordinator_make_two_siblings() {
    let mut key = DvvSet::new();
    key.update(&VectorClock::new(), COORD, "v0", 0).unwrap();
    let read = key.context().clone();
    // Both clients read v0 and write through the same coordinator.
    key.update(&read, COORD, "alice", 1).unwrap();
    key.update(&read, COORD, "bob", 2).unwrap();
    assert_eq!(sorted(&key), ["alice", "bob"]);

    // The naive scheme (increment the client's context) gives both writes
    // the same clock: one of them would vanish. Show the dots differ.
    let dots: Vec<_> = key.siblings().iter().map(|s| s.dot).collect();
    assert_ne!(dots[0], dots[1]);

    // A client that read both resolves them with the merged context.
    let merged = key.context().clone();
    key.update(&merged, COORD, "alice+bob", 3).unwrap();
    assert_eq!(sorted(&key), ["alice+bob"]);
}

#[test]
fn resolution_replicates_and_drops_siblings_everywhere() {
    let mut r1 = DvvSet::new();
    let mut r2 = DvvSet::new();
    r1.update(&VectorClock::new(), COORD, "x", 0).unwrap();
    r2.update(&VectorClock::new(), OTHER, "y", 0).unwrap();
    r1.sync(&r2);
    r2.sync(&r1);
    assert_eq!(sorted(&r1), ["x", "y"]);
    let ctx = r2.context().clone();
    r2.update(&ctx, OTHER, "z", 1).unwrap();
    // r1 has not seen z yet: a read merging both replicas shows only z.
    assert_eq!(sorted(&r1.synced(&r2)), ["z"]);
    r1.sync(&r2);
    assert_eq!(r1, r2);
}

#[test]
fn sibling_count_follows_concurrent_writers() {
    // k clients read the same state and each writes once: exactly k
    // siblings (plus nothing of the old value, which every context covers).
    for k in 1..8 {
        let mut key = DvvSet::new();
        key.update(&VectorClock::new(), COORD, "base", 0).unwrap();
        let read = key.context().clone();
        for _ in 0..k {
            key.update(&read, COORD, "w", 1).unwrap();
        }
        assert_eq!(key.len(), k);
        // Each client now reads and rewrites in turn (no concurrency): the
        // count falls to one and stays there.
        for _ in 0..k {
            let ctx = key.context().clone();
            key.update(&ctx, COORD, "serial", 2).unwrap();
            assert_eq!(key.len(), 1);
        }
    }
}

#[test]
fn stale_context_keeps_newer_writes() {
    // A client writes with a context that predates another client's write:
    // that newer write survives as a sibling.
    let mut key = DvvSet::new();
    key.update(&VectorClock::new(), COORD, "v1", 0).unwrap();
    let old = key.context().clone();
    let ctx = key.context().clone();
    key.update(&ctx, COORD, "v2", 1).unwrap();
    key.update(&old, COORD, "late", 2).unwrap();
    assert_eq!(sorted(&key), ["late", "v2"]);
}

#[test]
fn tombstones_are_versions() {
    let mut key: DvvSet<Option<Vec<u8>>> = DvvSet::new();
    key.update(&VectorClock::new(), COORD, Some(b"v".to_vec()), 0)
        .unwrap();
    let ctx = key.context().clone();
    key.update(&ctx, COORD, None, 1).unwrap();
    assert_eq!(key.values().collect::<Vec<_>>(), [&None]);
    // A replica that still has the value loses it on sync.
    let mut stale: DvvSet<Option<Vec<u8>>> = DvvSet::new();
    let mut first = DvvSet::new();
    first
        .update(&VectorClock::new(), COORD, Some(b"v".to_vec()), 0)
        .unwrap();
    stale.sync(&first);
    stale.sync(&key);
    assert_eq!(stale.values().collect::<Vec<_>>(), [&None]);
}
