//! Why a cluster operation (gossip, a ring change, range streaming) failed;
//! mapped to a gRPC status in one place, `crate::status`.

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The request is not valid: bytes that do not decode, a ring that
    /// does not hold together, no range given.
    #[error("{0}")]
    Invalid(String),
    /// A node spoke for another: the message names a node other than the
    /// one the connection's certificate names.
    #[error("{0}")]
    Impersonation(String),
    /// A join by a node that already owns ranges (nothing to do).
    #[error("node {node} already owns ranges (ring epoch {epoch})")]
    AlreadyMember {
        /// The node.
        node: kv_core::NodeId,
        /// The ring epoch in which it does.
        epoch: u64,
    },
    /// The change does not apply to this node as it is (it already owns
    /// ranges, owns none, or is the last node).
    #[error("{0}")]
    Precondition(String),
    /// Another ring change won meanwhile; the caller may retry.
    #[error("{0}")]
    Conflict(String),
    /// Nodes the operation needs did not answer or did not take their
    /// ranges.
    #[error("{0}")]
    Unavailable(String),
    /// A peer answered a call with this status.
    #[error("peer: {}", .0.message())]
    Peer(#[from] tonic::Status),
    /// This node's replica (its engine, a task) failed.
    #[error(transparent)]
    Replica(#[from] kv_coordinator::Error),
    /// This node failed otherwise (its ring file, a ring it computed).
    #[error("{0}")]
    Internal(String),
}

impl ClusterError {
    /// An internal failure, from anything that can say what it was.
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        ClusterError::Internal(e.to_string())
    }
}
