//! Consistent hashing with balanced virtual nodes: which nodes hold a key.
//!
//! Keys hash to 64-bit tokens with SipHash-1-3 under fixed keys (so every
//! process and every version agrees). Each physical node owns 150 virtual
//! nodes per unit of weight. Tokens are allocated deterministically for
//! balance (max/mean ownership within a few per mille of 1.0 instead of
//! the 1.15-1.25 of random tokens), and a join moves only the new node's
//! ideal share, all of it to the new node. This crate is synchronous and
//! does no I/O; it does not know which nodes are alive (that is the
//! coordinator's membership view).
//!
//! - [`ConsistentHashRing`] (built with [`ConsistentHashRing::builder`]):
//!   [`preference_list`](kv_core::Partitioner::preference_list), owned and
//!   replicated ranges, ownership shares; implements
//!   [`kv_core::Partitioner`].
//! - [`NodeSpec`]: a node's id, weight and optional zone; replicas spread
//!   across zones when possible.
//! - [`RingDiff`]: the ranges whose replicas change between two rings, for
//!   streaming data on join and leave.
//! - [`token_of`]: the key hash.
//!
//! ```
//! use kv_core::{NodeId, Partitioner};
//! use kv_ring::{ConsistentHashRing, NodeSpec};
//!
//! let ring = ConsistentHashRing::builder()
//!     .node(NodeSpec::new(NodeId(1)).zone("a"))
//!     .node(NodeSpec::new(NodeId(2)).zone("a"))
//!     .node(NodeSpec::new(NodeId(3)).zone("b"))
//!     .node(NodeSpec::new(NodeId(4)).zone("c"))
//!     .build()?;
//! // Three replicas in three distinct zones.
//! let replicas = ring.preference_list(b"order:9", 3)?;
//! let zones: std::collections::BTreeSet<_> = replicas
//!     .iter()
//!     .map(|id| ring.node_spec(*id).unwrap().zone.clone())
//!     .collect();
//! assert_eq!(zones.len(), 3);
//!
//! // Asking for more replicas than nodes gives every node once.
//! assert_eq!(ring.preference_list(b"order:9", 10)?.len(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod allocate;
mod diff;
mod error;
mod hash;
mod ring;
mod stats;
mod walk;

pub use diff::{RangeMove, RingDiff};
pub use error::{Result, RingError};
pub use hash::token_of;
pub use ring::{
    ConsistentHashRing, DEFAULT_BALANCE_REPLICAS, DEFAULT_VNODES, NodeSpec, RingBuilder,
    TokenStrategy,
};
pub use stats::max_over_mean;
