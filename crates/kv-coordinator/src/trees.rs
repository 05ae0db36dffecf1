//! Per-peer Merkle trees over the keys two replicas share.

use std::collections::BTreeMap;

use kv_core::NodeId;
use kv_merkle::MerkleTree;
use parking_lot::Mutex;
use siphasher::sip::SipHasher13;

use crate::error::{Error, Result};

/// A stable digest of an encoded sibling set (the same bytes give the same
/// digest in every process, which the trees of two nodes rely on).
pub(crate) fn digest(state: &[u8]) -> u64 {
    SipHasher13::new_with_keys(0x6b76_2d61_6165_2d64, 0x6967_6573_7421_2121).hash(state)
}

/// For each other node, a tree of the keys both nodes replicate. A node's
/// tree for a peer and the peer's tree for the node cover the same keys, so
/// any difference between them is a real divergence.
#[derive(Debug)]
pub(crate) struct Trees {
    /// An empty tree of the configured size, cloned for each new peer.
    empty: MerkleTree,
    by_peer: Mutex<BTreeMap<NodeId, MerkleTree>>,
}

impl Trees {
    pub(crate) fn new(leaves: u32) -> Result<Self> {
        let empty = MerkleTree::new(leaves).map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(Trees {
            empty,
            by_peer: Mutex::new(BTreeMap::new()),
        })
    }

    pub(crate) fn leaves(&self) -> u32 {
        self.empty.leaves()
    }

    /// Records that `key` changed from `old` to `new` (digests; `None` for
    /// absent) in the trees of `peers`.
    pub(crate) fn update(&self, peers: &[NodeId], key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let mut trees = self.by_peer.lock();
        for peer in peers {
            let tree = trees.entry(*peer).or_insert_with(|| self.empty.clone());
            match (old, new) {
                (Some(o), Some(n)) => tree.update(key, o, n),
                (None, Some(n)) => tree.insert(key, n),
                (Some(o), None) => tree.remove(key, o),
                (None, None) => {}
            }
        }
    }

    /// Forgets every tree.
    pub(crate) fn clear(&self) {
        self.by_peer.lock().clear();
    }

    /// Runs `f` on the tree for `peer` (an empty one if none yet). Only
    /// a stored change makes a tree, for the ring's peers of the key: an
    /// exchange asked by any other sender (a node that shares no key with
    /// this one, or a stranger naming made-up ids) is answered from the
    /// empty tree and allocates nothing.
    pub(crate) fn with<R>(&self, peer: NodeId, f: impl FnOnce(&MerkleTree) -> R) -> R {
        let trees = self.by_peer.lock();
        f(trees.get(&peer).unwrap_or(&self.empty))
    }

    /// How many peers have a tree.
    #[cfg(feature = "test-util")]
    pub(crate) fn count(&self) -> usize {
        self.by_peer.lock().len()
    }

    /// The bucket a key falls in (the same for every tree).
    pub(crate) fn bucket(&self, key: &[u8]) -> u32 {
        self.empty.bucket(key)
    }
}
