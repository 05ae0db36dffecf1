//! Sorted string tables: immutable files of checksummed blocks.
//!
//! The byte-level format is in `docs/lsm-format.md`.

mod block;
mod bloom;
pub(crate) mod builder;
mod reader;

pub(crate) use bloom::KeyHash;
pub(crate) use builder::TableBuilder;
pub(crate) use reader::{Table, TableIter};

/// What the manifest records about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableMeta {
    /// File number (`NNNNNN.sst`).
    pub(crate) number: u64,
    /// File size in bytes.
    pub(crate) size: u64,
    /// Entries (versions) held.
    pub(crate) entries: u64,
    /// Smallest (user key, sequence) in version order.
    pub(crate) smallest: (Vec<u8>, u64),
    /// Largest (user key, sequence) in version order.
    pub(crate) largest: (Vec<u8>, u64),
}

impl TableMeta {
    /// Whether the table's user keys intersect `[start, end]`.
    pub(crate) fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        self.smallest.0.as_slice() <= end && self.largest.0.as_slice() >= start
    }
}

/// The file name of table `number`.
pub(crate) fn table_name(number: u64) -> String {
    format!("{number:06}.sst")
}

/// Magic number at the end of every table ("kvlsmsst").
pub(crate) const TABLE_MAGIC: u64 = 0x6b76_6c73_6d73_7374;
/// Table format version.
pub(crate) const TABLE_VERSION: u32 = 1;
/// Footer size in bytes.
pub(crate) const FOOTER_LEN: usize = 64;

pub use reader::decode_table_for_fuzzing;
