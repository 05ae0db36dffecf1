//! The ports a coordinator uses to reach other replicas and to know who is
//! alive.

use crate::{ActorId, NodeId};

/// Why a peer did not answer a replica operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer is unreachable (down, partitioned, connection refused).
    #[error("{0} is unreachable")]
    Unreachable(NodeId),
    /// The peer did not answer in time.
    #[error("{0} did not answer in time")]
    Timeout(NodeId),
    /// The peer answered with an error.
    #[error("{node} failed ({kind}): {message}")]
    Remote {
        /// The peer.
        node: NodeId,
        /// What kind of failure the peer reported.
        kind: RemoteFailure,
        /// Its error, for people.
        message: String,
    },
}

impl TransportError {
    /// Whether sending the same request to the same peer later may
    /// succeed: it was down, slow, busy or its storage failed. A request
    /// the peer found invalid, a peer whose data is damaged, and a peer
    /// that refuses this node are not worth the retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Unreachable(_) | TransportError::Timeout(_) => true,
            TransportError::Remote { kind, .. } => kind.is_retryable(),
        }
    }
}

/// The kind of a failure a peer reported, so callers decide from the kind
/// and never from the message. Carried on the wire; a peer too old to say
/// reports [`Internal`](Self::Internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteFailure {
    /// The peer found the request malformed (a state that does not
    /// decode, a key over its limits): sending it again cannot help.
    Invalid,
    /// The peer's storage failed (poisoned, closed, an I/O error); another
    /// replica, or the same one later, may take it.
    Storage,
    /// The peer's stored data is damaged.
    Corrupt,
    /// The peer refuses this node (not authorised, an incompatible
    /// version, not a member).
    Refused,
    /// The peer is over a limit for now (too many requests in flight).
    Busy,
    /// Anything else: a bug or a failed task at the peer.
    Internal,
}

impl RemoteFailure {
    /// Whether the same request may succeed later (see
    /// [`TransportError::is_retryable`]).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RemoteFailure::Storage | RemoteFailure::Busy | RemoteFailure::Internal
        )
    }
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteFailure::Invalid => "invalid request",
            RemoteFailure::Storage => "storage",
            RemoteFailure::Corrupt => "corrupt data",
            RemoteFailure::Refused => "refused",
            RemoteFailure::Busy => "busy",
            RemoteFailure::Internal => "internal",
        })
    }
}

/// A client request forwarded to the key's coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// A write (`value: None` is a delete).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value, or `None` to delete.
        value: Option<Vec<u8>>,
        /// The client's context.
        context: Vec<u8>,
        /// Per-request W.
        w: Option<u32>,
        /// The client's name for the write, when it may send it again
        /// (see [`WriteTag`](crate::WriteTag)).
        write: Option<crate::WriteTag>,
        /// When the value lapses (seconds since the Unix epoch); `None`:
        /// never.
        expires: Option<u64>,
    },
    /// A read.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Per-request R.
        r: Option<u32>,
    },
}

/// The coordinator's answer to a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// A write succeeded; the new context.
    Written {
        /// Context of the new state.
        context: Vec<u8>,
        /// The new version's dot: the coordinating node's actor (the node
        /// in its current epoch) and its counter (what a history checker
        /// follows).
        dot: (ActorId, u64),
    },
    /// A read: the live values and the context.
    Read {
        /// Sibling values.
        values: Vec<Vec<u8>>,
        /// Context for the next write.
        context: Vec<u8>,
    },
    /// The request failed at the coordinator.
    Failed {
        /// True when the request itself was invalid (retrying cannot help).
        invalid: bool,
        /// True when the coordinator applied nothing (its storage refused
        /// the write, or it cannot coordinate now): another replica may
        /// take the request without storing it twice.
        not_applied: bool,
        /// What went wrong.
        message: String,
    },
}

/// The replica operations a coordinator performs on a peer. States are
/// encoded sibling sets (`kv_clock::DvvSet` bytes), opaque here.
///
/// Implementations: gRPC in the server, and an in-process transport that
/// drops, delays and partitions for tests.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// Asks `to` to merge `state` into its copy of `key` (and to keep it
    /// as a hint for `hint_for` when it is not itself a replica).
    async fn replicate(
        &self,
        to: NodeId,
        key: Vec<u8>,
        state: Vec<u8>,
        hint_for: Option<NodeId>,
    ) -> Result<(), TransportError>;

    /// Reads `to`'s state of `key` (`None` if it holds none).
    async fn read(&self, to: NodeId, key: Vec<u8>) -> Result<Option<Vec<u8>>, TransportError>;

    /// Hands a client request to `to`, the key's coordinator; the receiver
    /// coordinates it itself and never forwards it again.
    async fn forward(&self, to: NodeId, op: ClientOp) -> Result<ClientReply, TransportError>;

    /// Tombstone collection: asks `to` to delete `key` if its state is
    /// still exactly `expected`; returns whether it did.
    async fn reap(
        &self,
        to: NodeId,
        key: Vec<u8>,
        expected: Vec<u8>,
    ) -> Result<bool, TransportError>;

    /// Anti-entropy: sends an encoded Merkle exchange request about the
    /// keys `to` shares with `from`; returns the encoded answer.
    async fn merkle_exchange(
        &self,
        to: NodeId,
        from: NodeId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError>;

    /// Anti-entropy: one page of `to`'s states of the keys it shares with
    /// `from` that fall in the query's buckets (see [`BucketQuery`]).
    async fn bucket_states(
        &self,
        to: NodeId,
        from: NodeId,
        query: BucketQuery,
    ) -> Result<BucketPage, TransportError>;

    /// Key listing: one page of `to`'s live keys (see [`KeyQuery`]).
    async fn list_keys(&self, to: NodeId, query: KeyQuery) -> Result<KeyPage, TransportError>;

    /// Change feed: the changes of `to`'s stored states after the query's
    /// position, waiting up to the query's `wait_ms` for one (see
    /// [`FeedQuery`](crate::FeedQuery)).
    async fn changes(
        &self,
        to: NodeId,
        query: crate::FeedQuery,
    ) -> Result<crate::FeedPage, TransportError>;
}

/// Which page of a replica's anti-entropy bucket states to send: the keys
/// after `after` in key order (from the first key when `None`), until the
/// page holds about `max_bytes` of keys and states or the replica has
/// looked at `max_scanned` keys, whichever comes first. Pages bound the
/// work of one call however large the store or its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketQuery {
    /// The differing Merkle buckets.
    pub buckets: Vec<u32>,
    /// Continue after this key.
    pub after: Option<Vec<u8>>,
    /// About how many bytes of keys and states one page may hold (at least
    /// one key is always sent).
    pub max_bytes: u32,
    /// How many stored keys one page may look at.
    pub max_scanned: u32,
}

/// One page of bucket states: every matching key in (`after`, `next`] of
/// the query, or in (`after`, end) when `next` is `None` (the last page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketPage {
    /// Keys and their encoded states, in key order.
    pub states: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last key this page covers; `None` when the scan reached the end.
    pub next: Option<Vec<u8>>,
}

/// Which page of a replica's keys to list (key listing): the keys it
/// replicates that start with `prefix`, come after `after` in key order
/// (from the first when `None`) and before `end`, and hold a live value;
/// at most `limit` of them, looking at no more than `max_scanned` stored
/// keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    /// Keys that start with these bytes (all keys when empty).
    pub prefix: Vec<u8>,
    /// Continue after this key.
    pub after: Option<Vec<u8>>,
    /// Stop before this key (`None`: at the end of the prefix's keys).
    pub end: Option<Vec<u8>>,
    /// Most keys in the page (at least one is asked for).
    pub limit: u32,
    /// Most stored keys the replica looks at for the page.
    pub max_scanned: u32,
}

/// One page of listed keys: every matching key in (`after`, `next`] of
/// the query, or in (`after`, end of the prefix) when `next` is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys, ascending.
    pub keys: Vec<Vec<u8>>,
    /// The last key this page covers; `None` when it reached the end.
    pub next: Option<Vec<u8>>,
}

/// Which nodes are believed alive (fed by gossip in the server).
pub trait MembershipView: Send + Sync {
    /// Whether `node` is believed alive.
    fn is_alive(&self, node: NodeId) -> bool;
}
