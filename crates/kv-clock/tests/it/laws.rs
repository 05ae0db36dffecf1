//! Property tests: the algebra the replicas rely on.

use kv_clock::{Causality, DvvSet, VectorClock};
use kv_core::NodeId;
use proptest::prelude::*;

/// Clocks over a few actors, so that equal and comparable clocks are common.
fn clock() -> impl Strategy<Value = VectorClock> {
    prop::collection::vec((0u64..4, 0u64..4), 0..5)
        .prop_map(|pairs| pairs.into_iter().map(|(a, c)| (NodeId(a), c)).collect())
}

fn counters(c: &VectorClock) -> Vec<(kv_core::ActorId, u64)> {
    c.entries().iter().map(|e| (e.actor, e.counter)).collect()
}

proptest! {
    #[test]
    fn compare_is_a_partial_order(a in clock(), b in clock(), c in clock()) {
        // Reflexive.
        prop_assert_eq!(a.compare(&a), Causality::Equal);
        // Antisymmetric: each direction is the mirror of the other.
        let mirrored = match a.compare(&b) {
            Causality::Before => Causality::After,
            Causality::After => Causality::Before,
            other => other,
        };
        prop_assert_eq!(b.compare(&a), mirrored);
        if a.compare(&b) == Causality::Equal {
            prop_assert_eq!(counters(&a), counters(&b));
        }
        // Transitive.
        if a.descends(&b) && b.descends(&c) {
            prop_assert!(a.descends(&c));
        }
        // Compare agrees with the entry-wise definition.
        let le = |x: &VectorClock, y: &VectorClock| x.entries().iter().all(|e| y.get(e.actor) >= e.counter);
        prop_assert_eq!(a.descends(&b), le(&b, &a));
    }

    #[test]
    fn merge_is_the_least_upper_bound(a in clock(), b in clock(), c in clock()) {
        let ab = a.merged(&b);
        prop_assert_eq!(&ab, &b.merged(&a));
        prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        prop_assert_eq!(&a.merged(&a), &a);
        prop_assert!(ab.descends(&a) && ab.descends(&b));
        // Least: any upper bound of a and b descends from the merge.
        if c.descends(&a) && c.descends(&b) {
            prop_assert!(c.descends(&ab));
        }
    }

    #[test]
    fn increment_moves_strictly_forward(a in clock(), actor in 0u64..6) {
        let mut b = a.clone();
        let n = b.increment(NodeId(actor), 0).unwrap();
        prop_assert_eq!(n, a.get(NodeId(actor)) + 1);
        prop_assert_eq!(a.compare(&b), Causality::Before);
    }
}

/// A history of coordinator writes at a few replicas with partial syncs,
/// generating realistic reachable states.
#[derive(Debug, Clone)]
enum Op {
    /// Replica `at` coordinates a write of a fresh value, with the context
    /// that a client read from replica `read_from` (or none).
    Write { at: usize, read_from: Option<usize> },
    /// Replica `to` merges replica `from`'s state.
    Sync { from: usize, to: usize },
}

const REPLICAS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..REPLICAS, prop::option::of(0..REPLICAS))
            .prop_map(|(at, read_from)| Op::Write { at, read_from }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

/// Replays `ops`; returns the replicas and every value written, with the
/// context its client sent.
fn replay(ops: &[Op]) -> (Vec<DvvSet<u32>>, Vec<(u32, VectorClock)>) {
    let mut replicas = vec![DvvSet::new(); REPLICAS];
    let mut written = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Write { at, read_from } => {
                let ctx = read_from
                    .map(|r| replicas[r].context().clone())
                    .unwrap_or_default();
                let value = n as u32;
                replicas[at]
                    .update(&ctx, NodeId(at as u64), value, 0)
                    .unwrap();
                written.push((value, ctx));
            }
            Op::Sync { from, to } => {
                let src = replicas[from].clone();
                replicas[to].sync(&src);
            }
        }
    }
    (replicas, written)
}

fn values(s: &DvvSet<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = s.values().copied().collect();
    v.sort_unstable();
    v
}

proptest! {
    #[test]
    fn sync_is_commutative_associative_idempotent(ops in prop::collection::vec(op(), 0..40)) {
        let (r, _) = replay(&ops);
        let (a, b, c) = (&r[0], &r[1], &r[2]);
        prop_assert_eq!(a.synced(b), b.synced(a));
        prop_assert_eq!(a.synced(b).synced(c), a.synced(&b.synced(c)));
        prop_assert_eq!(&a.synced(a), a);
        prop_assert_eq!(a.synced(b).synced(b), a.synced(b));
    }

    #[test]
    fn no_version_disappears_unless_a_context_covers_it(ops in prop::collection::vec(op(), 0..60)) {
        let (replicas, written) = replay(&ops);
        // Merge everything: the cluster's converged state.
        let mut all = DvvSet::new();
        for r in &replicas {
            all.sync(r);
        }
        // Which values did a later write's context supersede? A value is
        // superseded iff some client context covers its dot.
        let mut dots = std::collections::HashMap::new();
        // Recover each value's dot by replaying once more.
        let mut states = vec![DvvSet::<u32>::new(); REPLICAS];
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { at, read_from } => {
                    let ctx = read_from.map(|r| states[r].context().clone()).unwrap_or_default();
                    let dot = states[at].update(&ctx, NodeId(at as u64), n as u32, 0).unwrap();
                    dots.insert(n as u32, dot);
                }
                Op::Sync { from, to } => {
                    let src = states[from].clone();
                    states[to].sync(&src);
                }
            }
        }
        // Only values that were synced somewhere count for the merged view;
        // every value lives at least on its coordinator, so all count.
        let surviving = values(&all);
        for (value, _) in &written {
            let dot = dots[value];
            let covered = written.iter().any(|(_, ctx)| ctx.covers(dot.actor, dot.counter));
            prop_assert_eq!(
                surviving.contains(value),
                !covered,
                "value {} (dot {}) covered={}", value, dot, covered
            );
        }
    }

    #[test]
    fn siblings_are_pairwise_concurrent_writes(ops in prop::collection::vec(op(), 0..60)) {
        // Surviving siblings are writes of which neither saw the other (no
        // write's context covers the other's dot): an antichain, so their
        // number never exceeds the number of truly concurrent writers.
        let mut states = vec![DvvSet::<u32>::new(); REPLICAS];
        let mut contexts = std::collections::HashMap::new();
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { at, read_from } => {
                    let ctx = read_from.map(|r| states[r].context().clone()).unwrap_or_default();
                    let dot = states[at].update(&ctx, NodeId(at as u64), n as u32, 0).unwrap();
                    contexts.insert(dot, ctx);
                }
                Op::Sync { from, to } => {
                    let src = states[from].clone();
                    states[to].sync(&src);
                }
            }
        }
        for state in &states {
            for a in state.siblings() {
                prop_assert!(state.context().covers(a.dot.actor, a.dot.counter));
                for b in state.siblings() {
                    if a.dot != b.dot {
                        prop_assert!(!contexts[&a.dot].covers(b.dot.actor, b.dot.counter),
                            "{} was written with a context covering {}", a.dot, b.dot);
                    }
                }
            }
        }
    }
}
