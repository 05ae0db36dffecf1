//! Shared identifiers and the ports (traits) between the layers of the kv store.
//!
//! `kv-core` is the bottom of the dependency graph: every other crate of the
//! workspace depends on it and on nothing else of the workspace unless it is a
//! composition layer. It holds no logic beyond what the types need, no I/O and
//! no async runtime.
//!
//! - [`NodeId`], [`Token`] and [`TokenRange`]: who stores what, and where on
//!   the hash ring a key lands; [`ActorId`]: a node in one epoch of its life,
//!   the author of versions.
//! - [`Partitioner`]: the port through which the coordinator asks which nodes
//!   replicate a key (implemented by `kv-ring`).
//! - [`StorageEngine`]: an ordered, durable byte map with atomic batches and
//!   consistent scans (implemented by `kv-lsm` and the test kit's
//!   `MemEngine`).
//! - [`Transport`] and [`MembershipView`]: how a coordinator reaches the
//!   other replicas and knows which are alive.
//!
//! ```
//! use kv_core::{Token, TokenRange};
//!
//! // (100, 200] holds 200 but not 100.
//! let range = TokenRange::new(Token(100), Token(200));
//! assert!(range.contains(Token(200)));
//! assert!(!range.contains(Token(100)));
//!
//! // A range may wrap around the top of the ring.
//! let wrapping = TokenRange::new(Token(u64::MAX - 1), Token(5));
//! assert!(wrapping.contains(Token(0)));
//! assert_eq!(wrapping.width(), 7);
//! ```

mod clock;
pub mod codec;
mod durable;
mod feed;
pub mod files;
mod ids;
mod partitioner;
mod range;
mod replication;
mod storage;

pub use clock::unix_secs;
pub use durable::{Durable, DurableSignal};
pub use feed::{FeedCursor, FeedPage, FeedPosition, FeedQuery};
pub use ids::{ActorId, NodeId, Token, WriteTag};
pub use partitioner::{Partitioner, PartitionerError};
pub use range::TokenRange;
pub use replication::{
    BucketPage, BucketQuery, ClientOp, ClientReply, KeyPage, KeyQuery, MembershipView,
    RemoteFailure, Transport, TransportError,
};
pub use storage::{BatchOp, KvPair, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch};
