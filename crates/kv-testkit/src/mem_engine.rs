//! A storage engine over a `BTreeMap`.

use std::collections::BTreeMap;
use std::ops::Bound;

use kv_core::{BatchOp, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch};
use parking_lot::{Condvar, Mutex, RwLock};

/// A [`StorageEngine`] held in memory: a `BTreeMap` behind a lock.
///
/// Durable only as long as the process lives. Scans copy the range at the
/// time of the call, which makes them point-in-time views at the cost of
/// memory for large ranges.
#[derive(Debug, Default)]
pub struct MemEngine {
    state: RwLock<State>,
    /// Set: writes wait (a slow disk) until it is cleared.
    held: Mutex<bool>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    seq: u64,
    /// Set: writes are refused, as a poisoned engine refuses them.
    refusing: Option<String>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.state.read().map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.state.read().map.is_empty()
    }

    /// From now on refuses every write with [`StorageError::Poisoned`]
    /// and `reason`, as a disk engine does after a failed write or sync
    /// (a full disk); `None` accepts writes again (the disk was freed and
    /// the engine reopened). Reads keep working.
    pub fn refuse_writes(&self, reason: Option<String>) {
        self.state.write().refusing = reason;
    }

    /// While `hold` is true, every write waits before it is applied (a
    /// disk that stalls); false lets the waiting writes through.
    pub fn hold_writes(&self, hold: bool) {
        *self.held.lock() = hold;
        self.released.notify_all();
    }

    /// A copy of what the engine holds now: a backup to restore later, or
    /// the synced prefix a crash falls back to.
    pub fn snapshot(&self) -> MemEngine {
        let state = self.state.read();
        MemEngine {
            state: RwLock::new(State {
                map: state.map.clone(),
                seq: state.seq,
                refusing: None,
            }),
            ..MemEngine::default()
        }
    }
}

impl StorageEngine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state.read().map.get(key).cloned())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        {
            let mut held = self.held.lock();
            while *held {
                self.released.wait(&mut held);
            }
        }
        let mut state = self.state.write();
        if let Some(reason) = &state.refusing {
            return Err(StorageError::Poisoned(reason.clone()));
        }
        for op in batch.ops() {
            state.seq += 1;
            match op {
                BatchOp::Put { key, value } => {
                    state.map.insert(key.clone(), value.clone());
                }
                BatchOp::Delete { key } => {
                    state.map.remove(key);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<ScanIter<'_>, StorageError> {
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
            (start, end)
        {
            // BTreeMap::range panics on inverted or empty-exclusive ranges.
            let empty = s > e
                || (s == e && !matches!((start, end), (Bound::Included(_), Bound::Included(_))));
            if empty {
                return Ok(Box::new(std::iter::empty()));
            }
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
            .state
            .read()
            .map
            .range::<[u8], _>((start, end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Box::new(pairs.into_iter().map(Ok)))
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn last_sequence(&self) -> SeqNo {
        SeqNo(self.state.read().seq)
    }

    fn inline_reads(&self) -> bool {
        true
    }

    fn health(&self) -> Result<(), StorageError> {
        match &self.state.read().refusing {
            Some(reason) => Err(StorageError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    crate::engine_conformance!(|| ((), crate::MemEngine::new()));
}
