//! The local versioned store: each key's sibling set as the engine value.

use std::sync::atomic::{AtomicU64, Ordering};

use kv_clock::{DvvSet, VectorClock};
use kv_core::{NodeId, StorageEngine};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::hints::HintStore;

/// A sibling's value: `None` is a tombstone (a delete is a version like
/// any other).
pub type Value = Option<Vec<u8>>;

/// One key's versions.
pub type Siblings = DvvSet<Value>;

/// Locks that serialise read-modify-write of one key.
const STRIPES: usize = 256;

/// This node's copy of the keys it replicates.
///
/// Coordinated writes get a fresh dot at this node; states from peers are
/// merged with [`DvvSet::sync`]. Each change is a read-modify-write of the
/// key's encoded sibling set under a per-key lock.
#[derive(Debug)]
pub struct Replica<E> {
    id: NodeId,
    engine: E,
    hints: HintStore<E>,
    locks: Vec<Mutex<()>>,
    siblings_dropped: AtomicU64,
}

fn stripe(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<E> Replica<E> {
    /// The node this replica belongs to.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Writes held for other replicas.
    pub fn hints(&self) -> &HintStore<E> {
        &self.hints
    }
}

impl<E: StorageEngine> Replica<E> {
    /// The replica of node `id` over `engine`, keeping hints for other
    /// replicas (at most `hint_limit`) in `hint_engine`.
    pub fn new(id: NodeId, engine: E, hint_engine: E, hint_limit: usize) -> Result<Self> {
        Ok(Replica {
            id,
            engine,
            hints: HintStore::open(hint_engine, hint_limit)?,
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            siblings_dropped: AtomicU64::new(0),
        })
    }

    /// A state sent by a coordinator: merged here, or, when it is meant for
    /// another replica (`hint_for`), kept as a hint for it.
    pub fn receive(&self, key: &[u8], state: &[u8], hint_for: Option<NodeId>) -> Result<()> {
        let incoming = Siblings::from_bytes(state)
            .map_err(|e| Error::InvalidInput(format!("peer state: {e}")))?;
        match hint_for {
            Some(owner) if owner != self.id => self.hints.add(owner, key, &incoming),
            _ => self.merge(key, &incoming).map(|_| ()),
        }
    }

    /// The engine underneath.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Siblings dropped by the sibling cap since start.
    pub fn siblings_dropped(&self) -> u64 {
        self.siblings_dropped.load(Ordering::Relaxed)
    }

    /// The stored state of `key` (empty if none).
    pub fn state(&self, key: &[u8]) -> Result<Siblings> {
        match self.engine.get(key)? {
            Some(bytes) => Siblings::from_bytes(&bytes).map_err(|e| Error::Corrupt(e.to_string())),
            None => Ok(Siblings::new()),
        }
    }

    /// A write coordinated here: `value` (a tombstone for `None`)
    /// supersedes exactly what `context` covers and gets a fresh dot at
    /// this node. Returns the new state, already stored.
    pub fn coordinate(
        &self,
        key: &[u8],
        value: Value,
        context: &VectorClock,
        max_siblings: usize,
    ) -> Result<Siblings> {
        let _guard = self.locks[stripe(key)].lock();
        let mut state = self.state(key)?;
        state.update(context, self.id, value, now_secs());
        let dropped = state.truncate_siblings(max_siblings);
        self.siblings_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        self.engine.put(key, &state.to_bytes())?;
        Ok(state)
    }

    /// Merges a peer's state of `key` into ours; returns the merged state.
    pub fn merge(&self, key: &[u8], incoming: &Siblings) -> Result<Siblings> {
        let _guard = self.locks[stripe(key)].lock();
        let mut state = self.state(key)?;
        let before = state.clone();
        state.sync(incoming);
        if state != before {
            self.engine.put(key, &state.to_bytes())?;
        }
        Ok(state)
    }

    /// Merges an encoded peer state.
    pub fn merge_bytes(&self, key: &[u8], incoming: &[u8]) -> Result<Siblings> {
        let incoming = Siblings::from_bytes(incoming)
            .map_err(|e| Error::InvalidInput(format!("peer state: {e}")))?;
        self.merge(key, &incoming)
    }
}
