//! Merkle trees for anti-entropy: incremental XOR ("tictac") trees over a
//! fixed number of buckets, and an exchange that finds the buckets where two
//! replicas differ with traffic proportional to the difference.
//!
//! Pure data and logic, no I/O: the caller keeps one tree per token range
//! it replicates, updates it on every write (the old and new version
//! digests of a key), and moves exchange messages over its own transport.
//!
//! - [`MerkleTree`]: insert, remove and update in O(depth); root and node
//!   hashes; the result depends only on the contents.
//! - [`Exchange`] (initiator) and [`respond`] (responder): a state machine
//!   that descends only into differing subtrees, `fanout` nodes per
//!   message, and ends with the differing buckets.
//! - [`Message`]: the compact wire form; decoding garbage is an error.
//!
//! ```
//! use kv_merkle::{MerkleTree, exchange_in_memory};
//!
//! let mut ours = MerkleTree::new(1 << 12)?;
//! let mut theirs = MerkleTree::new(1 << 12)?;
//! for i in 0..10_000u32 {
//!     ours.insert(&i.to_be_bytes(), 1);
//!     theirs.insert(&i.to_be_bytes(), 1);
//! }
//! theirs.update(&77u32.to_be_bytes(), 1, 2); // one key diverged
//! let (buckets, bytes) = exchange_in_memory(&ours, &theirs, 64)?;
//! assert_eq!(buckets, vec![ours.bucket(&77u32.to_be_bytes())]);
//! assert!(bytes < 1_000);
//! # Ok::<(), kv_merkle::Error>(())
//! ```

mod error;
mod exchange;
mod tree;

pub use error::{Error, Result};
pub use exchange::{
    Compare, Differences, Exchange, Message, NodeHash, Step, exchange_in_memory, respond,
};
pub use tree::{DEFAULT_LEAVES, MerkleTree};
