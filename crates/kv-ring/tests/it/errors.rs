//! Bad input gives errors, never panics or silent nonsense.

use kv_core::{NodeId, Partitioner, PartitionerError, Token};
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff, RingError, TokenStrategy};

use crate::ring;

#[test]
fn empty_ring_is_an_error() {
    let empty = ConsistentHashRing::builder().build().unwrap();
    assert!(empty.is_empty());
    assert_eq!(
        empty.preference_list(b"k", 3),
        Err(PartitionerError::EmptyRing)
    );
    assert_eq!(empty.nodes_for_token(Token(1), 1), Err(RingError::Empty));
    assert!(empty.primary_ranges(NodeId(1)).is_empty());
    let one = ring(1, 8);
    assert_eq!(RingDiff::between(&empty, &one, 1), Err(RingError::Empty));
}

#[test]
fn zero_replicas_is_an_error() {
    let r = ring(3, 8);
    assert_eq!(
        r.preference_list(b"k", 0),
        Err(PartitionerError::ZeroReplicas)
    );
    assert_eq!(r.replica_ranges(NodeId(1), 0), Err(RingError::ZeroReplicas));
    assert_eq!(r.replicated_ownership(0), Err(RingError::ZeroReplicas));
}

#[test]
fn more_replicas_than_nodes_gives_every_node_once() {
    let r = ring(2, 8);
    let list = r.preference_list(b"k", 5).unwrap();
    assert_eq!(list.len(), 2);
    assert_ne!(list[0], list[1]);
}

#[test]
fn bad_membership_changes_are_refused() {
    let r = ring(3, 8);
    assert_eq!(
        r.with_node(NodeId(2).into()),
        Err(RingError::DuplicateNode(NodeId(2)))
    );
    assert_eq!(
        r.with_node(NodeSpec::new(NodeId(9)).weight(0)),
        Err(RingError::ZeroWeight(NodeId(9)))
    );
    assert_eq!(
        r.without_node(NodeId(9)),
        Err(RingError::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        r.with_replacement(NodeId(9), NodeId(10).into()),
        Err(RingError::UnknownNode(NodeId(9)))
    );
    assert_eq!(
        r.with_replacement(NodeId(1), NodeId(2).into()),
        Err(RingError::DuplicateNode(NodeId(2)))
    );
    assert_eq!(
        r.with_replacement(NodeId(1), NodeSpec::new(NodeId(9)).weight(0)),
        Err(RingError::ZeroWeight(NodeId(9)))
    );
    assert_eq!(
        ConsistentHashRing::builder().vnodes(0).build(),
        Err(RingError::ZeroVnodes)
    );
    let clash = ConsistentHashRing::from_tokens(
        8,
        TokenStrategy::Balanced,
        [
            (NodeSpec::new(NodeId(1)), vec![Token(5), Token(9)]),
            (NodeSpec::new(NodeId(2)), vec![Token(9)]),
        ],
    );
    assert_eq!(
        clash,
        Err(RingError::TokenCollision {
            token: 9,
            first: NodeId(1),
            second: NodeId(2)
        })
    );
}

#[test]
fn last_node_leaving_empties_the_ring() {
    let r = ring(1, 8);
    let gone = r.without_node(NodeId(1)).unwrap();
    assert!(gone.is_empty());
    assert_eq!(
        gone.preference_list(b"k", 1),
        Err(PartitionerError::EmptyRing)
    );
    // And it can be joined again.
    let back = gone.with_node(NodeId(2).into()).unwrap();
    assert_eq!(back.preference_list(b"k", 1).unwrap(), vec![NodeId(2)]);
}
