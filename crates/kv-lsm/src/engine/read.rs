//! Point reads and scans over the memtables and the tables of one
//! super-version.

use super::*;

/// A scan: the user iterator plus the versions it reads, kept alive.
pub(super) struct Scan {
    iter: UserIter,
    _pin: Arc<SuperVersion>,
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next()
    }
}

impl UserIter {
    /// Skips every version of `key` at the start of the iteration.
    pub(crate) fn skip_key(&mut self, key: &[u8]) {
        self.set_last(key);
    }
}

impl Inner {
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_at(key, self.visible_seq.load(Ordering::Acquire))
    }

    /// The newest version of `key` at or below `seq` (`u64::MAX`: every
    /// version in the memtables, durable or not).
    pub(super) fn get_at(&self, key: &[u8], seq: u64) -> Result<Option<Vec<u8>>> {
        let sv = self.sv.read().clone();
        if let Some(found) = sv.mem.get(key, seq) {
            return Ok(found);
        }
        for imm in &sv.imms {
            if let Some(found) = imm.get(key, seq) {
                return Ok(found);
            }
        }
        Ok(sv.version.get(key, seq)?.flatten())
    }

    pub(super) fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        let seq = self.visible_seq.load(Ordering::Acquire);
        let sv = self.sv.read().clone();
        let mut children: Vec<Box<dyn InternalIter>> = Vec::with_capacity(2 + sv.imms.len());
        children.push(Box::new(MemIter::new(sv.mem.clone(), start)));
        for imm in &sv.imms {
            children.push(Box::new(MemIter::new(imm.clone(), start)));
        }
        children.extend(sv.version.iters(start)?);
        let mut iter = UserIter::new(MergingIter::new(children), seq, end.map(<[u8]>::to_vec));
        // An excluded start: the sources are positioned at or after the key.
        if let Bound::Excluded(k) = start {
            iter.skip_key(k);
        }
        Ok(Scan { iter, _pin: sv })
    }
}
