//! The memtable: a lock-free skip list of recent writes.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

use crossbeam_skiplist::SkipMap;

use crate::iter::{Entry, InternalIter};

/// Bytes of bookkeeping counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 48;

/// A version of a key: (user key ascending, sequence number descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemKey {
    pub(crate) user: Box<[u8]>,
    pub(crate) seq: u64,
}

/// A borrowed view of a versioned key, so lookups need not allocate.
pub(crate) trait KeyView {
    fn user(&self) -> &[u8];
    fn seq(&self) -> u64;
}

impl KeyView for MemKey {
    fn user(&self) -> &[u8] {
        &self.user
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl KeyView for (&[u8], u64) {
    fn user(&self) -> &[u8] {
        self.0
    }
    fn seq(&self) -> u64 {
        self.1
    }
}

fn compare(a: &dyn KeyView, b: &dyn KeyView) -> Ordering {
    a.user().cmp(b.user()).then_with(|| b.seq().cmp(&a.seq()))
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        compare(self, other) == Ordering::Equal
    }
}
impl Eq for dyn KeyView + '_ {}
impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self, other)
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self, other)
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for MemKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

/// Recent writes, in memory, belonging to one commit-log segment.
#[derive(Debug)]
pub(crate) struct Memtable {
    map: SkipMap<MemKey, Option<Box<[u8]>>>,
    bytes: AtomicUsize,
    /// The commit-log segment that holds these writes.
    log_number: u64,
    /// Highest sequence number inserted.
    max_seq: AtomicU64,
}

impl Memtable {
    pub(crate) fn new(log_number: u64) -> Self {
        Memtable {
            map: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            log_number,
            max_seq: AtomicU64::new(0),
        }
    }

    pub(crate) fn log_number(&self) -> u64 {
        self.log_number
    }

    /// Approximate memory held.
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn max_seq(&self) -> u64 {
        self.max_seq.load(AtomicOrdering::Acquire)
    }

    /// Inserts one version (`None` is a tombstone).
    pub(crate) fn insert(&self, key: &[u8], seq: u64, value: Option<&[u8]>) {
        let size = key.len() + value.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD;
        self.map.insert(
            MemKey {
                user: key.into(),
                seq,
            },
            value.map(Into::into),
        );
        self.bytes.fetch_add(size, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq, AtomicOrdering::AcqRel);
    }

    /// The newest version of `key` numbered `<= seq`: `Some(None)` for a
    /// tombstone, `None` if the memtable has no such version.
    pub(crate) fn get(&self, key: &[u8], seq: u64) -> Option<Option<Vec<u8>>> {
        let probe: &dyn KeyView = &(key, seq);
        let entry = self.map.lower_bound(Bound::Included(probe))?;
        if &*entry.key().user != key {
            return None;
        }
        Some(entry.value().as_ref().map(|v| v.to_vec()))
    }

    /// Every entry in order (user key ascending, newest version first).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], u64, Option<&[u8]>)) {
        for entry in self.map.iter() {
            f(&entry.key().user, entry.key().seq, entry.value().as_deref());
        }
    }
}

/// Iterates a memtable from a start key, copying entries out in chunks (the
/// skip list's own iterators borrow it, which an iterator that owns an
/// `Arc` of the memtable cannot express).
#[derive(Debug)]
pub(crate) struct MemIter {
    mem: Arc<Memtable>,
    chunk: VecDeque<Entry>,
    /// Where the next chunk starts.
    resume: Option<MemKey>,
    exhausted: bool,
}

const CHUNK: usize = 128;

impl MemIter {
    /// Positioned at the first entry whose user key is at or after `start`.
    pub(crate) fn new(mem: Arc<Memtable>, start: Bound<&[u8]>) -> Self {
        let mut iter = MemIter {
            mem,
            chunk: VecDeque::with_capacity(CHUNK),
            resume: None,
            exhausted: false,
        };
        iter.fill(start);
        iter
    }

    fn fill(&mut self, start: Bound<&[u8]>) {
        let probe;
        let lower: Bound<&dyn KeyView> = match (&self.resume, start) {
            (Some(key), _) => Bound::Excluded(key as &dyn KeyView),
            (None, Bound::Included(k)) => {
                probe = (k, u64::MAX);
                Bound::Included(&probe as &dyn KeyView)
            }
            (None, Bound::Excluded(k)) => {
                probe = (k, 0);
                Bound::Excluded(&probe as &dyn KeyView)
            }
            (None, Bound::Unbounded) => Bound::Unbounded,
        };
        let mut last = None;
        for entry in self
            .mem
            .map
            .range::<dyn KeyView, _>((lower, Bound::Unbounded))
            .take(CHUNK)
        {
            self.chunk.push_back(Entry {
                key: entry.key().user.to_vec(),
                seq: entry.key().seq,
                value: entry.value().as_ref().map(|v| v.to_vec()),
            });
            last = Some(entry.key().clone());
        }
        match last {
            Some(key) if self.chunk.len() == CHUNK => self.resume = Some(key),
            _ => self.exhausted = true,
        }
    }
}

impl InternalIter for MemIter {
    fn valid(&self) -> bool {
        !self.chunk.is_empty()
    }

    fn key(&self) -> &[u8] {
        self.chunk.front().map_or(&[], |e| &e.key)
    }

    fn seq(&self) -> u64 {
        self.chunk.front().map_or(0, |e| e.seq)
    }

    fn value(&self) -> Option<&[u8]> {
        self.chunk.front().and_then(|e| e.value.as_deref())
    }

    fn advance(&mut self) -> crate::error::Result<()> {
        self.chunk.pop_front();
        if self.chunk.is_empty() && !self.exhausted {
            self.fill(Bound::Unbounded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_at_or_below_the_read_sequence() {
        let mem = Memtable::new(1);
        mem.insert(b"k", 1, Some(b"v1"));
        mem.insert(b"k", 5, Some(b"v5"));
        mem.insert(b"k", 7, None);
        mem.insert(b"j", 9, Some(b"j9"));
        assert_eq!(mem.get(b"k", 0), None);
        assert_eq!(mem.get(b"k", 1), Some(Some(b"v1".to_vec())));
        assert_eq!(mem.get(b"k", 6), Some(Some(b"v5".to_vec())));
        assert_eq!(mem.get(b"k", 7), Some(None));
        assert_eq!(mem.get(b"k", u64::MAX), Some(None));
        assert_eq!(mem.get(b"l", u64::MAX), None);
        assert_eq!(mem.max_seq(), 9);
    }

    #[test]
    fn iterator_crosses_chunks_in_order() {
        let mem = Arc::new(Memtable::new(1));
        for i in 0..1000u32 {
            mem.insert(&i.to_be_bytes(), u64::from(i) + 1, Some(b"x"));
            mem.insert(&i.to_be_bytes(), u64::from(i) + 5000, None);
        }
        let mut iter = MemIter::new(mem.clone(), Bound::Included(&10u32.to_be_bytes()));
        let mut seen = Vec::new();
        while iter.valid() {
            seen.push((iter.key().to_vec(), iter.seq()));
            iter.advance().unwrap();
        }
        assert_eq!(seen.len(), 2 * 990);
        // Newest version first for each key.
        assert!(seen[0].1 > seen[1].1);
        assert!(
            seen.windows(2)
                .all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 > w[1].1))
        );
        let excluded = MemIter::new(mem, Bound::Excluded(&998u32.to_be_bytes()));
        assert_eq!(excluded.key(), 999u32.to_be_bytes());
    }
}
