//! Property tests: determinism, distinct replicas, minimal movement, zones.

use std::collections::BTreeSet;

use kv_core::{NodeId, Partitioner};
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff, TokenStrategy};
use proptest::prelude::*;

/// A membership history: distinct node ids in join order, with weights
/// and zones.
fn members() -> impl Strategy<Value = Vec<NodeSpec>> {
    prop::collection::btree_set(1u64..1000, 1..10).prop_flat_map(|ids| {
        let n = ids.len();
        (Just(ids), prop::collection::vec((1u32..3, 0u8..4), n)).prop_map(|(ids, attrs)| {
            ids.into_iter()
                .zip(attrs)
                .map(|(id, (weight, zone))| {
                    let spec = NodeSpec::new(NodeId(id)).weight(weight);
                    if zone == 0 {
                        spec
                    } else {
                        spec.zone(format!("z{zone}"))
                    }
                })
                .collect()
        })
    })
}

fn no_zones(specs: &[NodeSpec]) -> Vec<NodeSpec> {
    specs
        .iter()
        .map(|s| NodeSpec {
            zone: None,
            ..s.clone()
        })
        .collect()
}

fn build(specs: &[NodeSpec]) -> ConsistentHashRing {
    ConsistentHashRing::builder()
        .vnodes(24)
        .nodes(specs.iter().cloned())
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn same_history_same_ring(specs in members(), keys in prop::collection::vec(any::<Vec<u8>>(), 1..20)) {
        let a = build(&specs);
        let b = build(&specs);
        prop_assert_eq!(&a, &b);
        // A ring rebuilt from its tokens (as gossip would) answers the same.
        let assignments = a.node_specs().map(|s| (s.clone(), a.tokens_of(s.id)));
        let c = ConsistentHashRing::from_tokens(24, TokenStrategy::Balanced, assignments).unwrap();
        for key in &keys {
            for n in 1..4 {
                prop_assert_eq!(a.preference_list(key, n).unwrap(), c.preference_list(key, n).unwrap());
            }
        }
    }

    #[test]
    fn preference_lists_hold_distinct_nodes(specs in members(), key in any::<Vec<u8>>(), n in 1usize..6) {
        let r = build(&specs);
        let list = r.preference_list(&key, n).unwrap();
        prop_assert_eq!(list.len(), n.min(specs.len()));
        let unique: BTreeSet<_> = list.iter().collect();
        prop_assert_eq!(unique.len(), list.len());
        // The first replica owns the key's token.
        let token = r.token(&key);
        prop_assert!(r.primary_ranges(list[0]).iter().any(|range| range.contains(token)));
    }

    #[test]
    fn join_moves_data_only_to_the_new_node(specs in members(), new_id in 1000u64..2000, n in 1usize..4) {
        let specs = no_zones(&specs);
        let before = build(&specs);
        let after = before.with_node(NodeId(new_id).into()).unwrap();
        let diff = RingDiff::between(&before, &after, n).unwrap();
        for m in diff.moves() {
            // The new node is among the gainers, and it is the only one.
            let gained: Vec<_> = m.gained().collect();
            prop_assert_eq!(gained, vec![NodeId(new_id)], "{:?}", m);
        }
        // Nothing outside the diff changed.
        let primary = RingDiff::between(&before, &after, 1).unwrap();
        let share = after.ownership()[&NodeId(new_id)];
        prop_assert!((primary.moved_fraction() - share).abs() < 1e-9);
    }

    #[test]
    fn leave_moves_only_the_leavers_data(specs in members(), pick in any::<prop::sample::Index>(), n in 1usize..4) {
        prop_assume!(specs.len() >= 2);
        let specs = no_zones(&specs);
        let before = build(&specs);
        let gone = specs[pick.index(specs.len())].id;
        let after = before.without_node(gone).unwrap();
        let diff = RingDiff::between(&before, &after, n).unwrap();
        for m in diff.moves() {
            let lost: Vec<_> = m.lost().collect();
            prop_assert_eq!(lost, vec![gone], "{:?}", m);
        }
    }

    #[test]
    fn a_replacement_takes_exactly_the_replaced_nodes_place(specs in members(), pick in any::<prop::sample::Index>(), n in 1usize..4, keys in prop::collection::vec(any::<Vec<u8>>(), 1..20)) {
        let before = build(&specs);
        let old = specs[pick.index(specs.len())].clone();
        let new = NodeSpec { id: NodeId(5000), ..old.clone() };
        let after = before.with_replacement(old.id, new.clone()).unwrap();
        prop_assert_eq!(after.tokens_of(new.id), before.tokens_of(old.id));
        prop_assert!(after.node_spec(old.id).is_none());
        let swap = |id: NodeId| if id == old.id { new.id } else { id };
        for key in &keys {
            let was: Vec<NodeId> = before.preference_list(key, n).unwrap().into_iter().map(swap).collect();
            prop_assert_eq!(after.preference_list(key, n).unwrap(), was);
        }
        let diff = RingDiff::between(&before, &after, n).unwrap();
        for m in diff.moves() {
            prop_assert_eq!(m.lost().collect::<Vec<_>>(), vec![old.id]);
            prop_assert_eq!(m.gained().collect::<Vec<_>>(), vec![new.id]);
        }
    }

    #[test]
    fn replicas_spread_over_zones(specs in members(), key in any::<Vec<u8>>(), n in 1usize..5) {
        let r = build(&specs);
        let zone_of = |id: NodeId| r.node_spec(id).unwrap().zone.clone();
        let all_zones: BTreeSet<_> = specs.iter().map(|s| s.zone.clone()).collect();
        let list = r.preference_list(&key, n).unwrap();
        let zones: BTreeSet<_> = list.iter().map(|&id| zone_of(id)).collect();
        // As many distinct zones as the list can hold.
        prop_assert_eq!(zones.len(), list.len().min(all_zones.len()));
    }
}
