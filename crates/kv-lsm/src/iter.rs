//! Iterators over versioned entries, and the user-facing scan.

use std::cmp::Ordering;
use std::ops::Bound;

use crate::error::Result;

/// An owned versioned entry (memtable chunks hold these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: Vec<u8>,
    pub(crate) seq: u64,
    /// `None` for a tombstone.
    pub(crate) value: Option<Vec<u8>>,
}

/// A cursor over versioned entries in (user key ascending, sequence
/// descending) order.
pub(crate) trait InternalIter: Send {
    /// Whether the cursor is on an entry.
    fn valid(&self) -> bool;
    /// The current user key; only when valid.
    fn key(&self) -> &[u8];
    /// The current sequence number; only when valid.
    fn seq(&self) -> u64;
    /// The current value (`None` for a tombstone); only when valid.
    fn value(&self) -> Option<&[u8]>;
    /// Moves to the next entry.
    fn advance(&mut self) -> Result<()>;
}

/// Bytewise order of two keys, comparing eight bytes at a time (short
/// keys are the common case, where a call to `memcmp` costs more than the
/// comparison).
#[inline]
pub(crate) fn compare_keys(a: &[u8], b: &[u8]) -> Ordering {
    let mut a_words = a.chunks_exact(8);
    let mut b_words = b.chunks_exact(8);
    for (x, y) in (&mut a_words).zip(&mut b_words) {
        let mut xa = [0u8; 8];
        let mut ya = [0u8; 8];
        xa.copy_from_slice(x);
        ya.copy_from_slice(y);
        let (x, y) = (u64::from_be_bytes(xa), u64::from_be_bytes(ya));
        if x != y {
            return x.cmp(&y);
        }
    }
    let done = a.len().min(b.len()) / 8 * 8;
    a[done..].cmp(&b[done..])
}

/// Orders two versioned keys: user key ascending, then sequence descending.
#[inline]
pub(crate) fn compare_versions(a: &[u8], a_seq: u64, b: &[u8], b_seq: u64) -> Ordering {
    compare_keys(a, b).then_with(|| b_seq.cmp(&a_seq))
}

/// The merge of several cursors. Children earlier in the list win ties
/// (equal key and sequence cannot occur between different sources, but the
/// rule keeps the order total).
pub(crate) struct MergingIter {
    children: Vec<Box<dyn InternalIter>>,
    current: Option<usize>,
}

impl MergingIter {
    pub(crate) fn new(children: Vec<Box<dyn InternalIter>>) -> Self {
        let mut merged = MergingIter {
            children,
            current: None,
        };
        merged.pick();
        merged
    }

    fn pick(&mut self) {
        let mut best: Option<usize> = None;
        for (i, child) in self.children.iter().enumerate() {
            if !child.valid() {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) => {
                    let other = &self.children[b];
                    if compare_versions(child.key(), child.seq(), other.key(), other.seq())
                        == Ordering::Less
                    {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        self.current = best;
    }
}

impl InternalIter for MergingIter {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn key(&self) -> &[u8] {
        self.current.map_or(&[], |i| self.children[i].key())
    }

    fn seq(&self) -> u64 {
        self.current.map_or(0, |i| self.children[i].seq())
    }

    fn value(&self) -> Option<&[u8]> {
        self.current.and_then(|i| self.children[i].value())
    }

    fn advance(&mut self) -> Result<()> {
        if let Some(i) = self.current {
            self.children[i].advance()?;
            self.pick();
        }
        Ok(())
    }
}

/// The user-facing view: for each user key the newest version numbered at
/// or below the read sequence, tombstones hidden, up to an end bound.
pub(crate) struct UserIter {
    inner: MergingIter,
    read_seq: u64,
    end: Bound<Vec<u8>>,
    /// The user key last decided on (emitted or hidden).
    last: Option<Vec<u8>>,
    done: bool,
}

impl UserIter {
    pub(crate) fn new(inner: MergingIter, read_seq: u64, end: Bound<Vec<u8>>) -> Self {
        UserIter {
            inner,
            read_seq,
            end,
            last: None,
            done: false,
        }
    }

    /// Marks `key` as decided, so its versions are skipped.
    pub(crate) fn set_last(&mut self, key: &[u8]) {
        self.last = Some(key.to_vec());
    }

    fn past_end(&self, key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(end) => key > end.as_slice(),
            Bound::Excluded(end) => key >= end.as_slice(),
            Bound::Unbounded => false,
        }
    }

    fn step(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        while !self.done && self.inner.valid() {
            let key = self.inner.key();
            if self.past_end(key) {
                self.done = true;
                break;
            }
            if self.inner.seq() > self.read_seq || self.last.as_deref() == Some(key) {
                self.inner.advance()?;
                continue;
            }
            // The newest visible version of a new user key.
            let found = self.inner.value().map(|v| (key.to_vec(), v.to_vec()));
            match &mut self.last {
                Some(last) => {
                    last.clear();
                    last.extend_from_slice(self.inner.key());
                }
                None => self.last = Some(self.inner.key().to_vec()),
            }
            self.inner.advance()?;
            if found.is_some() {
                return Ok(found);
            }
        }
        self.done = true;
        Ok(None)
    }
}

impl Iterator for UserIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(pair)) => Some(Ok(pair)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A cursor over an owned, sorted list (tests and small sources).
#[cfg(test)]
pub(crate) struct VecIter {
    entries: Vec<Entry>,
    at: usize,
}

#[cfg(test)]
impl VecIter {
    pub(crate) fn new(entries: Vec<Entry>) -> Self {
        VecIter { entries, at: 0 }
    }
}

#[cfg(test)]
impl InternalIter for VecIter {
    fn valid(&self) -> bool {
        self.at < self.entries.len()
    }
    fn key(&self) -> &[u8] {
        &self.entries[self.at].key
    }
    fn seq(&self) -> u64 {
        self.entries[self.at].seq
    }
    fn value(&self) -> Option<&[u8]> {
        self.entries[self.at].value.as_deref()
    }
    fn advance(&mut self) -> Result<()> {
        self.at += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, seq: u64, value: Option<&str>) -> Entry {
        Entry {
            key: key.as_bytes().to_vec(),
            seq,
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    #[test]
    fn word_comparison_matches_slice_order() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"abcdefgh".to_vec(),
            b"abcdefgh\x00".to_vec(),
            b"abcdefgi".to_vec(),
            b"abcdefghabcdefgh".to_vec(),
            b"abcdefghabcdefgg\xff".to_vec(),
            vec![0xff; 9],
            vec![0xff; 17],
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    compare_keys(a, b),
                    a.as_slice().cmp(b.as_slice()),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn newest_visible_version_wins_and_tombstones_hide() {
        let newer = VecIter::new(vec![
            e("a", 9, None),
            e("b", 8, Some("b8")),
            e("c", 20, Some("c20")),
        ]);
        let older = VecIter::new(vec![
            e("a", 1, Some("a1")),
            e("b", 2, Some("b2")),
            e("c", 3, Some("c3")),
            e("d", 4, Some("d4")),
        ]);
        let merged = MergingIter::new(vec![Box::new(newer), Box::new(older)]);
        let pairs: Vec<_> = UserIter::new(merged, 10, Bound::Excluded(b"d".to_vec()))
            .map(|r| r.unwrap())
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        // a: deleted at 9; b: 8 beats 2; c: 20 is above the read seq so 3.
        assert_eq!(
            pairs,
            [("b".into(), "b8".into()), ("c".into(), "c3".into())]
        );
    }
}
