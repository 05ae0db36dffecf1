//! The local versioned store: each key's sibling set as the engine value.

use std::sync::atomic::{AtomicU64, Ordering};

use kv_clock::{DvvSet, VectorClock};
use kv_core::{NodeId, StorageEngine};
use parking_lot::Mutex;

use std::ops::Bound;
use std::sync::Arc;

use kv_core::Partitioner;

use crate::error::{Error, Result};
use crate::hints::HintStore;
use crate::trees::{Trees, digest};

/// A sibling's value: `None` is a tombstone (a delete is a version like
/// any other).
pub type Value = Option<Vec<u8>>;

/// One key's versions.
pub type Siblings = DvvSet<Value>;

/// A write to coordinate: `value` (a tombstone for `None`) supersedes
/// exactly what `context` covers.
#[derive(Debug, Clone)]
pub struct Update {
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Value,
    /// What the writer saw (the empty clock for a blind write).
    pub context: VectorClock,
}

/// A key's stored state before a batch (`None`: absent), after it, and
/// whether the state after holds only tombstones.
type BeforeAfter = (Option<Vec<u8>>, Vec<u8>, bool);

/// Locks that serialise read-modify-write of one key.
const STRIPES: usize = 256;

/// This node's copy of the keys it replicates.
///
/// Coordinated writes get a fresh dot at this node; states from peers are
/// merged with [`DvvSet::sync`]. Each change is a read-modify-write of the
/// key's encoded sibling set under a per-key lock.
pub struct Replica<E> {
    id: NodeId,
    engine: E,
    hints: HintStore<E>,
    ring: Arc<dyn Partitioner + Send + Sync>,
    n: usize,
    trees: Trees,
    locks: Vec<Mutex<()>>,
    siblings_dropped: AtomicU64,
    clock_entries_pruned: AtomicU64,
    /// Keys whose state holds only tombstones (see `tombstone_keys`).
    tombstones: Mutex<std::collections::BTreeSet<Vec<u8>>>,
}

impl<E: std::fmt::Debug> std::fmt::Debug for Replica<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("n", &self.n)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// How a replica is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// Replicas per key (the cluster's N).
    pub n: usize,
    /// Hints kept for other nodes at most.
    pub hint_limit: usize,
    /// Leaf buckets of each anti-entropy tree (a power of two).
    pub merkle_leaves: u32,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            n: 3,
            hint_limit: 1_000_000,
            merkle_leaves: 1 << 12,
        }
    }
}

fn stripe(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

fn decode(bytes: Option<&[u8]>) -> Result<Siblings> {
    match bytes {
        Some(bytes) => Siblings::from_bytes(bytes).map_err(|e| Error::Corrupt(e.to_string())),
        None => Ok(Siblings::new()),
    }
}

/// Whether a state holds versions and all of them are deletes.
fn only_tombstones(state: &Siblings) -> bool {
    !state.is_empty() && state.values().all(Option::is_none)
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
    /// replicas in `hint_engine`, placing keys with `ring`. Rebuilds the
    /// anti-entropy trees from what `engine` holds.
    ///
    /// # Errors
    ///
    /// Storage errors while scanning the engine, or [`Error::Corrupt`] for a
    /// stored state that does not decode; [`Error::InvalidInput`] for bad
    /// settings.
    pub fn new(
        id: NodeId,
        engine: E,
        hint_engine: E,
        settings: &ReplicaSettings,
        ring: Arc<dyn Partitioner + Send + Sync>,
    ) -> Result<Self> {
        let replica = Replica {
            id,
            engine,
            hints: HintStore::open(hint_engine, settings.hint_limit)?,
            ring,
            n: settings.n,
            trees: Trees::new(settings.merkle_leaves)?,
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            siblings_dropped: AtomicU64::new(0),
            clock_entries_pruned: AtomicU64::new(0),
            tombstones: Mutex::new(std::collections::BTreeSet::new()),
        };
        replica.fill_trees()?;
        Ok(replica)
    }

    fn fill_trees(&self) -> Result<()> {
        for item in self.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            let (key, state) = item?;
            self.track(&key, None, Some(&state));
            if only_tombstones(&decode(Some(&state))?) {
                self.tombstones.lock().insert(key);
            }
        }
        Ok(())
    }

    /// Rebuilds the anti-entropy trees from the stored keys, for a ring
    /// that changed (which keys each peer shares with this node changes
    /// with it). Call it after the partitioner answers with the new ring.
    /// Writes wait while it runs: every key lock is held, so no change is
    /// counted twice or missed.
    ///
    /// # Errors
    ///
    /// Storage errors, or a stored state that does not decode.
    pub fn rebuild_trees(&self) -> Result<()> {
        let _guards: Vec<_> = self.locks.iter().map(|l| l.lock()).collect();
        self.trees.clear();
        self.fill_trees()
    }

    /// Whether this node is one of `key`'s replicas under the current ring.
    pub fn replicates(&self, key: &[u8]) -> bool {
        self.ring
            .preference_list(key, self.n)
            .is_ok_and(|list| list.contains(&self.id))
    }

    /// The other replicas of `key` (whose trees it belongs to). None when
    /// this node is not a replica of `key` (a key left behind by a ring
    /// change): such a key is in no tree, so it never shows as a
    /// difference between true replicas.
    fn peers(&self, key: &[u8]) -> Vec<NodeId> {
        match self.ring.preference_list(key, self.n) {
            Ok(list) if list.contains(&self.id) => {
                list.into_iter().filter(|&p| p != self.id).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Updates the trees for a change of `key` from `old` to `new` state.
    fn track(&self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) {
        self.trees
            .update(&self.peers(key), key, old.map(digest), new.map(digest));
    }

    /// Deletes `key` if its stored state is exactly `expected` (tombstone
    /// collection; a write that arrived meanwhile keeps the key).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn reap(&self, key: &[u8], expected: &[u8]) -> Result<bool> {
        let _guard = self.locks[stripe(key)].lock();
        let current = self.engine.get(key)?;
        if current.as_deref() != Some(expected) {
            return Ok(false);
        }
        self.engine.delete(key)?;
        self.track(key, Some(expected), None);
        self.tombstones.lock().remove(key);
        Ok(true)
    }

    /// The keys stored here, with their states (for maintenance passes).
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn scan_states(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            out.push(item?);
        }
        Ok(out)
    }

    /// One page of range streaming (joins and leaves): the stored keys
    /// after `after` (from the first key when `None`), in key order, whose
    /// token falls in one of `ranges`; at most `limit` keys or about
    /// `max_bytes` of states. Returns the page and the key to continue
    /// after, `None` when the scan reached the end.
    #[allow(clippy::type_complexity)]
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn range_page(
        &self,
        ranges: &[kv_core::TokenRange],
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.engine.scan(start, Bound::Unbounded)? {
            let (key, state) = item?;
            let token = self.ring.token(&key);
            if ranges.iter().any(|r| r.contains(token)) {
                bytes += key.len() + state.len();
                out.push((key.clone(), state));
                if out.len() >= limit.max(1) || bytes >= max_bytes {
                    return Ok((out, Some(key)));
                }
            }
        }
        Ok((out, None))
    }

    /// Anti-entropy, responder side: answers an encoded exchange request
    /// from `peer` about the keys both replicate.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a request that does not decode or a peer
    /// this node shares no tree with.
    pub fn answer_exchange(&self, peer: NodeId, request: &[u8]) -> Result<Vec<u8>> {
        let message =
            kv_merkle::Message::decode(request).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let kv_merkle::Message::Compare(compare) = message else {
            return Err(Error::InvalidInput("expected a comparison request".into()));
        };
        let answer = self
            .trees
            .with(peer, |tree| kv_merkle::respond(tree, &compare))
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(kv_merkle::Message::Differences(answer).encode())
    }

    /// The states of the keys shared with `peer` that fall in `buckets`.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn bucket_states(&self, peer: NodeId, buckets: &[u32]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let wanted: std::collections::BTreeSet<u32> = buckets.iter().copied().collect();
        let mut out = Vec::new();
        for item in self.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            let (key, state) = item?;
            if wanted.contains(&self.trees.bucket(&key)) && self.peers(&key).contains(&peer) {
                out.push((key, state));
            }
        }
        Ok(out)
    }

    /// Runs `f` on this node's tree for `peer`.
    pub fn with_tree<R>(&self, peer: NodeId, f: impl FnOnce(&kv_merkle::MerkleTree) -> R) -> R {
        self.trees.with(peer, f)
    }

    /// Leaf buckets of the anti-entropy trees.
    pub fn merkle_leaves(&self) -> u32 {
        self.trees.leaves()
    }

    /// A state sent by a coordinator: merged here, or, when it is meant for
    /// another replica (`hint_for`), kept as a hint for it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a state that does not decode; storage
    /// errors.
    pub fn receive(&self, key: &[u8], state: &[u8], hint_for: Option<NodeId>) -> Result<()> {
        let incoming = Siblings::from_bytes(state)
            .map_err(|e| Error::InvalidInput(format!("peer state: {e}")))?;
        match hint_for {
            Some(owner) if owner != self.id => self.hints.add(owner, key, &incoming),
            _ => self.merge(key, &incoming).map(|_| ()),
        }
    }

    /// Many states sent by coordinators, as [`receive`](Self::receive)
    /// would take them one by one, but the merges are written as one
    /// engine batch (one commit-log record, one sync). Returns one result
    /// per item, in order.
    pub fn receive_many(&self, items: &[(Vec<u8>, Vec<u8>, Option<NodeId>)]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(items.len());
        let mut merges: Vec<(usize, Siblings)> = Vec::new();
        for (i, (key, state, hint_for)) in items.iter().enumerate() {
            let incoming = match Siblings::from_bytes(state) {
                Ok(s) => s,
                Err(e) => {
                    results.push(Err(Error::InvalidInput(format!("peer state: {e}"))));
                    continue;
                }
            };
            match hint_for {
                Some(owner) if *owner != self.id => {
                    results.push(self.hints.add(*owner, key, &incoming));
                }
                _ => {
                    results.push(Ok(()));
                    merges.push((i, incoming));
                }
            }
        }
        if merges.is_empty() {
            return results;
        }
        let keys: Vec<&[u8]> = merges.iter().map(|(i, _)| items[*i].0.as_slice()).collect();
        let merged = self.apply_many(&keys, |j, state| {
            state.sync(&merges[j].1);
            Ok(())
        });
        for ((i, _), result) in merges.iter().zip(merged) {
            results[*i] = result;
        }
        results
    }

    /// Applies `change` to the stored state of each of `keys` in order,
    /// under the keys' locks. A key may come more than once: each change
    /// sees the state the previous one left. Every state that changed (as
    /// bytes: equality of clocks ignores the pruning timestamps, and
    /// replicas must converge on identical bytes, which the anti-entropy
    /// digests hash) is written in one engine batch: one commit-log record,
    /// one sync. Returns each change's result; a change that failed leaves
    /// its key as it was, and a failed engine write fails them all.
    fn apply_many<T>(
        &self,
        keys: &[&[u8]],
        mut change: impl FnMut(usize, &mut Siblings) -> Result<T>,
    ) -> Vec<Result<T>> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _guards: Vec<_> = stripes.iter().map(|&s| self.locks[s].lock()).collect();
        // The state of each key as this batch leaves it, and what it was
        // before the batch.
        let mut current: std::collections::HashMap<&[u8], BeforeAfter> =
            std::collections::HashMap::with_capacity(keys.len());
        let mut results = Vec::with_capacity(keys.len());
        for (i, &key) in keys.iter().enumerate() {
            let before = match current.get(key) {
                Some((_, now, _)) => Some(now.clone()),
                None => match self.engine.get(key) {
                    Ok(b) => b,
                    Err(e) => {
                        results.push(Err(e.into()));
                        continue;
                    }
                },
            };
            let mut state = match decode(before.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let outcome = change(i, &mut state);
            if outcome.is_ok() {
                let original = current
                    .remove(key)
                    .map_or(before, |(original, ..)| original);
                current.insert(key, (original, state.to_bytes(), only_tombstones(&state)));
            }
            results.push(outcome);
        }
        let mut batch = kv_core::WriteBatch::new();
        let mut changes = Vec::new();
        for (key, (before, after, deletes_only)) in current {
            if before.as_deref() != Some(after.as_slice()) {
                batch.put(key.to_vec(), after.clone());
                changes.push((key, before, after, deletes_only));
            }
        }
        if !changes.is_empty()
            && let Err(e) = self.engine.write(batch)
        {
            let message = e.to_string();
            return results
                .into_iter()
                .map(|r| {
                    r.and_then(|_| Err(Error::Storage(kv_core::StorageError::Io(message.clone()))))
                })
                .collect();
        }
        if !changes.is_empty() {
            let mut tombstones = self.tombstones.lock();
            for (key, _, _, deletes_only) in &changes {
                if *deletes_only {
                    tombstones.insert(key.to_vec());
                } else {
                    tombstones.remove(*key);
                }
            }
        }
        for (key, before, after, _) in changes {
            self.track(key, before.as_deref(), Some(&after));
        }
        results
    }

    /// The keys whose stored state holds only tombstones: the candidates
    /// for tombstone collection, kept as writes happen, so that collecting
    /// does not scan the store.
    pub fn tombstone_keys(&self) -> Vec<Vec<u8>> {
        self.tombstones.lock().iter().cloned().collect()
    }

    /// The engine underneath.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Clock entries removed by pruning since start.
    pub fn clock_entries_pruned(&self) -> u64 {
        self.clock_entries_pruned.load(Ordering::Relaxed)
    }

    /// Siblings dropped by the sibling cap since start.
    pub fn siblings_dropped(&self) -> u64 {
        self.siblings_dropped.load(Ordering::Relaxed)
    }

    /// The stored state of `key` (empty if none).
    ///
    /// # Errors
    ///
    /// Storage errors, or [`Error::Corrupt`] for a stored state that does not
    /// decode.
    pub fn state(&self, key: &[u8]) -> Result<Siblings> {
        decode(self.engine.get(key)?.as_deref())
    }

    /// A write coordinated here: `value` (a tombstone for `None`)
    /// supersedes exactly what `context` covers and gets a fresh dot at
    /// this node. Returns the new state, already stored, and the new
    /// version's dot.
    ///
    /// # Errors
    ///
    /// Storage errors, or [`Error::Corrupt`] for a stored state that does not
    /// decode.
    pub fn coordinate(
        &self,
        key: &[u8],
        value: Value,
        context: &VectorClock,
        max_siblings: usize,
        prune: &kv_clock::PrunePolicy,
    ) -> Result<(Siblings, kv_clock::Dot)> {
        let update = Update {
            key: key.to_vec(),
            value,
            context: context.clone(),
        };
        self.coordinate_many(vec![update], max_siblings, prune)
            .pop()
            .unwrap_or_else(|| Err(Error::Corrupt("a batch of one gave no result".into())))
    }

    /// Many writes coordinated here, as [`coordinate`](Self::coordinate)
    /// would make them one by one (in order: two writes of one key are
    /// concurrent siblings unless the second's context covers the first),
    /// but stored as one engine batch: one commit-log record, one sync.
    /// Returns each write's new state and dot, in order.
    pub fn coordinate_many(
        &self,
        updates: Vec<Update>,
        max_siblings: usize,
        prune: &kv_clock::PrunePolicy,
    ) -> Vec<Result<(Siblings, kv_clock::Dot)>> {
        let mut owned = Vec::with_capacity(updates.len());
        let mut writes = Vec::with_capacity(updates.len());
        for u in updates {
            owned.push(u.key);
            writes.push((Some(u.value), u.context));
        }
        let keys: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let now = now_secs();
        self.apply_many(&keys, |i, state| {
            let (value, context) = &mut writes[i];
            let dot = state.update(context, self.id, value.take().flatten(), now);
            let pruned = state.prune(prune, now, self.id);
            self.clock_entries_pruned
                .fetch_add(pruned as u64, Ordering::Relaxed);
            let dropped = state.truncate_siblings(max_siblings);
            self.siblings_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            Ok((state.clone(), dot))
        })
    }

    /// Merges a peer's state of `key` into ours; returns the merged state.
    ///
    /// # Errors
    ///
    /// Storage errors, or [`Error::Corrupt`] for a stored state that does not
    /// decode.
    pub fn merge(&self, key: &[u8], incoming: &Siblings) -> Result<Siblings> {
        self.apply_many(&[key], |_, state| {
            state.sync(incoming);
            Ok(state.clone())
        })
        .pop()
        .unwrap_or_else(|| Err(Error::Corrupt("a batch of one gave no result".into())))
    }

    /// Merges an encoded peer state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an incoming state that does not decode;
    /// otherwise as [`merge`](Self::merge).
    pub fn merge_bytes(&self, key: &[u8], incoming: &[u8]) -> Result<Siblings> {
        let incoming = Siblings::from_bytes(incoming)
            .map_err(|e| Error::InvalidInput(format!("peer state: {e}")))?;
        self.merge(key, &incoming)
    }
}
