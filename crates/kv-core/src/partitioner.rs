//! The partitioner port: from a key to the nodes that replicate it.

use crate::{NodeId, Token, TokenRange};

/// Why a partitioner could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionerError {
    /// The ring has no nodes, so no key has a home.
    #[error("the ring is empty: no node owns any token")]
    EmptyRing,
    /// A replication factor of zero was asked for.
    #[error("replication factor must be at least 1, got 0")]
    ZeroReplicas,
}

/// Maps keys to tokens and tokens to the ordered list of nodes that hold
/// them (the preference list).
///
/// Implementations must be deterministic: two instances built from the same
/// membership answer every question identically, in every process and every
/// version of the software, because nodes never coordinate to agree on where
/// a key lives.
pub trait Partitioner {
    /// The ring position of `key`.
    fn token(&self, key: &[u8]) -> Token;

    /// The first `n` distinct physical nodes clockwise from `token`,
    /// spreading across zones when zones are known.
    ///
    /// When `n` exceeds the number of nodes, every node is returned (so the
    /// list is shorter than `n`); callers that need `n` replicas check the
    /// length. Asking for all nodes gives the full fallback order used by
    /// sloppy quorums.
    ///
    /// # Errors
    ///
    /// [`PartitionerError`] if the ring is empty or `n` is zero.
    fn preference_list_for_token(
        &self,
        token: Token,
        n: usize,
    ) -> Result<Vec<NodeId>, PartitionerError>;

    /// The preference list of `key`: `preference_list_for_token(token(key), n)`.
    ///
    /// # Errors
    ///
    /// [`PartitionerError`] if the ring is empty or `n` is zero.
    fn preference_list(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, PartitionerError> {
        self.preference_list_for_token(self.token(key), n)
    }

    /// The ranges for which `node` is one of the `n` replicas, in ring order,
    /// adjacent ranges merged. Empty if the node is not in the ring.
    ///
    /// # Errors
    ///
    /// [`PartitionerError`] if `n` is zero.
    fn replicated_ranges(
        &self,
        node: NodeId,
        n: usize,
    ) -> Result<Vec<TokenRange>, PartitionerError>;

    /// Every physical node in the ring, in ascending id order.
    fn nodes(&self) -> Vec<NodeId>;
}
