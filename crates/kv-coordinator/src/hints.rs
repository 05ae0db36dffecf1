//! Hinted handoff: writes held for a replica that could not take them.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

use kv_core::{NodeId, StorageEngine};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::replica::Siblings;

/// Hints kept in a storage engine of their own (durable when the engine
/// is, so they survive a restart), keyed by intended owner then key. A
/// second hint for the same owner and key is merged into the first, so one
/// delivery carries both. Bounded in count; every hint stored and
/// delivered is counted.
#[derive(Debug)]
pub struct HintStore<E> {
    engine: E,
    limit: usize,
    count: Mutex<usize>,
    stored: AtomicU64,
    delivered: AtomicU64,
}

fn hint_key(owner: NodeId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&owner.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl<E: StorageEngine> HintStore<E> {
    /// Opens the hints in `engine`, holding at most `limit`.
    ///
    /// # Errors
    ///
    /// Storage errors reading the hints already stored.
    pub fn open(engine: E, limit: usize) -> Result<Self> {
        let count = engine.scan(Bound::Unbounded, Bound::Unbounded)?.count();
        Ok(HintStore {
            engine,
            limit,
            count: Mutex::new(count),
            stored: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        })
    }

    /// Hints pending.
    pub fn len(&self) -> usize {
        *self.count.lock()
    }

    /// Whether no hint is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hints stored since start.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Hints delivered (and acknowledged) since start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Keeps `state` of `key` for `owner`, merged with any hint already
    /// held. Refused when the store is full.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the store is full (the limit); storage
    /// errors.
    pub fn add(&self, owner: NodeId, key: &[u8], state: &Siblings) -> Result<()> {
        let mut count = self.count.lock();
        let k = hint_key(owner, key);
        let merged = match self.engine.get(&k)? {
            Some(bytes) => {
                let mut held =
                    Siblings::from_bytes(&bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
                held.sync(state);
                held
            }
            None => {
                if *count >= self.limit {
                    return Err(Error::InvalidInput(format!(
                        "hint store is full ({} hints)",
                        self.limit
                    )));
                }
                *count += 1;
                state.clone()
            }
        };
        self.engine.put(&k, &merged.to_bytes())?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a hint for `key` is pending, for any owner.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn holds_key(&self, key: &[u8]) -> Result<bool> {
        for item in self.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            let (k, _) = item?;
            if k.len() >= 8 && &k[8..] == key {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The owners with pending hints.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn owners(&self) -> Result<Vec<NodeId>> {
        Ok(self.counts()?.into_iter().map(|(owner, _)| owner).collect())
    }

    /// How many hints are held for each owner, by owner id.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn counts(&self) -> Result<Vec<(NodeId, u64)>> {
        let mut counts: Vec<(NodeId, u64)> = Vec::new();
        for item in self.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            let (k, _) = item?;
            if k.len() >= 8 {
                let mut id = [0u8; 8];
                id.copy_from_slice(&k[..8]);
                let owner = NodeId(u64::from_be_bytes(id));
                match counts.last_mut() {
                    Some((last, n)) if *last == owner => *n += 1,
                    _ => counts.push((owner, 1)),
                }
            }
        }
        Ok(counts)
    }

    /// Up to `limit` pending hints for `owner`: (key, encoded state).
    ///
    /// # Errors
    ///
    /// Storage errors, or a stored hint that does not decode.
    pub fn pending(&self, owner: NodeId, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = owner.0.to_be_bytes();
        let end = owner.0.checked_add(1).map(u64::to_be_bytes);
        let end_bound = match &end {
            Some(e) => Bound::Excluded(&e[..]),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self
            .engine
            .scan(Bound::Included(&start[..]), end_bound)?
            .take(limit)
        {
            let (k, v) = item?;
            out.push((k[8..].to_vec(), v));
        }
        Ok(out)
    }

    /// Forgets the hint for `owner` and `key` once delivered, unless a
    /// newer hint was merged into it meanwhile (then it is kept for the
    /// next delivery).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn delivered_one(&self, owner: NodeId, key: &[u8], delivered_state: &[u8]) -> Result<bool> {
        let mut count = self.count.lock();
        let k = hint_key(owner, key);
        match self.engine.get(&k)? {
            Some(current) if current == delivered_state => {
                self.engine.delete(&k)?;
                *count -= 1;
                self.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
