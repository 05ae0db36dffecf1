//! The memtable: a lock-free skip list of recent writes, their bytes in
//! an arena.

mod arena;

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use crossbeam_skiplist::SkipMap;

use crate::iter::{Entry, InternalIter, compare_versions};
use arena::Arena;

/// Bytes of bookkeeping counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 48;

/// A version of a key: ordered by user key ascending, then sequence number
/// descending. Its key and value lie one after the other in its
/// memtable's arena, and a `MemKey` is only read while that memtable is
/// alive: in the memtable's own skip list, or cloned into a [`MemIter`],
/// which holds the memtable. (A [`Probe`]'s key points at the bytes the
/// probe borrows instead, and lives inside the probe.)
#[derive(Clone)]
pub(crate) struct MemKey {
    /// The first 16 bytes of the user key, zero-padded, big-endian: most
    /// comparisons end here, without touching the key's bytes (a cache
    /// miss away).
    prefix: u128,
    /// The user key followed by the value, in the memtable's arena.
    data: NonNull<u8>,
    len: usize,
    key_len: u32,
    pub(crate) seq: u64,
    tombstone: bool,
}

// SAFETY: `data` points to bytes of the memtable's arena, written once
// before the key was built and never again; sharing or sending the key
// only shares reads of them.
#[allow(unsafe_code)]
unsafe impl Send for MemKey {}
#[allow(unsafe_code)]
unsafe impl Sync for MemKey {}

impl MemKey {
    fn data(&self) -> &[u8] {
        // SAFETY: `data .. data + len` was filled by `Arena::store`, whose
        // arena lives as long as the memtable, which outlives every read
        // of its keys; or it is a probe's borrowed key, read only while
        // the probe (and so the borrow) lives (see the type's
        // documentation).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.data.as_ptr(), self.len)
        }
    }

    pub(crate) fn user(&self) -> &[u8] {
        &self.data()[..self.key_len as usize]
    }

    pub(crate) fn value(&self) -> Option<&[u8]> {
        (!self.tombstone).then(|| &self.data()[self.key_len as usize..])
    }
}

impl fmt::Debug for MemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemKey")
            .field("user", &self.user())
            .field("seq", &self.seq)
            .field("value_len", &self.value().map(<[u8]>::len))
            .finish()
    }
}

/// The first 16 bytes of `key`, zero-padded, as a big-endian integer: its
/// order agrees with the order of keys wherever two prefixes differ.
fn prefix_of(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

/// Orders keys by prefix first, then (on a tie) by the whole key.
#[inline]
fn compare_with_prefix(
    a_prefix: u128,
    a: &[u8],
    a_seq: u64,
    b_prefix: u128,
    b: &[u8],
    b_seq: u64,
) -> Ordering {
    a_prefix
        .cmp(&b_prefix)
        .then_with(|| compare_versions(a, a_seq, b, b_seq))
}

/// A key to search for: a [`MemKey`] that borrows the caller's key bytes
/// for `'a`, so that a search compares it with the memtable's keys as one
/// key type (statically dispatched, its prefix computed once) and
/// allocates nothing.
struct Probe<'a> {
    key: MemKey,
    _bytes: PhantomData<&'a [u8]>,
}

impl<'a> Probe<'a> {
    fn new(user: &'a [u8], seq: u64) -> Probe<'a> {
        Probe {
            key: MemKey {
                prefix: prefix_of(user),
                data: NonNull::from(user).cast(),
                len: user.len(),
                key_len: user.len() as u32,
                seq,
                tombstone: true,
            },
            _bytes: PhantomData,
        }
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for MemKey {}
impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemKey {
    // Statically dispatched: this is the comparison inserts make.
    fn cmp(&self, other: &Self) -> Ordering {
        compare_with_prefix(
            self.prefix,
            self.user(),
            self.seq,
            other.prefix,
            other.user(),
            other.seq,
        )
    }
}

/// Recent writes, in memory, belonging to one commit-log segment.
#[derive(Debug)]
pub(crate) struct Memtable {
    /// Its keys point into `arena`: declared first, dropped first.
    map: SkipMap<MemKey, ()>,
    arena: Arena,
    bytes: AtomicUsize,
    /// The commit-log segment that holds these writes.
    log_number: u64,
    /// Highest sequence number inserted.
    max_seq: AtomicU64,
    /// When it was made (the rate it fills at paces flushes).
    created: Instant,
}

impl Memtable {
    /// An empty memtable for segment `log_number`, to be frozen at about
    /// `memtable_bytes` (which sizes its arena's chunks).
    pub(crate) fn new(log_number: u64, memtable_bytes: usize) -> Self {
        Memtable {
            map: SkipMap::new(),
            arena: Arena::new(memtable_bytes),
            bytes: AtomicUsize::new(0),
            log_number,
            max_seq: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// How long ago it was made.
    pub(crate) fn age(&self) -> Duration {
        self.created.elapsed()
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

    /// Inserts one version (`None` is a tombstone), copying key and value
    /// into the arena.
    pub(crate) fn insert(&self, key: &[u8], seq: u64, value: Option<&[u8]>) {
        let value_bytes = value.unwrap_or_default();
        let len = key.len() + value_bytes.len();
        let size = len + ENTRY_OVERHEAD;
        let data = self.arena.store(key, value_bytes);
        self.map.insert(
            MemKey {
                prefix: prefix_of(key),
                data,
                len,
                key_len: key.len() as u32,
                seq,
                tombstone: value.is_none(),
            },
            (),
        );
        self.bytes.fetch_add(size, AtomicOrdering::Relaxed);
        self.max_seq.fetch_max(seq, AtomicOrdering::AcqRel);
    }

    /// The newest version of `key` numbered `<= seq`: `Some(None)` for a
    /// tombstone, `None` if the memtable has no such version.
    pub(crate) fn get(&self, key: &[u8], seq: u64) -> Option<Option<Vec<u8>>> {
        let probe = Probe::new(key, seq);
        let entry = self.map.lower_bound(Bound::Included(&probe.key))?;
        if entry.key().user() != key {
            return None;
        }
        Some(entry.key().value().map(<[u8]>::to_vec))
    }

    /// Every entry in order (user key ascending, newest version first).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], u64, Option<&[u8]>)) {
        for entry in self.map.iter() {
            let k = entry.key();
            f(k.user(), k.seq, k.value());
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
        let lower: Bound<&MemKey> = match (&self.resume, start) {
            (Some(key), _) => Bound::Excluded(key),
            (None, Bound::Included(k)) => {
                probe = Probe::new(k, u64::MAX);
                Bound::Included(&probe.key)
            }
            (None, Bound::Excluded(k)) => {
                probe = Probe::new(k, 0);
                Bound::Excluded(&probe.key)
            }
            (None, Bound::Unbounded) => Bound::Unbounded,
        };
        let mut last = None;
        for entry in self
            .mem
            .map
            .range::<MemKey, _>((lower, Bound::Unbounded))
            .take(CHUNK)
        {
            let k = entry.key();
            self.chunk.push_back(Entry {
                key: k.user().to_vec(),
                seq: k.seq,
                value: k.value().map(<[u8]>::to_vec),
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
        let mem = Memtable::new(1, 1 << 20);
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

    /// Searches compare a probe's borrowed bytes past the 16-byte prefix:
    /// keys that share it, or are prefixes of one another, are told apart,
    /// by `get` and by an iterator's start.
    #[test]
    fn probes_tell_apart_keys_that_share_their_prefix() {
        let keys: [&[u8]; 6] = [
            b"",
            b"abcdefghijklmno",
            b"abcdefghijklmnop",
            b"abcdefghijklmnop\x00",
            b"abcdefghijklmnopq",
            b"abcdefghijklmnopr",
        ];
        let mem = Arc::new(Memtable::new(1, 1 << 20));
        for (i, key) in keys.iter().enumerate() {
            let i = i as u64;
            mem.insert(key, 10 * i + 1, Some(&[i as u8, 1]));
            mem.insert(key, 10 * i + 2, Some(&[i as u8, 2]));
        }
        for (i, key) in keys.iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                mem.get(key, u64::MAX),
                Some(Some(vec![i as u8, 2])),
                "{key:?}"
            );
            assert_eq!(
                mem.get(key, 10 * i + 1),
                Some(Some(vec![i as u8, 1])),
                "{key:?}"
            );
            assert_eq!(mem.get(key, 10 * i), None, "{key:?} before its writes");
        }
        assert_eq!(mem.get(b"abcdefghijklmnop\x01", u64::MAX), None);
        for (i, key) in keys.iter().enumerate() {
            let from = MemIter::new(mem.clone(), Bound::Included(key));
            assert_eq!((from.key(), from.seq()), (*key, 10 * i as u64 + 2));
            let after = MemIter::new(mem.clone(), Bound::Excluded(key));
            match keys.get(i + 1) {
                Some(next) => assert_eq!(after.key(), *next),
                None => assert!(!after.valid()),
            }
        }
    }

    /// Readers racing a writer see each version whole: the key and value
    /// bytes a reader reaches through the skip list were in the arena
    /// before the entry was linked, across many chunks.
    #[test]
    fn readers_racing_the_writer_read_whole_entries() {
        // The key, the sequence number, then filler that depends on both.
        fn value_of(i: u32, seq: u64) -> Vec<u8> {
            let filler = vec![(i as u8) ^ (seq as u8); (i % 200) as usize];
            [&i.to_be_bytes()[..], &seq.to_be_bytes(), &filler].concat()
        }
        let mem = Arc::new(Memtable::new(1, 64 << 10));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2u32)
            .map(|r| {
                let (mem, done) = (mem.clone(), done.clone());
                std::thread::spawn(move || {
                    let (mut i, mut reads) = (r, 0);
                    while !done.load(AtomicOrdering::Acquire) || reads < 1000 {
                        i = (i * 7919 + 1) % 5000;
                        if let Some(Some(value)) = mem.get(&i.to_be_bytes(), u64::MAX) {
                            let seq = u64::from_be_bytes(value[4..12].try_into().unwrap());
                            assert_eq!(value, value_of(i, seq), "key {i}");
                            reads += 1;
                        }
                    }
                })
            })
            .collect();
        for round in 0..4u64 {
            for i in 0..5000u32 {
                let seq = round * 5000 + u64::from(i) + 1;
                mem.insert(&i.to_be_bytes(), seq, Some(&value_of(i, seq)));
            }
        }
        done.store(true, AtomicOrdering::Release);
        for reader in readers {
            reader.join().unwrap();
        }
        for i in 0..5000u32 {
            let seq = 3 * 5000 + u64::from(i) + 1;
            assert_eq!(
                mem.get(&i.to_be_bytes(), u64::MAX),
                Some(Some(value_of(i, seq)))
            );
        }
    }

    #[test]
    fn prefix_order_agrees_with_key_order() {
        let keys: [&[u8]; 7] = [
            b"",
            b"\x00",
            b"ab",
            b"ab\x00",
            b"abcdefghijklmnop",
            b"abcdefghijklmnop\x00",
            b"b",
        ];
        for a in keys {
            for b in keys {
                let fast = compare_with_prefix(prefix_of(a), a, 1, prefix_of(b), b, 1);
                assert_eq!(fast, a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn iterator_crosses_chunks_in_order() {
        let mem = Arc::new(Memtable::new(1, 1 << 20));
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
