//! Errors of this crate.

use kv_core::{NodeId, PartitionerError};

/// Why a ring could not be built or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The ring has no nodes.
    #[error("the ring is empty: no node owns any token")]
    Empty,
    /// A node was added twice.
    #[error("node {0} is already in the ring")]
    DuplicateNode(NodeId),
    /// A node to remove or look up is not in the ring.
    #[error("node {0} is not in the ring")]
    UnknownNode(NodeId),
    /// A weight of zero gives a node no virtual nodes.
    #[error("node {0} has weight 0; weights must be at least 1")]
    ZeroWeight(NodeId),
    /// Zero virtual nodes per node.
    #[error("vnodes per node must be at least 1, got 0")]
    ZeroVnodes,
    /// Two nodes claim the same token.
    #[error("token {token:#x} is claimed by both {first} and {second}")]
    TokenCollision {
        /// The contested token.
        token: u64,
        /// One claimant.
        first: NodeId,
        /// The other claimant.
        second: NodeId,
    },
    /// A replication factor of zero.
    #[error("replication factor must be at least 1, got 0")]
    ZeroReplicas,
}

impl From<RingError> for PartitionerError {
    fn from(err: RingError) -> Self {
        match err {
            RingError::ZeroReplicas => PartitionerError::ZeroReplicas,
            _ => PartitionerError::EmptyRing,
        }
    }
}

/// `Result` with this crate's [`RingError`].
pub type Result<T, E = RingError> = std::result::Result<T, E>;
