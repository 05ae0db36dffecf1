//! The balance and movement figures the design promises, at 150 vnodes.

use kv_core::NodeId;
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff, TokenStrategy};

use crate::ring;

fn check_balance(n: u64) {
    let r = ring(n, 150);
    let primary = r.balance();
    let replicated = r.replicated_balance(3).unwrap();
    assert!(primary <= 1.05, "{n} nodes: primary max/mean {primary:.3}");
    assert!(
        replicated <= 1.10,
        "{n} nodes: replicated max/mean {replicated:.3}"
    );

    let joined = r.with_node(NodeId(n + 1).into()).unwrap();
    let diff = RingDiff::between(&r, &joined, 1).unwrap();
    let ideal = 1.0 / (n as f64 + 1.0);
    let moved = diff.moved_fraction();
    assert!(
        moved <= 1.1 * ideal,
        "{n} nodes: join moved {moved:.4}, ideal {ideal:.4}"
    );
    assert!(
        moved >= 0.9 * ideal,
        "{n} nodes: join moved only {moved:.4}, ideal {ideal:.4}"
    );
    // Every moved range goes to the new node, from exactly one old owner.
    for m in diff.moves() {
        assert_eq!(m.to, vec![NodeId(n + 1)], "{m:?}");
    }
    assert!(joined.balance() <= 1.05);
}

#[test]
fn ten_nodes_are_balanced_and_a_join_moves_the_ideal_share() {
    check_balance(10);
}

#[test]
fn hundred_nodes_are_balanced_and_a_join_moves_the_ideal_share() {
    check_balance(100);
}

#[test]
fn balanced_beats_hashed_tokens() {
    let balanced = ring(30, 150);
    let hashed = ConsistentHashRing::builder()
        .strategy(TokenStrategy::Hashed)
        .nodes((1..=30).map(NodeId))
        .build()
        .unwrap();
    assert!(balanced.balance() < hashed.balance());
    assert!(
        hashed.balance() > 1.05,
        "hashed tokens are the unbalanced baseline"
    );
}

#[test]
fn weights_give_proportional_shares() {
    let r = ConsistentHashRing::builder()
        .vnodes(64)
        .node(NodeSpec::new(NodeId(1)))
        .node(NodeSpec::new(NodeId(2)).weight(2))
        .node(NodeSpec::new(NodeId(3)))
        .node(NodeSpec::new(NodeId(4)).weight(3))
        .build()
        .unwrap();
    let shares = r.ownership();
    let total_weight = 7.0;
    for spec in r.node_specs() {
        let expected = f64::from(spec.weight) / total_weight;
        let got = shares[&spec.id];
        assert!(
            (got / expected - 1.0).abs() < 0.05,
            "{}: {got:.4} vs {expected:.4}",
            spec.id
        );
        assert_eq!(r.tokens_of(spec.id).len(), 64 * spec.weight as usize);
    }
    assert!(r.balance() < 1.05);
}

#[test]
fn leave_hands_ranges_to_the_least_loaded_and_moves_only_the_leaver() {
    let r = ring(12, 150);
    let left = r.without_node(NodeId(5)).unwrap();
    assert_eq!(left.node_count(), 11);
    assert!(left.tokens_of(NodeId(5)).is_empty());
    assert!(left.balance() < 1.05, "after leave: {:.3}", left.balance());
    let diff = RingDiff::between(&r, &left, 1).unwrap();
    for m in diff.moves() {
        assert_eq!(m.from, vec![NodeId(5)]);
    }
    let moved = diff.moved_fraction();
    assert!((moved - 1.0 / 12.0).abs() < 0.01, "moved {moved:.4}");
}

#[test]
fn every_node_gets_its_vnodes() {
    let r = ring(20, 150);
    for id in 1..=20 {
        assert_eq!(r.tokens_of(NodeId(id)).len(), 150);
    }
    assert_eq!(r.token_count(), 3000);
}

#[test]
fn zoned_rings_are_balanced_too() {
    // Zone-aware placement balances primary shares (the replicated share
    // then depends on how many nodes each zone has).
    let r = ConsistentHashRing::builder()
        .nodes((1..=12).map(|i| NodeSpec::new(NodeId(i)).zone(format!("z{}", i % 3))))
        .build()
        .unwrap();
    assert!(
        r.balance() <= 1.05,
        "zoned primary max/mean {:.3}",
        r.balance()
    );
    // Equal zones of equal nodes: replicated shares are balanced as well.
    let replicated = r.replicated_balance(3).unwrap();
    assert!(
        replicated <= 1.10,
        "zoned replicated max/mean {replicated:.3}"
    );
    let joined = r.with_node(NodeSpec::new(NodeId(13)).zone("z1")).unwrap();
    assert!(joined.balance() <= 1.05);
}

#[test]
fn small_clusters_are_balanced() {
    for n in 3..=6 {
        let r = ring(n, 150);
        assert!(r.balance() <= 1.05, "{n} nodes: {:.3}", r.balance());
        let replicated = r.replicated_balance(3).unwrap();
        assert!(replicated <= 1.10, "{n} nodes: replicated {replicated:.3}");
    }
}
