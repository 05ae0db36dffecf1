//! Which ranges change replicas between two rings.

use kv_core::{NodeId, Token, TokenRange};

use crate::error::{Result, RingError};
use crate::ring::ConsistentHashRing;

/// A range whose replica set differs between two rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMove {
    /// The tokens concerned.
    pub range: TokenRange,
    /// Its replicas before, in preference order.
    pub from: Vec<NodeId>,
    /// Its replicas after, in preference order.
    pub to: Vec<NodeId>,
}

impl RangeMove {
    /// Nodes that must receive the range (replicas after, not before).
    pub fn gained(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.to.iter().copied().filter(|n| !self.from.contains(n))
    }

    /// Nodes that may drop the range once it is streamed (replicas before,
    /// not after).
    pub fn lost(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.from.iter().copied().filter(|n| !self.to.contains(n))
    }
}

/// The ranges whose set of `n` replicas differs between two rings, for
/// streaming data when a node joins or leaves. A change of preference order
/// alone (same nodes) moves no data and is not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingDiff {
    moves: Vec<RangeMove>,
}

impl RingDiff {
    /// Compares `before` and `after` for replication factor `n`. Both rings
    /// must have at least one node (with no node before, there is no data
    /// to move; with none after, nowhere to move it).
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroReplicas`] if `n` is zero.
    pub fn between(
        before: &ConsistentHashRing,
        after: &ConsistentHashRing,
        n: usize,
    ) -> Result<Self> {
        if before.tokens.is_empty() || after.tokens.is_empty() {
            return Err(RingError::Empty);
        }
        if n == 0 {
            return Err(RingError::ZeroReplicas);
        }
        let mut bounds: Vec<u64> = before.tokens.iter().chain(&after.tokens).copied().collect();
        bounds.sort_unstable();
        bounds.dedup();
        let (mut old, mut new) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut moves: Vec<RangeMove> = Vec::new();
        for (i, &end) in bounds.iter().enumerate() {
            let start = if i == 0 {
                bounds[bounds.len() - 1]
            } else {
                bounds[i - 1]
            };
            before.walk(before.vnode_of(end), n, &mut old);
            after.walk(after.vnode_of(end), n, &mut new);
            let mut old_set = old
                .iter()
                .map(|&m| before.members[m as usize].spec.id)
                .collect::<Vec<_>>();
            let mut new_set = new
                .iter()
                .map(|&m| after.members[m as usize].spec.id)
                .collect::<Vec<_>>();
            let from = old_set.clone();
            let to = new_set.clone();
            old_set.sort_unstable();
            new_set.sort_unstable();
            if old_set == new_set {
                continue;
            }
            let range = if bounds.len() == 1 {
                TokenRange::full(Token(end))
            } else {
                TokenRange::new(Token(start), Token(end))
            };
            match moves.last_mut() {
                Some(last) if last.range.end.0 == start && last.from == from && last.to == to => {
                    last.range.end = Token(end);
                }
                _ => moves.push(RangeMove { range, from, to }),
            }
        }
        // The first and last moves may be one range across the top.
        if moves.len() > 1 {
            let (first, last) = (&moves[0], &moves[moves.len() - 1]);
            if first.range.start == last.range.end && first.from == last.from && first.to == last.to
            {
                let start = last.range.start;
                moves[0].range.start = start;
                moves.pop();
            }
        }
        Ok(RingDiff { moves })
    }

    /// The changed ranges, in ring order.
    pub fn moves(&self) -> &[RangeMove] {
        &self.moves
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// The share of the ring whose replica set changes.
    pub fn moved_fraction(&self) -> f64 {
        self.moves.iter().map(|m| m.range.fraction()).sum()
    }

    /// The share of the ring that `node` receives.
    pub fn gained_fraction(&self, node: NodeId) -> f64 {
        self.moves
            .iter()
            .filter(|m| m.gained().any(|g| g == node))
            .map(|m| m.range.fraction())
            .sum()
    }
}
