//! Errors of the coordinator.

use kv_core::{NodeId, PartitionerError, RemoteFailure, StorageError, TransportError};

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
    /// This node declines the work for now (it is busy with work that
    /// covers it); the same request may succeed later.
    #[error("busy: {0}")]
    Busy(String),
    /// A key listing could not hear from any replica of `range`: the page
    /// would miss its keys, so none is given.
    #[error(
        "key listing needs an answer from a replica of every range; no replica of range {range} answered (silent: {})",
        silent.join("; ")
    )]
    ListingIncomplete {
        /// A range none of whose replicas answered.
        range: kv_core::TokenRange,
        /// The nodes that did not answer, each with why.
        silent: Vec<String>,
    },
    /// A stored state failed to decode.
    #[error("stored state of a key is corrupt: {0}")]
    Corrupt(String),
    /// A task of this node that did the work (the engine's thread, the
    /// local write batcher) panicked or was cancelled.
    #[error("a task of this node failed: {0}")]
    Task(String),
}

/// What kind of failure an [`Error`] is: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the same request fails again anywhere.
    Invalid,
    /// Replicas or peers did not answer enough, or this node is not the
    /// place for the request: the same request may succeed later or on
    /// another node.
    Unavailable,
    /// As `Unavailable`, but only because replicas were slow: the write may
    /// still land.
    TimedOut,
    /// This node's engine cannot serve (poisoned, closed, an I/O error):
    /// another node may.
    LocalStorage,
    /// Stored data is damaged; retrying cannot help.
    Corrupt,
    /// A bug or a failed task of this node.
    Internal,
    /// This node declines the work for now, being busy with work that
    /// covers it (an operator's repair); the same request may succeed
    /// later.
    Busy,
}

impl Error {
    /// The kind of this failure; status codes and retry decisions come
    /// from it, never from the message.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_)
            | Error::Forwarded { invalid: true, .. }
            | Error::Storage(StorageError::InvalidInput(_)) => ErrorKind::Invalid,
            Error::WriteQuorum {
                failed, timed_out, ..
            }
            | Error::ReadQuorum {
                failed, timed_out, ..
            } if failed.is_empty() && !timed_out.is_empty() => ErrorKind::TimedOut,
            Error::WriteQuorum { .. }
            | Error::ReadQuorum { .. }
            | Error::NotReplica(_)
            | Error::Forwarded { .. }
            | Error::Peer(_)
            | Error::ListingIncomplete { .. }
            | Error::Placement(PartitionerError::EmptyRing) => ErrorKind::Unavailable,
            Error::Busy(_) => ErrorKind::Busy,
            Error::Placement(_) => ErrorKind::Internal,
            Error::Storage(StorageError::Corruption(_)) | Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Storage(_) => ErrorKind::LocalStorage,
            Error::Task(_) => ErrorKind::Internal,
        }
    }

    /// Whether sending the same request again, here or to another node,
    /// may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unavailable
                | ErrorKind::TimedOut
                | ErrorKind::LocalStorage
                | ErrorKind::Busy
        )
    }

    /// This error as the peer that asked sees it: the failure of a replica
    /// operation served for `node` (what a transport reports when this
    /// node's replica fails a peer's request).
    pub fn to_transport(&self, node: NodeId) -> TransportError {
        TransportError::Remote {
            node,
            kind: self.kind().remote(),
            message: self.to_string(),
        }
    }
}

impl ErrorKind {
    /// The kind a peer reports to the node that asked: bad input, damaged
    /// data and a busy node as themselves, a failed engine as storage,
    /// anything else (a replica operation misses no quorum) as internal.
    pub fn remote(self) -> RemoteFailure {
        match self {
            ErrorKind::Invalid => RemoteFailure::Invalid,
            ErrorKind::LocalStorage => RemoteFailure::Storage,
            ErrorKind::Corrupt => RemoteFailure::Corrupt,
            ErrorKind::Busy => RemoteFailure::Busy,
            ErrorKind::Unavailable | ErrorKind::TimedOut | ErrorKind::Internal => {
                RemoteFailure::Internal
            }
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
