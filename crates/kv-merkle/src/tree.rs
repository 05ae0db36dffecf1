//! The tree: leaf buckets of XOR-combined entry hashes.

use siphasher::sip::SipHasher13;

use crate::error::{Error, Result};

/// Leaf buckets by default (2^15, as Riak's tictac trees use).
pub const DEFAULT_LEAVES: u32 = 1 << 15;

/// SipHash keys for the bucket of a key and the hash of an entry. Fixed, so
/// that trees built by different processes and versions compare.
const BUCKET_KEYS: (u64, u64) = (0x6d65_726b_6c65_2d62, 0x7563_6b65_7421_2121);
const ENTRY_KEYS: (u64, u64) = (0x6d65_726b_6c65_2d65, 0x6e74_7279_2121_2121);

/// A Merkle tree over a fixed number of leaf buckets, for one key range.
///
/// A key falls in a bucket by a hash of the key. Each entry (a key and a
/// digest of its version, supplied by the caller) contributes
/// `h(key, digest)`; a bucket's hash is the XOR of its entries' hashes and
/// an inner node's hash is the XOR of its children's (Riak's "tictac"
/// trees). XOR makes every change O(depth) without rescanning, and the tree
/// depends only on its contents, not on the order of insertions.
///
/// Nodes are numbered per level: level 0 is the root (one node), level `d`
/// holds `2^d` nodes, and the last level is the leaves.
///
/// ```
/// use kv_merkle::MerkleTree;
///
/// let mut a = MerkleTree::new(1 << 10)?;
/// let mut b = MerkleTree::new(1 << 10)?;
/// a.insert(b"k1", 1);
/// a.insert(b"k2", 7);
/// b.insert(b"k2", 7);
/// b.insert(b"k1", 1);
/// assert_eq!(a.root(), b.root()); // order does not matter
/// b.update(b"k2", 7, 8);
/// assert_ne!(a.root(), b.root());
/// # Ok::<(), kv_merkle::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    depth: u32,
    /// Heap order: node 1 is the root, node i has children 2i and 2i+1;
    /// leaves are nodes `2^depth ..= 2^(depth+1) - 1`. Index 0 is unused.
    nodes: Vec<u64>,
    entries: u64,
}

impl MerkleTree {
    /// A tree with `leaves` buckets, a power of two from 1 to 2^24.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLeaves`] unless `leaves` is a power of two from 1 to
    /// 2^24.
    pub fn new(leaves: u32) -> Result<Self> {
        if !leaves.is_power_of_two() || leaves > 1 << 24 {
            return Err(Error::InvalidLeaves(leaves));
        }
        let depth = leaves.trailing_zeros();
        Ok(MerkleTree {
            depth,
            nodes: vec![0; 2 * leaves as usize],
            entries: 0,
        })
    }

    /// The number of leaf buckets.
    pub fn leaves(&self) -> u32 {
        1 << self.depth
    }

    /// Levels below the root (the leaves are at level `depth`).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Entries inserted minus entries removed.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether the tree holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The bucket `key` falls in.
    pub fn bucket(&self, key: &[u8]) -> u32 {
        let h = SipHasher13::new_with_keys(BUCKET_KEYS.0, BUCKET_KEYS.1).hash(key);
        if self.depth == 0 {
            0
        } else {
            (h >> (64 - self.depth)) as u32
        }
    }

    /// The hash an entry contributes.
    pub fn entry_hash(key: &[u8], digest: u64) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(ENTRY_KEYS.0, ENTRY_KEYS.1);
        std::hash::Hasher::write(&mut hasher, &digest.to_le_bytes());
        std::hash::Hasher::write(&mut hasher, key);
        std::hash::Hasher::finish(&hasher)
    }

    /// XORs `hash` into bucket `bucket` and every node above it.
    fn toggle(&mut self, bucket: u32, hash: u64) {
        let mut node = (1usize << self.depth) + bucket as usize;
        while node >= 1 {
            self.nodes[node] ^= hash;
            node /= 2;
        }
    }

    /// Adds an entry: `key` at version `digest`.
    pub fn insert(&mut self, key: &[u8], digest: u64) {
        self.toggle(self.bucket(key), Self::entry_hash(key, digest));
        self.entries += 1;
    }

    /// Removes an entry previously inserted with the same digest.
    pub fn remove(&mut self, key: &[u8], digest: u64) {
        self.toggle(self.bucket(key), Self::entry_hash(key, digest));
        self.entries = self.entries.saturating_sub(1);
    }

    /// Changes `key`'s version from digest `old` to `new`.
    pub fn update(&mut self, key: &[u8], old: u64, new: u64) {
        let bucket = self.bucket(key);
        self.toggle(
            bucket,
            Self::entry_hash(key, old) ^ Self::entry_hash(key, new),
        );
    }

    /// The root hash (0 for an empty tree).
    pub fn root(&self) -> u64 {
        self.nodes[1]
    }

    /// The hash of node `index` at `level`, if both exist.
    pub fn node(&self, level: u32, index: u32) -> Option<u64> {
        if level > self.depth || index >= 1 << level {
            return None;
        }
        Some(self.nodes[(1usize << level) + index as usize])
    }

    /// The hash of leaf bucket `bucket`.
    pub fn leaf(&self, bucket: u32) -> Option<u64> {
        self.node(self.depth, bucket)
    }

    /// The buckets whose hashes differ from `other`'s (trees of the same
    /// size), by looking at every leaf. The exchange finds the same set
    /// while looking at far fewer nodes; this is the reference.
    ///
    /// # Errors
    ///
    /// [`Error::SizeMismatch`] if the trees differ in size.
    pub fn diff_leaves(&self, other: &MerkleTree) -> Result<Vec<u32>> {
        if self.depth != other.depth {
            return Err(Error::SizeMismatch {
                ours: self.leaves(),
                theirs: other.leaves(),
            });
        }
        let first = 1usize << self.depth;
        Ok((0..self.leaves())
            .filter(|&b| self.nodes[first + b as usize] != other.nodes[first + b as usize])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_powers_of_two() {
        assert!(MerkleTree::new(0).is_err());
        assert!(MerkleTree::new(3).is_err());
        assert!(MerkleTree::new(1 << 25).is_err());
        let one = MerkleTree::new(1).unwrap();
        assert_eq!(one.depth(), 0);
        assert_eq!(one.bucket(b"anything"), 0);
        assert_eq!(MerkleTree::new(DEFAULT_LEAVES).unwrap().depth(), 15);
    }

    #[test]
    fn insert_then_remove_restores_the_empty_tree() {
        let mut t = MerkleTree::new(64).unwrap();
        let empty = t.clone();
        t.insert(b"a", 1);
        t.insert(b"b", 2);
        assert_ne!(t.root(), 0);
        t.remove(b"a", 1);
        t.remove(b"b", 2);
        assert_eq!(t, empty);
    }

    #[test]
    fn inner_nodes_are_the_xor_of_their_children() {
        let mut t = MerkleTree::new(16).unwrap();
        for i in 0..100u32 {
            t.insert(&i.to_be_bytes(), u64::from(i));
        }
        for level in 0..t.depth() {
            for i in 0..(1u32 << level) {
                let children =
                    t.node(level + 1, 2 * i).unwrap() ^ t.node(level + 1, 2 * i + 1).unwrap();
                assert_eq!(t.node(level, i).unwrap(), children);
            }
        }
        assert_eq!(t.node(5, 0), None);
        assert_eq!(t.node(2, 4), None);
    }
}
