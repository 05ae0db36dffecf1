//! Reads a table through a memory map.
//!
//! Safety of the map: a table file is written once, fsynced, and never
//! modified or truncated afterwards by this engine; it is deleted only when
//! no `Table` refers to it (unlinking keeps the mapping valid). The map is
//! therefore sound as long as no other program writes into the engine's
//! directory, which the directory lock and the documentation forbid. Every
//! block is checksummed before its bytes are parsed, and parsing is bounds-
//! checked, so even a file damaged on disk yields errors, not wild reads.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_core::codec::{DecodeError, DecodeResult, Reader};
use memmap2::Mmap;

use super::block::BlockCursor;
use super::bloom::{Bloom, KeyHash};
use super::{FOOTER_LEN, TABLE_MAGIC, TABLE_VERSION, TableMeta};
use crate::error::{Error, Result};
use crate::iter::InternalIter;

/// Where one data block lies, and the last version it holds (its key in
/// the index's key arena).
#[derive(Debug, Clone)]
struct IndexEntry {
    /// The key's first 8 bytes, big-endian, zero-padded: most comparisons
    /// of a search end here, without touching the arena.
    prefix: u64,
    key_start: usize,
    key_end: usize,
    last_seq: u64,
    offset: u64,
    len: u64,
}

/// A table's block index, laid out for binary search: fixed-size entries
/// in one vector and their keys in one arena (two allocations per table,
/// instead of one per block, so a search touches few cache lines).
///
/// Each entry's prefix is taken after the bytes every key of the index
/// shares (`shared`): keys such as `user000000012345` share their first
/// eight bytes throughout a table, and prefixes taken from the start of
/// the key would tie at every step of a search, each tie a cache miss
/// into the arena.
#[derive(Debug, Default)]
struct Index {
    entries: Vec<IndexEntry>,
    keys: Vec<u8>,
    /// How many leading bytes every key shares (the first key's, in the
    /// arena from its start); prefixes are taken after them.
    shared: usize,
}

/// The first 8 bytes of `key` as a big-endian number, zero-padded: if two
/// keys' prefixes differ, they order as their prefixes do.
fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

impl Index {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn push(&mut self, key: &[u8], last_seq: u64, offset: u64, len: u64) {
        debug_assert_eq!(self.shared, 0, "an entry pushed after `seal`");
        let key_start = self.keys.len();
        self.keys.extend_from_slice(key);
        self.entries.push(IndexEntry {
            prefix: key_prefix(key),
            key_start,
            key_end: self.keys.len(),
            last_seq,
            offset,
            len,
        });
    }

    fn last(&self) -> Option<&IndexEntry> {
        self.entries.last()
    }

    fn key(&self, e: &IndexEntry) -> &[u8] {
        &self.keys[e.key_start..e.key_end]
    }

    /// Takes every entry's prefix after the bytes all keys share, once
    /// every entry is in. The shared bytes are counted over every key,
    /// not only the first and the last: an index read from a damaged or
    /// crafted file need not be in order, and must not make this slice
    /// past a key's end.
    fn seal(&mut self) {
        let Some(first) = self.entries.first() else {
            return;
        };
        let first = self.key(first);
        self.shared = self.entries.iter().fold(first.len(), |shared, e| {
            let key = self.key(e);
            first[..shared]
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        });
        let (keys, shared) = (&self.keys, self.shared);
        for e in &mut self.entries {
            e.prefix = key_prefix(&keys[e.key_start + shared..e.key_end]);
        }
    }

    /// The first entry whose last version is at or after `(key, seq)`.
    fn search(&self, key: &[u8], seq: u64) -> usize {
        let shared = &self.keys[..self.shared];
        let Some(rest) = key.strip_prefix(shared) else {
            // Every key starts with `shared` and this one does not: it
            // orders before all of them or after all of them.
            return if key < shared { 0 } else { self.entries.len() };
        };
        let prefix = key_prefix(rest);
        self.entries.partition_point(|e| {
            e.prefix
                .cmp(&prefix)
                .then_with(|| crate::iter::compare_versions(self.key(e), e.last_seq, key, seq))
                == std::cmp::Ordering::Less
        })
    }
}

impl std::ops::Index<usize> for Index {
    type Output = IndexEntry;
    fn index(&self, i: usize) -> &IndexEntry {
        &self.entries[i]
    }
}

/// An open table.
#[derive(Debug)]
pub(crate) struct Table {
    path: PathBuf,
    bytes: Mmap,
    index: Index,
    bloom: Bloom,
    meta: TableMeta,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The checksummed block at `offset .. offset + len` (crc after it).
fn checked_block(
    bytes: &[u8],
    offset: u64,
    len: u64,
    what: &str,
) -> std::result::Result<Range, String> {
    let start =
        usize::try_from(offset).map_err(|_| format!("{what} offset {offset} out of range"))?;
    let len = usize::try_from(len).map_err(|_| format!("{what} length {len} out of range"))?;
    let end = start
        .checked_add(len)
        .filter(|&e| e.checked_add(4).is_some_and(|c| c <= bytes.len()))
        .ok_or_else(|| format!("{what} at {offset} (+{len}) runs past the end of the file"))?;
    let stored = u32_at(bytes, end);
    if crc32c::crc32c(&bytes[start..end]) != stored {
        return Err(format!("{what} at byte {offset} failed its checksum"));
    }
    Ok(start..end)
}

type Range = std::ops::Range<usize>;

/// Parsed footer, index, filter and properties of table bytes.
struct Parsed {
    index: Index,
    bloom: Bloom,
    entries: u64,
    smallest: (Vec<u8>, u64),
    largest: (Vec<u8>, u64),
}

fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    if bytes.len() < FOOTER_LEN {
        return Err(format!(
            "{} bytes is too short for a table footer",
            bytes.len()
        ));
    }
    let footer = &bytes[bytes.len() - FOOTER_LEN..];
    if u64_at(footer, 56) != TABLE_MAGIC {
        return Err("bad magic number in the footer".to_string());
    }
    if crc32c::crc32c(&footer[..52]) != u32_at(footer, 52) {
        return Err("footer failed its checksum".to_string());
    }
    let version = u32_at(footer, 48);
    if version != TABLE_VERSION {
        return Err(format!("unknown table format version {version}"));
    }
    let handle = |i: usize| (u64_at(footer, 16 * i), u64_at(footer, 16 * i + 8));
    let (filter, index, props) = (handle(0), handle(1), handle(2));
    let filter = checked_block(bytes, filter.0, filter.1, "filter block")?;
    let bloom = Bloom::from_bytes(&bytes[filter]).ok_or("filter block is malformed")?;
    let index_range = checked_block(bytes, index.0, index.1, "index block")?;
    let index = parse_index(&bytes[index_range]).map_err(|e| format!("index block: {e}"))?;
    let props_range = checked_block(bytes, props.0, props.1, "properties block")?;
    let mut reader = Reader::new(&bytes[props_range]);
    let (entries, smallest, largest) = (|| -> DecodeResult<_> {
        let entries = reader.varint("entry count")?;
        let len = reader.count("smallest key length", 1)?;
        let smallest = (
            reader.bytes(len, "smallest key")?.to_vec(),
            reader.varint("smallest sequence")?,
        );
        let len = reader.count("largest key length", 1)?;
        let largest = (
            reader.bytes(len, "largest key")?.to_vec(),
            reader.varint("largest sequence")?,
        );
        reader.finish()?;
        Ok((entries, smallest, largest))
    })()
    .map_err(|e| format!("properties block: {e}"))?;
    Ok(Parsed {
        index,
        bloom,
        entries,
        smallest,
        largest,
    })
}

fn parse_index(data: &[u8]) -> DecodeResult<Index> {
    let mut cursor = BlockCursor::new(data)?;
    cursor.seek_first(data)?;
    let mut index = Index::default();
    while cursor.valid {
        let mut reader = Reader::new(&data[cursor.value.clone()]);
        let offset = reader.varint("block offset")?;
        let len = reader.varint("block length")?;
        reader.finish()?;
        if let Some(prev) = index.last() {
            let prev: &IndexEntry = prev;
            if offset < prev.offset + prev.len {
                return Err(DecodeError::Invalid {
                    offset: cursor.value.start,
                    what: "index entries out of order",
                });
            }
        }
        index.push(&cursor.key, cursor.seq, offset, len);
        cursor.advance(data)?;
    }
    index.seal();
    Ok(index)
}

/// Parses table bytes and walks every entry (the fuzz target's entry point;
/// returns how many entries were read). Never panics on any input.
///
/// # Errors
///
/// A description of the first thing that fails verification.
pub fn decode_table_for_fuzzing(bytes: &[u8]) -> std::result::Result<u64, String> {
    let parsed = parse(bytes)?;
    let mut count = 0;
    for entry in &parsed.index.entries {
        let range = checked_block(bytes, entry.offset, entry.len, "data block")?;
        let data = &bytes[range];
        let mut cursor = BlockCursor::new(data).map_err(|e| e.to_string())?;
        cursor.seek_first(data).map_err(|e| e.to_string())?;
        while cursor.valid {
            count += 1;
            cursor.advance(data).map_err(|e| e.to_string())?;
        }
    }
    Ok(count)
}

impl Table {
    /// Opens table `number` at `path`, checking footer, index, filter and
    /// properties.
    pub(crate) fn open(path: &Path, number: u64) -> Result<Table> {
        let file = File::open(path).map_err(|e| Error::io("open table", path, e))?;
        // SAFETY: see the module documentation: table files are immutable
        // once written and are not changed while mapped.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map table", path, e))?;
        let bytes = map;
        let parsed = parse(&bytes).map_err(|reason| Error::corrupt(path, reason))?;
        let meta = TableMeta {
            number,
            size: bytes.len() as u64,
            entries: parsed.entries,
            smallest: parsed.smallest,
            largest: parsed.largest,
        };
        Ok(Table {
            path: path.to_path_buf(),
            bytes,
            index: parsed.index,
            bloom: parsed.bloom,
            meta,
        })
    }

    pub(crate) fn meta(&self) -> &TableMeta {
        &self.meta
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where data block `i` lies in the file, its checksum verified. Blocks
    /// are read in place from the mapping and checked on every read (about
    /// 0.5 us for 4 KiB): the operating system's page cache holds them, and
    /// a block cache of verified copies cost more than it saved (it copied
    /// every block read and kept a second copy of hot ones; readrandom went
    /// from 290,000 to 440,000 reads/s without it).
    fn block_range(&self, i: usize) -> Result<Range> {
        let entry = &self.index[i];
        checked_block(&self.bytes, entry.offset, entry.len, "data block")
            .map_err(|reason| Error::corrupt(&self.path, reason))
    }

    /// The first block whose last version is at or after `(key, seq)`.
    fn block_for(&self, key: &[u8], seq: u64) -> usize {
        self.index.search(key, seq)
    }

    /// The newest version of `key` numbered `<= seq`: `Some(None)` for a
    /// tombstone, `None` if the table holds none. The key's filter hash is computed once by the caller, for every
    /// table it looks at.
    pub(crate) fn get_hashed(
        &self,
        key: &[u8],
        hash: KeyHash,
        seq: u64,
    ) -> Result<Option<Option<Vec<u8>>>> {
        if key < self.meta.smallest.0.as_slice() || key > self.meta.largest.0.as_slice() {
            return Ok(None);
        }
        if !self.bloom.may_contain_hash(hash) {
            return Ok(None);
        }
        let i = self.block_for(key, seq);
        if i == self.index.len() {
            return Ok(None);
        }
        let block = &self.bytes[self.block_range(i)?];
        let mut cursor = BlockCursor::new(block).map_err(|e| self.decode_error(e))?;
        cursor
            .seek(block, key, seq)
            .map_err(|e| self.decode_error(e))?;
        if !cursor.valid || cursor.key != key {
            return Ok(None);
        }
        Ok(Some(
            cursor.is_put.then(|| block[cursor.value.clone()].to_vec()),
        ))
    }

    fn decode_error(&self, err: DecodeError) -> Error {
        Error::decode(&self.path, "data block", err)
    }

    /// A cursor from the first version of the first user key within `start`.
    pub(crate) fn iter(self: &Arc<Self>, start: Bound<&[u8]>) -> Result<TableIter> {
        let mut iter = TableIter {
            table: self.clone(),
            block_index: 0,
            block: None,
            cursor: BlockCursor::default(),
        };
        match start {
            Bound::Unbounded => iter.load(0, None)?,
            Bound::Included(k) => iter.load(self.block_for(k, u64::MAX), Some((k, u64::MAX)))?,
            Bound::Excluded(k) => iter.load(self.block_for(k, 0), Some((k, 0)))?,
        }
        if let Bound::Excluded(k) = start {
            while iter.valid() && iter.key() == k {
                iter.advance()?;
            }
        }
        Ok(iter)
    }
}

/// A cursor over one table's versions.
#[derive(Debug)]
pub(crate) struct TableIter {
    table: Arc<Table>,
    block_index: usize,
    /// The current block's bytes in the file.
    block: Option<Range>,
    cursor: BlockCursor,
}

impl TableIter {
    /// Loads block `i` and positions at `seek` (or its first entry); moves
    /// on to later blocks while positioned past the end of one.
    fn load(&mut self, mut i: usize, mut seek: Option<(&[u8], u64)>) -> Result<()> {
        loop {
            if i >= self.table.index.len() {
                self.block = None;
                self.cursor.valid = false;
                return Ok(());
            }
            let range = self.table.block_range(i)?;
            let block = &self.table.bytes[range.clone()];
            let mut cursor = BlockCursor::new(block).map_err(|e| self.table.decode_error(e))?;
            match seek.take() {
                Some((k, s)) => cursor.seek(block, k, s),
                None => cursor.seek_first(block),
            }
            .map_err(|e| self.table.decode_error(e))?;
            self.block_index = i;
            self.block = Some(range);
            self.cursor = cursor;
            if self.cursor.valid {
                return Ok(());
            }
            i += 1;
        }
    }
}

impl InternalIter for TableIter {
    fn valid(&self) -> bool {
        self.block.is_some() && self.cursor.valid
    }

    fn key(&self) -> &[u8] {
        &self.cursor.key
    }

    fn seq(&self) -> u64 {
        self.cursor.seq
    }

    fn value(&self) -> Option<&[u8]> {
        let block = &self.table.bytes[self.block.clone()?];
        self.cursor
            .is_put
            .then(|| &block[self.cursor.value.clone()])
    }

    fn advance(&mut self) -> Result<()> {
        let Some(range) = self.block.clone() else {
            return Ok(());
        };
        self.cursor
            .advance(&self.table.bytes[range])
            .map_err(|e| self.table.decode_error(e))?;
        if !self.cursor.valid {
            self.load(self.block_index + 1, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_index_out_of_order_seals_without_slicing_past_a_key() {
        // As a damaged or crafted file may hold: the first and the last
        // key share four bytes, the one between them only one.
        let mut index = Index::default();
        for (i, key) in [&b"abcd1"[..], b"a", b"abcd2"].iter().enumerate() {
            index.push(key, 0, i as u64, 1);
        }
        index.seal();
        assert_eq!(index.shared, 1);
        // Searches answer (whatever the order made of them) without panicking.
        for probe in [&b""[..], b"a", b"abcd", b"b", b"zz"] {
            assert!(index.search(probe, 0) <= 3);
        }
    }

    proptest! {
        /// The search finds what a linear scan with the full comparison
        /// finds, for keys that share prefixes, are shorter than 8 bytes
        /// or hold zero bytes (where the padded prefixes tie).
        #[test]
        fn the_index_search_agrees_with_a_linear_scan(
            shared in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..12),
            mut keys in proptest::collection::vec(
                (proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..12), 0..4u64),
                1..60,
            ),
            probe in (proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..12), 0..4u64),
            // The probe: with the keys' shared bytes (or only some of
            // them) in front, or as drawn.
            probe_shares in 0..3usize,
            cut in 0..12usize,
            sealed: bool,
        ) {
            // Every key starts with `shared`, as keys of one table often
            // do (`user000000012345`).
            for (key, _) in &mut keys {
                key.splice(0..0, shared.iter().copied());
            }
            let probe = match probe_shares {
                0 => probe,
                1 => ([&shared[..], &probe.0].concat(), probe.1),
                _ => ([&shared[..cut.min(shared.len())], &probe.0].concat(), probe.1),
            };
            keys.sort_by(|a, b| crate::iter::compare_versions(&a.0, a.1, &b.0, b.1));
            let mut index = Index::default();
            for (i, (key, seq)) in keys.iter().enumerate() {
                index.push(key, *seq, i as u64, 1);
            }
            // Unsealed, prefixes are taken from the start of each key:
            // slower, and as correct.
            if sealed {
                index.seal();
                prop_assert!(index.shared >= shared.len());
            }
            let linear = keys
                .iter()
                .position(|(k, s)| !crate::iter::compare_versions(k, *s, &probe.0, probe.1).is_lt())
                .unwrap_or(keys.len());
            prop_assert_eq!(index.search(&probe.0, probe.1), linear);
        }
    }
}
