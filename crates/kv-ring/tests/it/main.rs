//! Integration tests of kv-ring.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod balance;
mod errors;
mod properties;
mod ranges;

use kv_core::NodeId;
use kv_ring::ConsistentHashRing;

/// A balanced ring of nodes `1..=n` joined in order.
pub(crate) fn ring(n: u64, vnodes: u32) -> ConsistentHashRing {
    ConsistentHashRing::builder()
        .vnodes(vnodes)
        .nodes((1..=n).map(NodeId))
        .build()
        .unwrap()
}
