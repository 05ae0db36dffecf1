//! The local versioned store: each key's sibling set as the engine value.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kv_clock::VectorClock;
use kv_core::{ActorId, NodeId, StorageEngine};
use parking_lot::Mutex;

use std::ops::Bound;
use std::sync::Arc;

use kv_core::Partitioner;

mod feed;

use crate::error::{Error, Result};
use crate::hints::{HintLimits, HintStore};
use crate::trees::{Trees, digest};

pub use crate::versions::{Siblings, Value};

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
    /// The client's name for the write, when it may send it again: an
    /// attempt that finds its write already here stores nothing new.
    pub write: Option<kv_core::WriteTag>,
    /// When the value lapses (seconds since the Unix epoch); `None`: never.
    pub expires: Option<u64>,
}

/// A key's stored state before a batch (`None`: absent), after it, and
/// whether the state after holds only tombstones.
type BeforeAfter = (Option<Vec<u8>>, Vec<u8>, bool);

/// Changes made at this replica whose engine write may not be durable yet
/// ([`StorageEngine::write_deferred`]): [`finish`](Self::finish) awaits
/// it and gives each change's result, a failed sync failing them all.
#[derive(Debug)]
#[must_use = "changes are acknowledged only once finished"]
pub struct Pending<T> {
    results: Vec<Result<T>>,
    durable: Option<kv_core::Durable>,
}

impl<T> Pending<T> {
    /// Each change's result, once the engine write is durable.
    pub async fn finish(self) -> Vec<Result<T>> {
        match self.durable {
            None => self.results,
            Some(durable) => settle(self.results, durable.await),
        }
    }

    /// Each change's result as made, not yet durable, and the wait for
    /// the engine write to be: for callers that each wait on their own
    /// (the coordinator's batch of writes ends when they are made, and
    /// the next one is made while this one syncs).
    /// A write already durable (any policy but `Always`) is settled here,
    /// with nothing to share.
    pub(crate) fn into_parts(self) -> (Vec<Result<T>>, Stored) {
        match self.durable {
            None => (self.results, Stored::done()),
            Some(durable) => match durable.outcome() {
                Some(outcome) => (settle(self.results, outcome), Stored::done()),
                None => (
                    self.results,
                    Stored(Some(futures_util::FutureExt::shared(durable))),
                ),
            },
        }
    }

    /// As [`finish`](Self::finish), blocking the calling thread.
    pub fn wait(self) -> Vec<Result<T>> {
        match self.durable {
            None => self.results,
            Some(durable) => settle(self.results, durable.wait()),
        }
    }
}

fn settle<T>(
    results: Vec<Result<T>>,
    durable: std::result::Result<(), kv_core::StorageError>,
) -> Vec<Result<T>> {
    match durable {
        Ok(()) => results,
        Err(e) => failed_with(results, &e),
    }
}

/// The sync of one engine batch of changes, which each of its changes
/// awaits on its own ([`Pending::into_parts`]).
#[derive(Clone)]
pub(crate) struct Stored(Option<futures_util::future::Shared<kv_core::Durable>>);

impl Stored {
    /// Already durable (a write made on a blocking thread, which waited,
    /// or one whose policy does not wait for a sync).
    pub(crate) fn done() -> Self {
        Stored(None)
    }

    /// Once the batch is durable; the engine's own error (as
    /// [`Pending::finish`] gives it) if it could not be made so.
    pub(crate) async fn wait(self) -> Result<()> {
        match self.0 {
            None => Ok(()),
            Some(durable) => durable.await.map_err(Error::Storage),
        }
    }
}

/// Every change that succeeded fails with the engine's own error, its
/// kind kept (a poisoned engine is not a passing I/O error).
fn failed_with<T>(results: Vec<Result<T>>, e: &kv_core::StorageError) -> Vec<Result<T>> {
    results
        .into_iter()
        .map(|r| r.and_then(|_| Err(Error::Storage(e.clone()))))
        .collect()
}

/// Runs a call into the storage engine on tokio's blocking pool, so that
/// engine work (an fsync under `Durability::Always`) never stalls the
/// threads that serve requests.
pub(crate) async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(format!("the engine task: {e}")))?
}

/// Locks that serialise read-modify-write of one key.
const STRIPES: usize = 256;

/// The largest counter a context may carry. No incarnation of a node
/// issues this many dots (2^48: a century at 100,000 writes a second);
/// a larger counter is forged, and is refused before it can exhaust a
/// key's counters.
pub const MAX_COUNTER: u64 = 1 << 48;

/// This node's copy of the keys it replicates.
///
/// Coordinated writes get a fresh dot at this node; states from peers are
/// merged with [`DvvSet::sync`](kv_clock::DvvSet::sync). Each change is a read-modify-write of the
/// key's encoded sibling set under a per-key lock.
///
/// Dots are unique for the life of the cluster: the actor is this node in
/// its current epoch (a fresh one every start, see [`ActorId`]), and
/// within an epoch the counters come from one node-wide sequence, so a
/// key whose state was reaped or lost can never be given a counter it had
/// before.
pub struct Replica<E> {
    id: NodeId,
    actor: ActorId,
    /// The largest counter `actor` has issued (or seen in a state): every
    /// new dot is numbered above it.
    issued: AtomicU64,
    max_state_bytes: usize,
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
    /// Operator repairs of this replica running (see `begin_repair`).
    repairs: Arc<AtomicUsize>,
    /// The changes of stored states, while someone watches.
    feed: feed::ChangeLog,
}

/// An operator's repair of a replica, running until this is dropped
/// ([`Replica::begin_repair`]).
#[derive(Debug)]
pub struct RepairRunning(Arc<AtomicUsize>);

impl Drop for RepairRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    /// Hints kept for other nodes at most, by count and by bytes.
    pub hints: HintLimits,
    /// Leaf buckets of each anti-entropy tree (a power of two).
    pub merkle_leaves: u32,
    /// This start's epoch: the actor of the dots this replica issues is
    /// the node in this epoch. A node must use a fresh epoch, made durable
    /// first, every time it starts (kv-server's node does); 0 only where
    /// the local state never goes backwards (tests, simulations).
    pub epoch: u32,
    /// Largest encoded state of one key (all its siblings): a write that
    /// would store more is refused on its own. Keep it within the engine's
    /// value limit and the transport's message limit.
    pub max_state_bytes: usize,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            n: 3,
            hints: HintLimits::default(),
            merkle_leaves: 1 << 12,
            epoch: 0,
            max_state_bytes: 48 << 20,
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

/// Refuses a client context that no honest history produces: a counter of
/// this node's own actor above what it issued, or any counter above
/// [`MAX_COUNTER`]. Such a context would otherwise push the key's counters
/// to their end (later writes of the key failing) or claim to have seen
/// writes that do not exist.
fn check_context(context: &VectorClock, actor: ActorId, issued: u64) -> Result<()> {
    let own = context.get(actor);
    if own > issued {
        return Err(Error::InvalidInput(format!(
            "the context claims dot {actor}:{own}, which this node has not issued (it issued up to {issued})"
        )));
    }
    if let Some(e) = context.entries().iter().find(|e| e.counter > MAX_COUNTER) {
        return Err(Error::InvalidInput(format!(
            "the context's counter {} for {} is above any counter a node issues ({MAX_COUNTER})",
            e.counter, e.actor
        )));
    }
    Ok(())
}

/// Whether a state holds versions and every one is a delete or a value
/// that lapses: a candidate for collection (see `tombstone_keys`).
fn only_tombstones(state: &Siblings) -> bool {
    !state.is_empty()
        && state
            .siblings()
            .iter()
            .all(|s| s.value.is_none() || s.expires.is_some())
}

/// About how many bytes of keys one page of key listing holds (at least
/// one key).
pub const KEY_PAGE_BYTES: usize = 1 << 20;

/// The first key after every key that starts with `prefix`; `None` when
/// there is none (an empty prefix, or one of only 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl<E> Replica<E> {
    /// The node this replica belongs to.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The actor of the dots this replica issues: its node in this epoch.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// The largest counter this replica's actor has issued so far.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }

    /// Writes held for other replicas.
    pub fn hints(&self) -> &HintStore<E> {
        &self.hints
    }

    /// The log of changes kept for watchers.
    pub(crate) fn change_log(&self) -> &feed::ChangeLog {
        &self.feed
    }
}

impl<E: StorageEngine> Replica<E> {
    /// The replica of node `id` over `engine`, keeping hints for other
    /// replicas in `hint_engine`, placing keys with `ring`. Rebuilds the
    /// anti-entropy trees from what `engine` holds.
    ///
    /// # Errors
    ///
    /// A stored state that does not decode is moved to the quarantine
    /// (kept in the hint engine, counted in
    /// [`HintStore::quarantined`]) and the key starts empty here; the other
    /// replicas still hold it, and anti-entropy brings it back.
    ///
    /// # Errors
    ///
    /// Storage errors while scanning the engine; [`Error::InvalidInput`]
    /// for bad settings (a node id that cannot be an actor).
    pub fn new(
        id: NodeId,
        engine: E,
        hint_engine: E,
        settings: &ReplicaSettings,
        ring: Arc<dyn Partitioner + Send + Sync>,
    ) -> Result<Self> {
        let actor = ActorId::of(id, settings.epoch).ok_or_else(|| {
            Error::InvalidInput(format!(
                "node id {} is above {}, the largest that can author versions",
                id.0,
                ActorId::MAX_NODE
            ))
        })?;
        let replica = Replica {
            id,
            actor,
            issued: AtomicU64::new(0),
            max_state_bytes: settings.max_state_bytes,
            engine,
            hints: HintStore::open(hint_engine, settings.hints)?,
            ring,
            n: settings.n,
            trees: Trees::new(settings.merkle_leaves)?,
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            siblings_dropped: AtomicU64::new(0),
            clock_entries_pruned: AtomicU64::new(0),
            tombstones: Mutex::new(std::collections::BTreeSet::new()),
            repairs: Arc::default(),
            feed: feed::ChangeLog::new(settings.epoch),
        };
        replica.fill_trees()?;
        Ok(replica)
    }

    fn fill_trees(&self) -> Result<()> {
        let mut bad = Vec::new();
        for item in self.engine.scan(Bound::Unbounded, Bound::Unbounded)? {
            let (key, state) = item?;
            match decode(Some(&state)) {
                Ok(decoded) => {
                    self.track(&key, None, Some(&state));
                    self.observe_counter(&decoded);
                    if only_tombstones(&decoded) {
                        self.tombstones.lock().insert(key);
                    }
                }
                Err(_) => bad.push((key, state)),
            }
        }
        for (key, state) in bad {
            self.set_aside(&key, &state)?;
        }
        Ok(())
    }

    /// Raises the issued counter to what `state` holds of this actor (a
    /// state from a peer may carry dots of this epoch it has not stored).
    fn observe_counter(&self, state: &Siblings) {
        let own = state.context().get(self.actor);
        if own > 0 {
            self.issued.fetch_max(own, Ordering::SeqCst);
        }
    }

    /// Moves a stored state that does not decode to the quarantine and
    /// removes it from the store (the caller holds the key's lock, or no
    /// write runs yet).
    fn set_aside(&self, key: &[u8], state: &[u8]) -> Result<()> {
        self.hints.quarantine(key, state)?;
        self.engine.delete(key)?;
        Ok(())
    }

    /// A stored state, decoded; one that does not decode is set aside and
    /// the key reads as empty.
    fn load(&self, key: &[u8], bytes: Option<Vec<u8>>) -> Result<(Option<Vec<u8>>, Siblings)> {
        match decode(bytes.as_deref()) {
            Ok(state) => Ok((bytes, state)),
            Err(_) => {
                if let Some(b) = &bytes {
                    self.set_aside(key, b)?;
                }
                Ok((None, Siblings::new()))
            }
        }
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

    /// The keys stored here, with their states (with the `test-util`
    /// feature: tests compare whole replicas).
    ///
    /// # Errors
    ///
    /// Storage errors.
    #[cfg(feature = "test-util")]
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

    /// One page of key listing: the keys stored here that this node
    /// replicates, start with `query.prefix`, come after `query.after`
    /// and before `query.end`, and hold a live value, in key order; at most `query.limit` of
    /// them and about [`KEY_PAGE_BYTES`] of keys, looking at no more than
    /// `query.max_scanned` stored keys.
    /// The page's `next` is the last key it covers when a budget ended
    /// it, `None` when it reached the end of the prefix.
    ///
    /// # Errors
    ///
    /// Storage errors; [`Error::Corrupt`] for a stored state that does not
    /// decode.
    pub fn key_page(&self, query: &kv_core::KeyQuery) -> Result<kv_core::KeyPage> {
        let end_key = match (prefix_end(&query.prefix), &query.end) {
            (Some(a), Some(b)) => Some(a.min(b.clone())),
            (a, b) => a.or_else(|| b.clone()),
        };
        let start = match query.after.as_deref() {
            Some(after) if after >= query.prefix.as_slice() => Bound::Excluded(after),
            _ if query.prefix.is_empty() => Bound::Unbounded,
            _ => Bound::Included(query.prefix.as_slice()),
        };
        let mut page = kv_core::KeyPage::default();
        if let (Bound::Excluded(after), Some(end)) = (start, end_key.as_deref())
            && after >= end
        {
            return Ok(page);
        }
        let end = end_key.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let (limit, budget) = (query.limit.max(1) as usize, query.max_scanned.max(1));
        let (mut scanned, mut bytes) = (0u32, 0usize);
        let now = kv_core::unix_secs();
        for item in self.engine.scan(start, end)? {
            let (key, state) = item?;
            scanned += 1;
            if self.replicates(&key) {
                let state = Siblings::from_bytes(&state).map_err(|e| {
                    Error::Corrupt(format!("{}: {e}", String::from_utf8_lossy(&key)))
                })?;
                if state.live_values(now).any(Option::is_some) {
                    bytes += key.len();
                    page.keys.push(key.clone());
                }
            }
            if page.keys.len() >= limit || scanned >= budget || bytes >= KEY_PAGE_BYTES {
                page.next = Some(key);
                return Ok(page);
            }
        }
        Ok(page)
    }

    /// Anti-entropy, responder side: answers an encoded exchange request
    /// from `peer` about the keys both replicate.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a request that does not decode or a peer
    /// this node shares no tree with; [`Error::Busy`] while an operator's
    /// repair of this replica runs ([`begin_repair`](Self::begin_repair)).
    pub fn answer_exchange(&self, peer: NodeId, request: &[u8]) -> Result<Vec<u8>> {
        if self.repair_running() {
            return Err(Error::Busy(format!(
                "node {} is running an operator repair, which exchanges with every peer; \
                 exchanges it did not start wait until it is done",
                self.id
            )));
        }
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

    /// One page of the states of the keys shared with `peer` that fall in
    /// the query's buckets (anti-entropy, both sides): the keys after
    /// `query.after` up to `until` (inclusive; the end of the store when
    /// `None`), until the page's byte or scan budget is spent. The page's
    /// `next` is the last key it covers when a budget ended it, `None`
    /// when it covers the whole interval.
    ///
    /// # Errors
    ///
    /// Storage errors.
    pub fn bucket_page(
        &self,
        peer: NodeId,
        query: &kv_core::BucketQuery,
        until: Option<&[u8]>,
    ) -> Result<kv_core::BucketPage> {
        let wanted: std::collections::BTreeSet<u32> = query.buckets.iter().copied().collect();
        let start = query
            .after
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let end = until.map_or(Bound::Unbounded, Bound::Included);
        let (max_bytes, max_scanned) = (query.max_bytes as usize, query.max_scanned.max(1));
        let mut page = kv_core::BucketPage::default();
        let (mut bytes, mut scanned) = (0usize, 0u32);
        let mut previous: Option<Vec<u8>> = None;
        for item in self.engine.scan(start, end)? {
            let (key, state) = item?;
            if wanted.contains(&self.trees.bucket(&key)) && self.peers(&key).contains(&peer) {
                let size = key.len() + state.len();
                // A state that would take the page past its budget starts
                // the next one (a page holds at least one key).
                if !page.states.is_empty() && bytes + size > max_bytes {
                    page.next = previous;
                    return Ok(page);
                }
                bytes += size;
                page.states.push((key.clone(), state));
            }
            scanned += 1;
            if bytes >= max_bytes || scanned >= max_scanned {
                page.next = Some(key);
                return Ok(page);
            }
            previous = Some(key);
        }
        Ok(page)
    }

    /// Merges each of `items` (key, encoded state from a peer) into this
    /// replica, all in one engine batch; returns per item whether the
    /// stored state changed and the state as merged here.
    ///
    /// # Errors
    ///
    /// Per item: [`Error::InvalidInput`] for a state that does not decode,
    /// storage errors.
    pub(crate) fn merge_many(&self, items: &[(Vec<u8>, Vec<u8>)]) -> Vec<Result<(bool, Vec<u8>)>> {
        let incoming: Vec<std::result::Result<Siblings, String>> = items
            .iter()
            .map(|(_, state)| Siblings::from_bytes(state).map_err(|e| format!("peer state: {e}")))
            .collect();
        let keys: Vec<&[u8]> = items.iter().map(|(k, _)| k.as_slice()).collect();
        self.apply_many(
            &keys,
            |j, state| {
                let theirs = incoming[j]
                    .as_ref()
                    .map_err(|e| Error::InvalidInput(e.clone()))?;
                let before = state.to_bytes();
                state.sync(theirs);
                let after = state.to_bytes();
                Ok((before != after, after))
            },
            |_| {},
        )
    }

    /// Runs `f` on this node's tree for `peer`.
    pub fn with_tree<R>(&self, peer: NodeId, f: impl FnOnce(&kv_merkle::MerkleTree) -> R) -> R {
        self.trees.with(peer, f)
    }

    /// How many peers this replica keeps an anti-entropy tree for (the
    /// nodes it shares keys with; with the `test-util` feature).
    #[cfg(feature = "test-util")]
    pub fn trees_kept(&self) -> usize {
        self.trees.count()
    }

    /// Leaf buckets of the anti-entropy trees.
    pub fn merkle_leaves(&self) -> u32 {
        self.trees.leaves()
    }

    /// Marks an operator's repair of this replica as running until the
    /// returned guard is dropped. Meanwhile the replica answers no peer's
    /// anti-entropy exchange ([`Error::Busy`]) and its own background
    /// exchanges pause: the repair reconciles with every peer in turn, and
    /// an exchange started beside it would move the same keys a second
    /// time, on the same two cores.
    pub fn begin_repair(&self) -> RepairRunning {
        self.repairs.fetch_add(1, Ordering::AcqRel);
        RepairRunning(self.repairs.clone())
    }

    /// Whether an operator's repair of this replica is running.
    pub fn repair_running(&self) -> bool {
        self.repairs.load(Ordering::Acquire) > 0
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
            Some(owner) if owner != self.id => {
                self.hints.add(owner, key, &incoming, kv_core::unix_secs())
            }
            _ => self.merge(key, &incoming).map(|_| ()),
        }
    }

    /// Many states sent by coordinators, as [`receive`](Self::receive)
    /// would take them one by one, but the merges are written as one
    /// engine batch (one commit-log record, one sync). Returns one result
    /// per item, in order.
    pub fn receive_many(&self, items: &[(Vec<u8>, Vec<u8>, Option<NodeId>)]) -> Vec<Result<()>> {
        self.receive_changes(items).wait()
    }

    /// [`receive_many`](Self::receive_many) for an async caller that the
    /// engine lets write inline ([`inline_writes`](Self::inline_writes)):
    /// the merges are made at once and acknowledged when the returned
    /// [`Pending`] finishes, with no blocking thread waiting for their
    /// sync. `None` when the engine's write may wait
    /// ([`inline_writes`](Self::inline_writes) is false) or an item is a
    /// hint for another node (the hint store writes with a blocking sync):
    /// use `receive_many` on a blocking thread then.
    pub fn receive_many_deferred(
        &self,
        items: &[(Vec<u8>, Vec<u8>, Option<NodeId>)],
    ) -> Option<Pending<()>> {
        let hint = |item: &(Vec<u8>, Vec<u8>, Option<NodeId>)| item.2.is_some_and(|o| o != self.id);
        if !self.inline_writes() || items.iter().any(hint) {
            return None;
        }
        Some(self.receive_changes(items))
    }

    fn receive_changes(&self, items: &[(Vec<u8>, Vec<u8>, Option<NodeId>)]) -> Pending<()> {
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
                    results.push(self.hints.add(*owner, key, &incoming, kv_core::unix_secs()));
                }
                _ => {
                    results.push(Ok(()));
                    merges.push((i, incoming));
                }
            }
        }
        if merges.is_empty() {
            return Pending {
                results,
                durable: None,
            };
        }
        let keys: Vec<&[u8]> = merges.iter().map(|(i, _)| items[*i].0.as_slice()).collect();
        let merged = self.apply_changes(
            &keys,
            |j, state| {
                state.sync(&merges[j].1);
                Ok(())
            },
            |_| {},
        );
        for ((i, _), result) in merges.iter().zip(merged.results) {
            results[*i] = result;
        }
        Pending {
            results,
            durable: merged.durable,
        }
    }

    /// Applies `change` to the stored state of each of `keys` in order,
    /// under the keys' locks. A key may come more than once: each change
    /// sees the state the previous one left. Every state that changed (as
    /// bytes: equality of clocks ignores the pruning timestamps, and
    /// replicas must converge on identical bytes, which the anti-entropy
    /// digests hash) is written in one engine batch: one commit-log record,
    /// one sync. Returns each change's result; a change that failed leaves
    /// its key as it was, and a failed engine write fails them all.
    /// `announce` is given the changes' results once they are made, before
    /// the engine write (still under the keys' locks).
    fn apply_many<T>(
        &self,
        keys: &[&[u8]],
        change: impl FnMut(usize, &mut Siblings) -> Result<T>,
        announce: impl FnOnce(&[Result<T>]),
    ) -> Vec<Result<T>> {
        self.apply_changes(keys, change, announce).wait()
    }

    /// [`apply_many`](Self::apply_many) up to the engine write, made with
    /// [`StorageEngine::write_deferred`]: the changes are made (a later
    /// change of the same keys builds on them, read with
    /// [`StorageEngine::get_latest`], so the key locks need not span the
    /// sync) but acknowledged only once the returned [`Pending`] has
    /// finished or been waited for.
    fn apply_changes<T>(
        &self,
        keys: &[&[u8]],
        mut change: impl FnMut(usize, &mut Siblings) -> Result<T>,
        announce: impl FnOnce(&[Result<T>]),
    ) -> Pending<T> {
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
            let loaded = match current.get(key) {
                Some((_, now, _)) => decode(Some(now)).map(|s| (Some(now.clone()), s)),
                // Including writes not yet durable: they are made, and
                // this change builds on them.
                None => self
                    .engine
                    .get_latest(key)
                    .map_err(Error::from)
                    .and_then(|b| self.load(key, b)),
            };
            let (before, mut state) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let outcome = change(i, &mut state).and_then(|out| {
                let bytes = state.to_bytes();
                if bytes.len() > self.max_state_bytes {
                    return Err(Error::InvalidInput(format!(
                        "the key's state would take {} bytes with this write, above the limit of {} bytes (values and siblings together)",
                        bytes.len(),
                        self.max_state_bytes
                    )));
                }
                Ok((out, bytes))
            });
            let outcome = match outcome {
                Ok((out, bytes)) => {
                    self.observe_counter(&state);
                    let original = current
                        .remove(key)
                        .map_or(before, |(original, ..)| original);
                    current.insert(key, (original, bytes, only_tombstones(&state)));
                    Ok(out)
                }
                Err(e) => Err(e),
            };
            results.push(outcome);
        }
        announce(&results);
        let mut batch = kv_core::WriteBatch::new();
        let mut changes = Vec::new();
        for (key, (before, after, deletes_only)) in current {
            if before.as_deref() != Some(after.as_slice()) {
                batch.put(key.to_vec(), after.clone());
                changes.push((key, before, after, deletes_only));
            }
        }
        let mut durable = None;
        if !changes.is_empty() {
            match self.engine.write_deferred(batch) {
                Ok(d) => durable = Some(d),
                Err(e) => {
                    return Pending {
                        results: failed_with(results, &e),
                        durable: None,
                    };
                }
            }
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
            self.feed.record(key, after);
        }
        Pending { results, durable }
    }

    /// The keys whose stored state holds only tombstones: the candidates
    /// for tombstone collection, kept as writes happen, so that collecting
    /// does not scan the store.
    pub fn tombstone_keys(&self) -> Vec<Vec<u8>> {
        self.tombstones.lock().iter().cloned().collect()
    }

    /// Whether this replica's storage still accepts writes (see
    /// [`StorageEngine::health`]).
    ///
    /// # Errors
    ///
    /// The engine's reason for refusing writes.
    pub fn health(&self) -> Result<()> {
        Ok(self.engine.health()?)
    }

    /// The engine underneath.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Whether a change written now through the deferred calls
    /// ([`receive_many_deferred`](Self::receive_many_deferred), the
    /// coordinator's local writes) returns in microseconds, so an async
    /// caller may make it inline and await its sync instead of using a
    /// blocking thread ([`StorageEngine::inline_writes`] of the data
    /// engine). The key locks a change takes are then never held across a
    /// sync either.
    pub fn inline_writes(&self) -> bool {
        self.engine.inline_writes()
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
            write: None,
            expires: None,
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
        self.coordinate_many_pending(updates, max_siblings, prune, |_| {})
            .wait()
    }

    /// As [`coordinate_many`](Self::coordinate_many), giving `announce`
    /// each write's new state and dot as soon as they are made, before they
    /// are stored (and synced): a coordinator can send them to the other
    /// replicas while its own copy is being written. That is safe for the
    /// dots: each one's counter is already below this actor's `issued`
    /// mark, so a local write that then fails never lets the counter be
    /// issued again, and a crash before the sync restarts in a new epoch.
    /// The writes are acknowledged once the returned [`Pending`] finishes
    /// (async, when [`inline_writes`](Self::inline_writes) allows) or is
    /// waited for (on a blocking thread).
    pub(crate) fn coordinate_many_pending(
        &self,
        updates: Vec<Update>,
        max_siblings: usize,
        prune: &kv_clock::PrunePolicy,
        announce: impl FnOnce(&[Result<(Siblings, kv_clock::Dot)>]),
    ) -> Pending<(Siblings, kv_clock::Dot)> {
        let mut owned = Vec::with_capacity(updates.len());
        let mut writes = Vec::with_capacity(updates.len());
        for u in updates {
            owned.push(u.key);
            writes.push((Some(u.value), u.context, u.write, u.expires));
        }
        let keys: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let now = kv_core::unix_secs();
        self.apply_changes(
            &keys,
            |i, state| {
            let (value, context, write, expires) = &mut writes[i];
            // Under the key's lock: every counter this actor issued for
            // the key is at most `issued`, whatever the state remembers.
            let issued = self.issued.load(Ordering::SeqCst);
            check_context(context, self.actor, issued)?;
            let dot = state
                .update_expiring(
                    context,
                    self.actor,
                    issued,
                    value.take().flatten(),
                    *write,
                    *expires,
                    now,
                )
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            // An attempt that found its write answers with that write's
            // dot, which another actor may have issued.
            if dot.actor == self.actor {
                if dot.counter > MAX_COUNTER {
                    return Err(Error::InvalidInput(format!(
                        "{} has issued {MAX_COUNTER} dots in this epoch; restart the node to take a new epoch",
                        self.actor
                    )));
                }
                self.issued.fetch_max(dot.counter, Ordering::SeqCst);
            }
            let pruned = state.prune(prune, now, self.actor);
            self.clock_entries_pruned
                .fetch_add(pruned as u64, Ordering::Relaxed);
            let dropped = state.truncate_siblings(max_siblings);
            self.siblings_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            Ok((state.clone(), dot))
            },
            announce,
        )
    }

    /// Merges a peer's state of `key` into ours; returns the merged state.
    ///
    /// # Errors
    ///
    /// Storage errors, or [`Error::Corrupt`] for a stored state that does not
    /// decode.
    pub fn merge(&self, key: &[u8], incoming: &Siblings) -> Result<Siblings> {
        self.apply_many(
            &[key],
            |_, state| {
                state.sync(incoming);
                Ok(state.clone())
            },
            |_| {},
        )
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
