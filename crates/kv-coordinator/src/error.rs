//! Errors of the coordinator.

use kv_core::{NodeId, PartitionerError, StorageError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed; nothing was written.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// Fewer replicas acknowledged than the write quorum needs. The write
    /// may still be present on those that did.
    #[error(
        "write quorum not reached: {acked} of {needed} acknowledgements (failed: {failed:?}, timed out: {timed_out:?})"
    )]
    WriteQuorum {
        /// Acknowledgements received (the coordinator's own included).
        acked: usize,
        /// W.
        needed: usize,
        /// Replicas that answered with an error or were unreachable.
        failed: Vec<NodeId>,
        /// Replicas that did not answer within the request timeout.
        timed_out: Vec<NodeId>,
    },
    /// Fewer replicas answered than the read quorum needs.
    #[error(
        "read quorum not reached: {answered} of {needed} answers (failed: {failed:?}, timed out: {timed_out:?})"
    )]
    ReadQuorum {
        /// Answers received.
        answered: usize,
        /// R.
        needed: usize,
        /// Replicas that failed.
        failed: Vec<NodeId>,
        /// Replicas that did not answer in time.
        timed_out: Vec<NodeId>,
    },
    /// This node does not replicate the key (the caller should forward to
    /// the first replica of its preference list).
    #[error("this node is not a replica of the key; its replicas are {0:?}")]
    NotReplica(Vec<NodeId>),
    /// The local engine failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The ring cannot place the key.
    #[error("placement: {0}")]
    Placement(#[from] PartitionerError),
    /// The key's coordinator, to which the request was forwarded, failed it.
    #[error("coordinator {node} failed the request: {message}")]
    Forwarded {
        /// The coordinator.
        node: NodeId,
        /// Whether the request itself was invalid.
        invalid: bool,
        /// Its error.
        message: String,
    },
    /// A peer failed during anti-entropy or hint delivery.
    #[error("peer: {0}")]
    Peer(String),
    /// A stored state failed to decode.
    #[error("stored state of a key is corrupt: {0}")]
    Corrupt(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
