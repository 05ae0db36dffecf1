//! Hinted handoff: writes held for a replica that could not take them.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

use kv_core::{NodeId, StorageEngine};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::versions::Siblings;

/// How much a [`HintStore`] holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintLimits {
    /// Hints at most (one per owner and key).
    pub count: usize,
    /// Bytes of hinted states at most.
    pub bytes: u64,
}

impl Default for HintLimits {
    /// A million hints, 1 GiB.
    fn default() -> Self {
        HintLimits {
            count: 1_000_000,
            bytes: 1 << 30,
        }
    }
}

/// One hint waiting for its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The key.
    pub key: Vec<u8>,
    /// The encoded state to deliver.
    pub state: Vec<u8>,
    /// When the oldest write merged into this hint was stored (seconds
    /// since the Unix epoch).
    pub stored_at: u64,
}

/// The owner under which states set aside as undecodable are kept: never
/// a node (node ids that author versions fit in 32 bits).
const QUARANTINE: [u8; 8] = u64::MAX.to_be_bytes();

/// First byte of an encoded hint: the format.
const HINT_FORMAT: u8 = 0xB1;

fn hint_key(owner: NodeId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&owner.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn encode_hint(stored_at: u64, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + state.len());
    out.push(HINT_FORMAT);
    out.extend_from_slice(&stored_at.to_be_bytes());
    out.extend_from_slice(state);
    out
}

/// (stored_at, state) of an encoded hint.
fn decode_hint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&format, rest) = bytes.split_first()?;
    if format != HINT_FORMAT || rest.len() < 8 {
        return None;
    }
    let (at, state) = rest.split_at(8);
    let mut raw = [0u8; 8];
    raw.copy_from_slice(at);
    Some((u64::from_be_bytes(raw), state))
}

#[derive(Debug, Default)]
struct Totals {
    count: usize,
    bytes: u64,
    /// The oldest `stored_at` of any hint (a lower bound: deliveries do
    /// not raise it, sweeps recompute it).
    oldest: Option<u64>,
    /// The oldest `stored_at` added since the running sweep began.
    since_sweep: Option<u64>,
}

/// Hints kept in a storage engine of their own (durable when the engine
/// is, so they survive a restart), keyed by intended owner then key. A
/// second hint for the same owner and key is merged into the first, so one
/// delivery carries both; the merged hint keeps the older time.
///
/// Bounded in count and in bytes. A hint older than the tombstone grace
/// period is dropped, never delivered: its key's tombstone may have been
/// collected meanwhile, and the old value would come back. Every hint
/// stored, delivered and expired is counted.
///
/// The same engine keeps the states that a replica set aside because they
/// did not decode (the quarantine), under an owner no node has.
#[derive(Debug)]
pub struct HintStore<E> {
    engine: E,
    limits: HintLimits,
    totals: Mutex<Totals>,
    stored: AtomicU64,
    delivered: AtomicU64,
    expired: AtomicU64,
    quarantined: AtomicU64,
}

impl<E: StorageEngine> HintStore<E> {
    /// Opens the hints in `engine`, holding at most `limits`. A stored hint
    /// that does not decode is moved to the quarantine.
    ///
    /// # Errors
    ///
    /// Storage errors reading the hints already stored.
    pub fn open(engine: E, limits: HintLimits) -> Result<Self> {
        let store = HintStore {
            engine,
            limits,
            totals: Mutex::new(Totals::default()),
            stored: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
        };
        let mut totals = Totals::default();
        let mut bad = Vec::new();
        let mut quarantined = 0;
        for item in store.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            let (k, v) = item?;
            if k.starts_with(&QUARANTINE) {
                quarantined += 1;
                continue;
            }
            match decode_hint(&v) {
                Some((at, state)) if k.len() > 8 => {
                    totals.count += 1;
                    totals.bytes += state.len() as u64;
                    totals.oldest = Some(totals.oldest.map_or(at, |o| o.min(at)));
                }
                _ => bad.push((k, v)),
            }
        }
        store.quarantined.store(quarantined, Ordering::Relaxed);
        for (k, v) in bad {
            store.quarantine(&k, &v)?;
            store.engine.delete(&k)?;
        }
        *store.totals.lock() = totals;
        Ok(store)
    }

    /// The engine the hints are stored in (for backups).
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Hints pending.
    pub fn len(&self) -> usize {
        self.totals.lock().count
    }

    /// Bytes of hinted states pending.
    pub fn bytes(&self) -> u64 {
        self.totals.lock().bytes
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

    /// Hints dropped unsent since start because they outlived the
    /// tombstone grace period.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// States held in the quarantine.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Keeps `state` of `key` for `owner` at time `now` (seconds since the
    /// Unix epoch), merged with any hint already held. Refused when the
    /// store is full, by count or by bytes.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the store is full (the limits); storage
    /// errors.
    pub fn add(&self, owner: NodeId, key: &[u8], state: &Siblings, now: u64) -> Result<()> {
        let mut totals = self.totals.lock();
        let k = hint_key(owner, key);
        let held = match self.engine.get(&k)? {
            Some(bytes) => match decode_hint(&bytes) {
                Some((at, held)) => Some((
                    at,
                    held.len() as u64,
                    Siblings::from_bytes(held).map_err(|e| Error::Corrupt(e.to_string()))?,
                )),
                None => None,
            },
            None => None,
        };
        let (stored_at, old_bytes, merged) = match held {
            Some((at, len, mut merged)) => {
                merged.sync(state);
                (at.min(now), len, merged)
            }
            None => (now, 0, state.clone()),
        };
        let bytes = merged.to_bytes();
        let new_count = totals.count + usize::from(old_bytes == 0);
        let new_bytes = totals.bytes - old_bytes + bytes.len() as u64;
        if new_count > self.limits.count || new_bytes > self.limits.bytes {
            return Err(Error::InvalidInput(format!(
                "hint store is full ({} hints, {} bytes; limits {} hints, {} bytes)",
                totals.count, totals.bytes, self.limits.count, self.limits.bytes
            )));
        }
        self.engine.put(&k, &encode_hint(stored_at, &bytes))?;
        totals.count = new_count;
        totals.bytes = new_bytes;
        totals.oldest = Some(totals.oldest.map_or(stored_at, |o| o.min(stored_at)));
        totals.since_sweep = Some(totals.since_sweep.map_or(stored_at, |o| o.min(stored_at)));
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a hint for `key` is pending, for any owner.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn holds_key(&self, key: &[u8]) -> Result<bool> {
        for item in self
            .engine
            .scan(Bound::Unbounded, Bound::Excluded(&QUARANTINE[..]))?
        {
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
        for item in self
            .engine
            .scan(Bound::Unbounded, Bound::Excluded(&QUARANTINE[..]))?
        {
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

    /// Up to `limit` pending hints for `owner`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn pending(&self, owner: NodeId, limit: usize) -> Result<Vec<Hint>> {
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
            if let Some((stored_at, state)) = decode_hint(&v) {
                out.push(Hint {
                    key: k[8..].to_vec(),
                    state: state.to_vec(),
                    stored_at,
                });
            }
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
        let removed = self.remove_if(owner, key, delivered_state)?;
        if removed {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(removed)
    }

    /// Drops the hint for `owner` and `key` unsent because it expired
    /// (unless it changed meanwhile), and counts it.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn expire_one(&self, owner: NodeId, key: &[u8], state: &[u8]) -> Result<bool> {
        let removed = self.remove_if(owner, key, state)?;
        if removed {
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
        Ok(removed)
    }

    fn remove_if(&self, owner: NodeId, key: &[u8], expected_state: &[u8]) -> Result<bool> {
        let mut totals = self.totals.lock();
        let k = hint_key(owner, key);
        match self.engine.get(&k)? {
            Some(current)
                if decode_hint(&current).is_some_and(|(_, state)| state == expected_state) =>
            {
                self.engine.delete(&k)?;
                totals.count = totals.count.saturating_sub(1);
                totals.bytes = totals.bytes.saturating_sub(expected_state.len() as u64);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Drops every hint stored before `cutoff` (seconds since the Unix
    /// epoch), for any owner, and returns how many. Cheap when no hint is
    /// that old: the store remembers a bound on its oldest hint.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn expire_before(&self, cutoff: u64) -> Result<usize> {
        {
            let mut totals = self.totals.lock();
            if totals.oldest.is_none_or(|o| o >= cutoff) {
                return Ok(0);
            }
            totals.since_sweep = None;
        }
        let mut old = Vec::new();
        let mut oldest: Option<u64> = None;
        for item in self
            .engine
            .scan(Bound::Unbounded, Bound::Excluded(&QUARANTINE[..]))?
        {
            let (k, v) = item?;
            if let Some((at, state)) = decode_hint(&v) {
                if at < cutoff {
                    old.push((k, state.to_vec()));
                } else {
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        let mut dropped = 0;
        for (k, state) in old {
            let mut id = [0u8; 8];
            id.copy_from_slice(&k[..8]);
            let owner = NodeId(u64::from_be_bytes(id));
            dropped += usize::from(self.expire_one(owner, &k[8..], &state)?);
        }
        let mut totals = self.totals.lock();
        totals.oldest = match (oldest, totals.since_sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(dropped)
    }

    /// Keeps `bytes`, the stored state of `key` that did not decode, in
    /// the quarantine (a later copy of the same key replaces it).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn quarantine(&self, key: &[u8], bytes: &[u8]) -> Result<()> {
        let mut k = QUARANTINE.to_vec();
        k.extend_from_slice(key);
        self.engine.put(&k, bytes)?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The states in the quarantine: (key, stored bytes).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn quarantine_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .engine
            .scan(Bound::Included(&QUARANTINE[..]), Bound::Unbounded)?
        {
            let (k, v) = item?;
            out.push((k[8..].to_vec(), v));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_clock::VectorClock;
    use kv_core::ActorId;
    use kv_testkit::MemEngine as Map;

    fn state(value: &[u8]) -> Siblings {
        let mut s = Siblings::new();
        s.update(&VectorClock::new(), ActorId(1), Some(value.to_vec()), 0)
            .unwrap();
        s
    }

    #[test]
    fn bounded_by_bytes_as_well_as_count() {
        let limits = HintLimits {
            count: 100,
            bytes: 64,
        };
        let store = HintStore::open(Map::new(), limits).unwrap();
        store.add(NodeId(2), b"a", &state(&[0; 20]), 10).unwrap();
        assert!(store.bytes() > 20);
        let err = store
            .add(NodeId(2), b"b", &state(&[0; 40]), 10)
            .unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(store.len(), 1);
        // Delivering frees the bytes.
        let hint = store.pending(NodeId(2), 10).unwrap().remove(0);
        assert!(
            store
                .delivered_one(NodeId(2), &hint.key, &hint.state)
                .unwrap()
        );
        assert_eq!((store.len(), store.bytes()), (0, 0));
        store.add(NodeId(2), b"b", &state(&[0; 40]), 10).unwrap();
    }

    #[test]
    fn old_hints_expire_and_a_merge_keeps_the_older_time() {
        let store = HintStore::open(Map::new(), HintLimits::default()).unwrap();
        store.add(NodeId(2), b"a", &state(b"x"), 100).unwrap();
        store.add(NodeId(2), b"a", &state(b"y"), 500).unwrap();
        store.add(NodeId(3), b"b", &state(b"z"), 400).unwrap();
        let pending = store.pending(NodeId(2), 10).unwrap();
        assert_eq!(
            pending[0].stored_at, 100,
            "the merged hint keeps the older time"
        );
        assert_eq!(store.expire_before(50).unwrap(), 0);
        assert_eq!(store.expire_before(300).unwrap(), 1);
        assert_eq!(store.expired(), 1);
        assert_eq!(store.owners().unwrap(), vec![NodeId(3)]);
        assert_eq!(store.expire_before(300).unwrap(), 0);
        assert_eq!(store.expire_before(401).unwrap(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn undecodable_hints_are_quarantined_at_open() {
        let engine = Map::new();
        engine.put(&hint_key(NodeId(2), b"k"), b"garbage").unwrap();
        engine
            .put(
                &hint_key(NodeId(2), b"ok"),
                &encode_hint(5, &state(b"v").to_bytes()),
            )
            .unwrap();
        let store = HintStore::open(engine, HintLimits::default()).unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.quarantined(), 1);
        assert_eq!(
            store.quarantine_entries().unwrap(),
            vec![(hint_key(NodeId(2), b"k"), b"garbage".to_vec())]
        );
        // The quarantine is no owner.
        assert_eq!(store.owners().unwrap(), vec![NodeId(2)]);
        assert!(!store.holds_key(b"k").unwrap());
    }
}
