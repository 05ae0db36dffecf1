//! Owned and replicated ranges agree with the preference lists.

use kv_core::{NodeId, Partitioner, Token, TokenRange};

use crate::ring;

fn width(ranges: &[TokenRange]) -> u128 {
    ranges.iter().map(TokenRange::width).sum()
}

#[test]
fn primary_ranges_partition_the_ring() {
    let r = ring(7, 16);
    let mut total = 0u128;
    for id in r.nodes() {
        let ranges = r.primary_ranges(id);
        total += width(&ranges);
        // Sorted, non-overlapping.
        for pair in ranges.windows(2) {
            assert!(pair[0].end < pair[1].end);
        }
    }
    assert_eq!(total, 1u128 << 64);
}

#[test]
fn replica_ranges_match_preference_lists() {
    let r = ring(6, 16);
    let n = 3;
    let by_node: Vec<(NodeId, Vec<TokenRange>)> = r
        .nodes()
        .into_iter()
        .map(|id| (id, r.replica_ranges(id, n).unwrap()))
        .collect();
    let total: u128 = by_node.iter().map(|(_, rs)| width(rs)).sum();
    assert_eq!(total, 3 * (1u128 << 64));
    // Probe tokens, including every vnode boundary and its neighbours.
    let mut probes: Vec<u64> = r
        .token_owners()
        .flat_map(|(t, _)| [t.0.wrapping_sub(1), t.0, t.0.wrapping_add(1)])
        .collect();
    probes.extend((0..200u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    for p in probes {
        let list = r.preference_list_for_token(Token(p), n).unwrap();
        for (id, ranges) in &by_node {
            let inside = ranges.iter().any(|range| range.contains(Token(p)));
            assert_eq!(inside, list.contains(id), "token {p:#x} node {id}");
        }
    }
}

#[test]
fn single_node_owns_the_whole_ring() {
    let r = ring(1, 4);
    let ranges = r.primary_ranges(NodeId(1));
    assert_eq!(ranges.len(), 1);
    assert!(ranges[0].is_full());
    assert_eq!(r.replica_ranges(NodeId(1), 3).unwrap(), ranges);
    assert!(r.primary_ranges(NodeId(2)).is_empty());
}
