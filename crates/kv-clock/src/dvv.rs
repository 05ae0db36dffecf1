//! Dotted version vector sets: one key's siblings and their causal context.

use std::cmp::Ordering;
use std::fmt;

use kv_core::{ActorId, WriteTag};

use crate::codec::ValueCodec;
use crate::error::{CounterOverflow, DecodeError, Result};
use crate::prune::PrunePolicy;
use crate::vclock::VectorClock;
use kv_core::codec::{Reader, put_varint};

/// One event: the `counter`-th write coordinated by `actor`.
///
/// A dot names exactly one value for the lifetime of a key: an actor never
/// issues the same counter twice, because it numbers a new write above
/// every counter it has seen for itself and above a floor the caller
/// keeps for what the local state may have forgotten (see
/// [`DvvSet::update_above`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The coordinator that made the write (a node in one epoch).
    pub actor: ActorId,
    /// Its position in that coordinator's sequence for this key (from 1).
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// A value together with the dot that created it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sibling<V> {
    /// The write that created the value.
    pub dot: Dot,
    /// The value (a tombstone, if `V` can express one).
    pub value: V,
    /// The client's name for the write, when it gave one: two siblings
    /// with the same tag id are two copies of one write (attempts that
    /// reached different coordinators), and only one is kept.
    pub write: Option<WriteTag>,
    /// The dots of the other copies of this write that were merged into
    /// this one (ascending; empty for an untagged write). A context that
    /// covers any of them has seen the write, so supersedes this sibling
    /// as it would the copy it saw.
    pub copies: Vec<Dot>,
    /// When the value lapses (seconds since the Unix epoch), for a write
    /// given a time to live; `None` for one that never does. Part of the
    /// version, so every replica holds the same time: from then on every
    /// replica reads the value as absent, and it is collected like a
    /// tombstone.
    pub expires: Option<u64>,
}

impl<V> Sibling<V> {
    /// Whether the value has lapsed at `now` (seconds since the Unix
    /// epoch).
    pub fn lapsed(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// Whether `context` covers this sibling's dot or the dot of any
    /// other copy of its write.
    pub fn covered_by(&self, context: &VectorClock) -> bool {
        context.covers(self.dot.actor, self.dot.counter)
            || self
                .copies
                .iter()
                .any(|d| context.covers(d.actor, d.counter))
    }

    /// The write tag's id, if any.
    fn id(&self) -> Option<u64> {
        self.write.map(|t| t.id)
    }
}

/// A superseded copy of a tagged write: its tag id and dot, and when this
/// state learnt that it was superseded (seconds).
///
/// Another copy of the same write may still be on its way; when it
/// arrives it is recognised by its id and dropped, instead of coming back
/// as a sibling of the write that superseded it. A copy that met a retry
/// (`lasting`: an earlier attempt may be on a node that is down or cut
/// off) is remembered for the pruning policy's `old` (the tombstone grace,
/// as the store sets it), like a tombstone. Any other tagged copy is
/// remembered briefly ([`BRIEF_SECS`], at most [`BRIEF_CAP`] per key, the
/// newest): long enough for a hedged attempt still being stored elsewhere
/// to arrive, without a record per overwrite for the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Retired {
    /// The write's tag id.
    pub id: u64,
    /// The dot of the copy that was superseded.
    pub dot: Dot,
    /// When it was superseded (seconds of the recording node's clock).
    pub stamp: u64,
    /// Whether it is kept for the grace period (the copy met a retry).
    pub lasting: bool,
}

/// How long a superseded copy of a write that met no retry is remembered.
pub const BRIEF_SECS: u64 = 60;

/// How many superseded copies of writes that met no retry a key remembers.
pub const BRIEF_CAP: usize = 8;

/// The versions of one key that no other version supersedes, with the
/// causal context that covers them: a dotted version vector set.
///
/// The state is a version vector (the *context*: every event this replica
/// knows of for the key) and a set of dotted values (the *siblings*). Every
/// sibling's dot is covered by the context; a dot the context covers but no
/// sibling carries was superseded.
///
/// - [`DvvSet::update`]: a coordinator's new write from a client context.
///   The new dot is numbered above every counter this replica has seen for
///   its actor, and exactly the siblings the client context covers are
///   discarded. Two clients writing with the same context through the same
///   coordinator therefore become two siblings, never one lost write.
/// - [`DvvSet::sync`]: merging a peer's state; commutative, associative and
///   idempotent, so replicas converge whatever the order of exchanges.
/// - [`DvvSet::values`] and [`DvvSet::context`]: what a read returns.
///
/// This is the representation of Almeida et al.'s "dotted version vector
/// sets" as a causal context plus dotted values; it gives the same
/// guarantees as Riak's `dvvset` module.
///
/// ```
/// use kv_clock::{DvvSet, VectorClock};
/// use kv_core::NodeId;
///
/// let coordinator = NodeId(1);
/// let mut key: DvvSet<&str> = DvvSet::new();
///
/// // Two clients both read the empty key and write through one coordinator.
/// let empty = VectorClock::new();
/// key.update(&empty, coordinator, "from alice", 0)?;
/// key.update(&empty, coordinator, "from bob", 0)?;
/// assert_eq!(key.values().count(), 2); // siblings, nothing lost
///
/// // A client that read both siblings resolves them with that context.
/// let context = key.context().clone();
/// key.update(&context, coordinator, "merged", 0)?;
/// assert_eq!(key.values().collect::<Vec<_>>(), [&"merged"]);
/// # Ok::<(), kv_clock::CounterOverflow>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DvvSet<V> {
    context: VectorClock,
    /// Sorted by dot, dots unique, each covered by `context`; no two
    /// share a write tag id.
    siblings: Vec<Sibling<V>>,
    /// Superseded copies of retried writes, sorted by id, ids unique;
    /// each dot covered by `context`.
    retired: Vec<Retired>,
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        DvvSet {
            context: VectorClock::new(),
            siblings: Vec::new(),
            retired: Vec::new(),
        }
    }
}

/// Encoding format version of a sibling set: 2 adds write tags and the
/// retired list; 1 (no tags) still decodes.
const DVV_VERSION: u8 = 2;
const DVV_VERSION_UNTAGGED: u8 = 1;

/// Sibling flags in the encoding.
const HAS_WRITE_ID: u8 = 1;
const IS_RETRY: u8 = 2;
const HAS_COPIES: u8 = 4;
const HAS_EXPIRY: u8 = 8;

impl<V> DvvSet<V> {
    /// A key with no versions.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context a client sends back with its next write: every event
    /// this state covers.
    pub fn context(&self) -> &VectorClock {
        &self.context
    }

    /// The surviving values, in dot order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> + '_ {
        self.siblings.iter().map(|s| &s.value)
    }

    /// The values that have not lapsed at `now` (seconds since the Unix
    /// epoch), in dot order: what a read at `now` answers.
    pub fn live_values(&self, now: u64) -> impl Iterator<Item = &V> + '_ {
        self.siblings
            .iter()
            .filter(move |s| !s.lapsed(now))
            .map(|s| &s.value)
    }

    /// The surviving siblings with their dots, in dot order.
    pub fn siblings(&self) -> &[Sibling<V>] {
        &self.siblings
    }

    /// Superseded copies of retried writes still remembered.
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    /// The dot under which write `id` is stored here: a surviving
    /// sibling's, or a superseded copy's when it is remembered.
    pub fn find_write(&self, id: u64) -> Option<Dot> {
        self.siblings
            .iter()
            .find(|s| s.write.is_some_and(|w| w.id == id))
            .map(|s| s.dot)
            .or_else(|| {
                self.retired
                    .binary_search_by_key(&id, |r| r.id)
                    .ok()
                    .map(|i| self.retired[i].dot)
            })
    }

    /// Marks write `id`'s copy (or the memory of its superseded copy) as
    /// met by a retry: another attempt of it may be stored elsewhere, so
    /// once superseded it is remembered for the grace period.
    fn met_retry(&mut self, id: u64) {
        for s in &mut self.siblings {
            if let Some(tag) = &mut s.write
                && tag.id == id
            {
                tag.retry = true;
            }
        }
        if let Ok(i) = self.retired.binary_search_by_key(&id, |r| r.id) {
            self.retired[i].lasting = true;
        }
    }

    /// How many siblings survive.
    pub fn len(&self) -> usize {
        self.siblings.len()
    }

    /// Whether the key has no surviving value (never written, or every
    /// value superseded by a context without a new value).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// A coordinator's write: `value` supersedes exactly the siblings that
    /// `client_context` covers, and gets a fresh dot at `actor`.
    ///
    /// `now` (seconds of the caller's clock) stamps the actor's context
    /// entry for pruning. Returns the new dot. The same as
    /// [`update_above`](Self::update_above) with a floor of zero: safe only
    /// while this state never forgets `actor`'s dots.
    ///
    /// # Errors
    ///
    /// [`CounterOverflow`] when a counter of `actor` (here or in the
    /// client's context) is `u64::MAX`; the state is left as it was.
    pub fn update(
        &mut self,
        client_context: &VectorClock,
        actor: impl Into<ActorId>,
        value: V,
        now: u64,
    ) -> std::result::Result<Dot, CounterOverflow> {
        self.update_above(client_context, actor, 0, value, now)
    }

    /// A coordinator's write whose counter is also above `floor`: the
    /// largest counter `actor` may already have issued for this key
    /// without this state knowing (the state was reaped, lost, or
    /// restored). The counter is one above the largest of `floor`, this
    /// state's and the client context's counters of `actor`.
    ///
    /// # Errors
    ///
    /// [`CounterOverflow`] when that largest counter is `u64::MAX`; the
    /// state is left as it was.
    pub fn update_above(
        &mut self,
        client_context: &VectorClock,
        actor: impl Into<ActorId>,
        floor: u64,
        value: V,
        now: u64,
    ) -> std::result::Result<Dot, CounterOverflow> {
        self.update_tagged(client_context, actor, floor, value, None, now)
    }

    /// [`update_above`](Self::update_above) for a write the client named
    /// with `write` (see [`WriteTag`]). When this state already holds that
    /// write (an earlier attempt reached this replica), or remembers that
    /// a copy of it was superseded, nothing new is stored: the context is
    /// folded in as the first attempt did, and the dot it got is returned.
    /// A later attempt (`retry`) marks the copy as met by a retry, so that
    /// it is remembered for the grace period once superseded (an attempt
    /// elsewhere may have left another copy).
    ///
    /// # Errors
    ///
    /// As [`update_above`](Self::update_above).
    pub fn update_tagged(
        &mut self,
        client_context: &VectorClock,
        actor: impl Into<ActorId>,
        floor: u64,
        value: V,
        write: Option<WriteTag>,
        now: u64,
    ) -> std::result::Result<Dot, CounterOverflow> {
        self.update_expiring(client_context, actor, floor, value, write, None, now)
    }

    /// [`update_tagged`](Self::update_tagged) for a value that lapses at
    /// `expires` (seconds since the Unix epoch; `None`: never). An attempt
    /// that finds its write keeps the first attempt's time.
    ///
    /// # Errors
    ///
    /// As [`update_above`](Self::update_above).
    #[allow(clippy::too_many_arguments)]
    pub fn update_expiring(
        &mut self,
        client_context: &VectorClock,
        actor: impl Into<ActorId>,
        floor: u64,
        value: V,
        write: Option<WriteTag>,
        expires: Option<u64>,
        now: u64,
    ) -> std::result::Result<Dot, CounterOverflow> {
        if let Some(tag) = write
            && let Some(dot) = self.find_write(tag.id)
        {
            if tag.retry {
                self.met_retry(tag.id);
            }
            self.discard(client_context, now);
            return Ok(dot);
        }
        let actor = actor.into();
        let counter = self
            .context
            .get(actor)
            .max(client_context.get(actor))
            .max(floor)
            .checked_add(1)
            .ok_or(CounterOverflow { actor })?;
        self.drop_covered(client_context, now);
        // A client's context carries no timestamps: what it teaches this
        // state was learnt now (a zero stamp would look ancient to
        // pruning, which would then forget it at once).
        for e in client_context.entries() {
            let stamp = if e.timestamp == 0 { now } else { e.timestamp };
            self.context.observe(e.actor, e.counter, stamp);
        }
        self.context.set(actor, counter, now);
        let dot = Dot { actor, counter };
        // The new dot is above every dot of `actor` held, so it sorts after
        // them; insert keeping the dot order.
        let at = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(
            at,
            Sibling {
                dot,
                value,
                write,
                copies: Vec::new(),
                expires,
            },
        );
        Ok(dot)
    }

    /// Removes every sibling `client_context` covers without adding a value,
    /// and folds the context in. This is what a replica does when it learns
    /// of a context with no new value; deletes in the store write a tombstone
    /// value through [`DvvSet::update`] instead, so that they replicate.
    /// `now` stamps what the context teaches and what it retires.
    pub fn discard(&mut self, client_context: &VectorClock, now: u64) {
        self.drop_covered(client_context, now);
        for e in client_context.entries() {
            let stamp = if e.timestamp == 0 { now } else { e.timestamp };
            self.context.observe(e.actor, e.counter, stamp);
        }
    }

    /// Drops the siblings `context` covers, remembering the tagged
    /// writes among them (see [`Retired`]).
    fn drop_covered(&mut self, context: &VectorClock, now: u64) {
        let mut retired = Vec::new();
        self.siblings.retain(|s| {
            let covered = s.covered_by(context);
            if covered && let Some(tag) = s.write {
                retired.push(Retired {
                    id: tag.id,
                    dot: s.dot,
                    stamp: now,
                    lasting: tag.retry,
                });
            }
            !covered
        });
        for r in retired {
            insert_retired(&mut self.retired, r);
        }
        cap_brief(&mut self.retired);
    }

    /// Prunes the context by `policy` at time `now` and returns how many
    /// entries were removed. Actors with a surviving sibling or a remembered retired copy, and `keep`
    /// (the local coordinator, whose counter must never go backwards), are
    /// never pruned, so every sibling stays covered and no dot is reissued.
    ///
    /// Besides the size rules, an entry of a *retired* actor (a node in an
    /// epoch older than another entry of the same node: that node restarted
    /// and never issues dots in the old epoch again) goes once it is older
    /// than `policy.old`, whatever the clock's size. Restarts therefore add
    /// clock entries only for a while.
    pub fn prune(&mut self, policy: &PrunePolicy, now: u64, keep: impl Into<ActorId>) -> usize {
        let keep = keep.into();
        let old = policy.old.as_secs();
        // A retired write's other copies have had the time to arrive.
        self.retired.retain(|r| {
            let age = now.saturating_sub(r.stamp);
            age <= if r.lasting { old } else { BRIEF_SECS }
        });
        let (siblings, retired) = (&self.siblings, &self.retired);
        let kept = |actor: ActorId| {
            actor == keep
                || siblings.iter().any(|s| s.dot.actor == actor)
                || retired.iter().any(|r| r.dot.actor == actor)
        };
        let mut removed = self.context.prune(policy, now, kept);
        let retired: Vec<ActorId> = self
            .context
            .entries()
            .iter()
            .filter(|e| {
                !kept(e.actor)
                    && now.saturating_sub(e.timestamp) > old
                    && self.context.entries().iter().any(|newer| {
                        newer.actor.node() == e.actor.node()
                            && newer.actor.epoch() > e.actor.epoch()
                    })
            })
            .map(|e| e.actor)
            .collect();
        for actor in retired {
            self.context.set(actor, 0, 0);
            removed += 1;
        }
        removed
    }

    /// Drops the oldest siblings (by the dot's position in its actor's
    /// sequence, then actor) until at most `cap` remain. Returns how many
    /// were dropped. This loses data and is a last resort against sibling
    /// explosion; callers count every call that drops something.
    pub fn truncate_siblings(&mut self, cap: usize) -> usize {
        if self.siblings.len() <= cap {
            return 0;
        }
        let mut order: Vec<usize> = (0..self.siblings.len()).collect();
        order.sort_by_key(|&i| (self.siblings[i].dot.counter, self.siblings[i].dot.actor));
        let excess = self.siblings.len() - cap;
        let mut drop = vec![false; self.siblings.len()];
        for &i in &order[..excess] {
            drop[i] = true;
        }
        let mut index = 0;
        self.siblings.retain(|_| {
            let keep = !drop[index];
            index += 1;
            keep
        });
        excess
    }

    /// Maps each value, keeping dots and context.
    pub fn map<W>(self, mut f: impl FnMut(V) -> W) -> DvvSet<W> {
        DvvSet {
            context: self.context,
            siblings: self
                .siblings
                .into_iter()
                .map(|s| Sibling {
                    dot: s.dot,
                    value: f(s.value),
                    write: s.write,
                    copies: s.copies,
                    expires: s.expires,
                })
                .collect(),
            retired: self.retired,
        }
    }
}

impl<V: Clone> DvvSet<V> {
    /// Merges a peer's state of the same key into this one.
    ///
    /// A sibling survives if the other side holds it too, or if the other
    /// side's context does not cover its dot (the other side has not seen
    /// it, so it cannot have superseded it). Contexts merge by maximum.
    ///
    /// Copies of one tagged write (see [`WriteTag`]) become one: a copy
    /// whose write either side remembers as superseded goes, and of the
    /// copies that remain the one with the smallest dot stays (the others'
    /// dots stay covered, so they never come back).
    ///
    /// Commutative and idempotent; untagged states merge associatively
    /// too (a join). With tags, the order of merges can decide whether a
    /// copy of a retried write outlives a write that superseded another
    /// copy, but replicas still converge: once contexts agree, a merge
    /// only removes.
    pub fn sync(&mut self, other: &DvvSet<V>) {
        // Untagged states (writers that give no tags) merge as before,
        // without the bookkeeping of copies.
        let tagged = self
            .siblings
            .iter()
            .chain(&other.siblings)
            .any(|s| s.write.is_some());
        let mut superseded = Vec::new();
        if tagged {
            superseded = superseded_writes(self, other);
            // Writes either side remembers as superseded.
            superseded.extend(self.retired.iter().chain(&other.retired).map(|r| r.id));
            superseded.sort_unstable();
            superseded.dedup();
        }
        let (a, b) = (&self.siblings, &other.siblings);
        let mut merged = Vec::with_capacity(a.len().max(b.len()));
        // Copies dropped because their write was superseded, remembered
        // below like any superseded copy.
        let mut gone: Vec<(u64, Dot, bool)> = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => Ordering::Less,
                (None, _) => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    let s = &a[i];
                    if other.keeps(s, &superseded) {
                        merged.push(s.clone());
                    } else if let Some(t) = s.write {
                        gone.push((t.id, s.dot, t.retry));
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    let s = &b[j];
                    if self.keeps(s, &superseded) {
                        merged.push(s.clone());
                    } else if let Some(t) = s.write {
                        gone.push((t.id, s.dot, t.retry));
                    }
                    j += 1;
                }
                Ordering::Equal if a[i].id().is_some_and(|id| superseded.contains(&id)) => {
                    if let Some(t) = a[i].write {
                        gone.push((
                            t.id,
                            a[i].dot,
                            t.retry || b[j].write.is_some_and(|u| u.retry),
                        ));
                    }
                    i += 1;
                    j += 1;
                }
                Ordering::Equal => {
                    let mut s = a[i].clone();
                    if let (Some(mine), Some(theirs)) = (&mut s.write, b[j].write) {
                        mine.retry |= theirs.retry;
                    }
                    // One dot is one write, with one time; should two
                    // copies ever disagree, both sides keep the earlier.
                    s.expires = match (s.expires, b[j].expires) {
                        (Some(x), Some(y)) => Some(x.min(y)),
                        (x, y) => x.or(y),
                    };
                    merge_dots(&mut s.copies, &b[j].copies);
                    merged.push(s);
                    i += 1;
                    j += 1;
                }
            }
        }
        self.siblings = merged;
        self.context.merge(&other.context);
        for r in &other.retired {
            insert_retired(&mut self.retired, *r);
        }
        for (id, dot, lasting) in gone {
            // Stamped with when the merged context last heard of the
            // copy's coordinator: the same on both sides of a merge.
            let stamp = self
                .context
                .entries()
                .iter()
                .find(|e| e.actor == dot.actor)
                .map_or(0, |e| e.timestamp);
            insert_retired(
                &mut self.retired,
                Retired {
                    id,
                    dot,
                    stamp,
                    lasting,
                },
            );
        }
        cap_brief(&mut self.retired);
        self.collapse_copies();
    }

    /// Whether a sibling the other side holds survives a merge with this
    /// state. Untagged: this state has not seen its dot. Tagged: its write
    /// is not among the `superseded` (see [`superseded_writes`]).
    fn keeps(&self, s: &Sibling<V>, superseded: &[u64]) -> bool {
        match s.id() {
            None => !self.context.covers(s.dot.actor, s.dot.counter),
            Some(id) => !superseded.contains(&id),
        }
    }

    /// The dots this state's siblings claim for write `id`: their own and
    /// their copies'.
    fn claims(&self, id: u64) -> impl Iterator<Item = Dot> + '_ {
        self.siblings
            .iter()
            .filter(move |s| s.id() == Some(id))
            .flat_map(|s| std::iter::once(s.dot).chain(s.copies.iter().copied()))
    }

    /// Whether this state has seen `dot` of write `id` and holds no
    /// sibling claiming it: that copy was superseded here (a context that
    /// covers a dot no sibling carries saw it and wrote over it).
    fn superseded_here(&self, id: u64, dot: Dot) -> bool {
        self.context.covers(dot.actor, dot.counter) && !self.claims(id).any(|d| d == dot)
    }

    /// Keeps one copy (the smallest dot, marked as met by a retry, with
    /// the others' dots as its copies) of a write held more than once.
    fn collapse_copies(&mut self) {
        if self.siblings.iter().all(|s| s.write.is_none()) {
            return;
        }
        // Siblings are in dot order, so the first copy of each id is the
        // one kept.
        let mut seen: Vec<u64> = Vec::new();
        let mut doubled: Vec<(u64, Vec<Dot>)> = Vec::new();
        self.siblings.retain(|s| match s.write {
            Some(t) if seen.contains(&t.id) => {
                let mut dots = s.copies.clone();
                merge_dots(&mut dots, &[s.dot]);
                doubled.push((t.id, dots));
                false
            }
            Some(t) => {
                seen.push(t.id);
                true
            }
            None => true,
        });
        for s in &mut self.siblings {
            if let Some(t) = &mut s.write {
                for (id, dots) in &doubled {
                    if *id == t.id {
                        t.retry = true;
                        merge_dots(&mut s.copies, dots);
                    }
                }
            }
            let own = s.dot;
            s.copies.retain(|d| *d != own);
        }
    }

    /// The merge of `self` and `other` as a new state.
    pub fn synced(&self, other: &DvvSet<V>) -> DvvSet<V> {
        let mut out = self.clone();
        out.sync(other);
        out
    }
}

impl<V: ValueCodec> DvvSet<V> {
    /// Appends the encoding of this state (context with timestamps, then
    /// each sibling's dot and value).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(DVV_VERSION);
        self.context.encode_into(out, true);
        put_varint(out, self.siblings.len() as u64);
        for sibling in &self.siblings {
            put_varint(out, sibling.dot.actor.0);
            put_varint(out, sibling.dot.counter);
            let mut flags = if sibling.expires.is_some() {
                HAS_EXPIRY
            } else {
                0
            };
            if let Some(tag) = sibling.write {
                flags |= HAS_WRITE_ID;
                if tag.retry {
                    flags |= IS_RETRY;
                }
                if !sibling.copies.is_empty() {
                    flags |= HAS_COPIES;
                }
            }
            out.push(flags);
            if let Some(tag) = sibling.write {
                out.extend_from_slice(&tag.id.to_le_bytes());
                if !sibling.copies.is_empty() {
                    put_varint(out, sibling.copies.len() as u64);
                    for d in &sibling.copies {
                        put_varint(out, d.actor.0);
                        put_varint(out, d.counter);
                    }
                }
            }
            if let Some(at) = sibling.expires {
                put_varint(out, at);
            }
            sibling.value.encode_value(out);
        }
        put_varint(out, self.retired.len() as u64);
        for r in &self.retired {
            out.extend_from_slice(&r.id.to_le_bytes());
            put_varint(out, r.dot.actor.0);
            put_varint(out, r.dot.counter);
            put_varint(out, r.stamp);
            out.push(u8::from(r.lasting));
        }
    }

    /// The encoding of this state.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes a state that fills `bytes` exactly, checking every invariant
    /// (dots ascending and unique, each covered by the context).
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] for bytes that are not a whole set (wrong version, cut
    /// short, trailing bytes, counts that cannot fit).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut reader = Reader::new(bytes);
        let tagged = match bytes.first() {
            Some(&DVV_VERSION_UNTAGGED) => {
                reader.version(DVV_VERSION_UNTAGGED, "sibling set version")?;
                false
            }
            _ => {
                reader.version(DVV_VERSION, "sibling set version")?;
                true
            }
        };
        let context = VectorClock::decode_from(&mut reader)?;
        let count = reader.count("sibling count", 3)?;
        let mut siblings: Vec<Sibling<V>> = Vec::with_capacity(count);
        for _ in 0..count {
            let at = reader.position();
            let dot = read_dot(
                &mut reader,
                &context,
                "sibling dot (zero, or not covered by the context)",
            )?;
            if siblings.last().is_some_and(|last| last.dot >= dot) {
                return Err(DecodeError::Invalid {
                    offset: at,
                    what: "sibling order (dots must ascend)",
                });
            }
            let (write, copies, expires) = if tagged {
                decode_tag(&mut reader, &context, dot)?
            } else {
                (None, Vec::new(), None)
            };
            if let Some(tag) = write
                && siblings
                    .iter()
                    .any(|s| s.write.is_some_and(|t| t.id == tag.id))
            {
                return Err(DecodeError::Invalid {
                    offset: at,
                    what: "sibling write id (two siblings with one id)",
                });
            }
            let value = V::decode_value(&mut reader)?;
            siblings.push(Sibling {
                dot,
                value,
                write,
                copies,
                expires,
            });
        }
        let mut retired: Vec<Retired> = Vec::new();
        if tagged {
            let count = reader.count("retired count", 12)?;
            retired.reserve(count);
            for _ in 0..count {
                let at = reader.position();
                let id = read_id(&mut reader, "retired write id")?;
                let dot = read_dot(
                    &mut reader,
                    &context,
                    "retired dot (zero, or not covered by the context)",
                )?;
                let stamp = reader.varint("retired stamp")?;
                let flag_at = reader.position();
                let lasting = match reader.u8("retired flags")? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::Invalid {
                            offset: flag_at,
                            what: "retired flags",
                        });
                    }
                };
                if retired.last().is_some_and(|last| last.id >= id) {
                    return Err(DecodeError::Invalid {
                        offset: at,
                        what: "retired order (ids must ascend)",
                    });
                }
                retired.push(Retired {
                    id,
                    dot,
                    stamp,
                    lasting,
                });
            }
        }
        reader.finish()?;
        Ok(DvvSet {
            context,
            siblings,
            retired,
        })
    }
}

/// A sibling's write tag, its other copies' dots and when it lapses.
type SiblingMeta = (Option<WriteTag>, Vec<Dot>, Option<u64>);

/// Reads a sibling's write tag, its other copies' dots and its expiry (a
/// flags byte, then the id, the dots and the time when present); `dot` is
/// the sibling's own.
fn decode_tag(reader: &mut Reader<'_>, context: &VectorClock, dot: Dot) -> Result<SiblingMeta> {
    let at = reader.position();
    let flags = reader.u8("sibling flags")?;
    if flags & !(HAS_WRITE_ID | IS_RETRY | HAS_COPIES | HAS_EXPIRY) != 0
        || (flags & (IS_RETRY | HAS_COPIES) != 0 && flags & HAS_WRITE_ID == 0)
    {
        return Err(DecodeError::Invalid {
            offset: at,
            what: "sibling flags",
        });
    }
    let expiry = |reader: &mut Reader<'_>| -> Result<Option<u64>> {
        if flags & HAS_EXPIRY == 0 {
            return Ok(None);
        }
        Ok(Some(reader.varint("sibling expiry")?))
    };
    if flags & HAS_WRITE_ID == 0 {
        return Ok((None, Vec::new(), expiry(reader)?));
    }
    let id = read_id(reader, "sibling write id")?;
    let mut copies = Vec::new();
    if flags & HAS_COPIES != 0 {
        let count = reader.count("copy count", 2)?;
        if count == 0 {
            return Err(DecodeError::Invalid {
                offset: at,
                what: "copy count (zero with the flag set)",
            });
        }
        for _ in 0..count {
            let copy_at = reader.position();
            let d = read_dot(
                reader,
                context,
                "copy dot (zero, or not covered by the context)",
            )?;
            if d == dot || copies.last().is_some_and(|last| *last >= d) {
                return Err(DecodeError::Invalid {
                    offset: copy_at,
                    what: "copy dots (must ascend, and differ from the sibling's)",
                });
            }
            copies.push(d);
        }
    }
    let tag = WriteTag {
        id,
        retry: flags & IS_RETRY != 0,
    };
    Ok((Some(tag), copies, expiry(reader)?))
}

/// The tagged writes that one side of a merge has superseded through any
/// copy either side knows of: the side's context covers the copy's dot and
/// none of its siblings claims it. Every copy of such a write goes, even
/// one the superseding side never saw (an attempt stored elsewhere), so a
/// write overwritten through one copy does not live on as another.
fn superseded_writes<V: Clone>(a: &DvvSet<V>, b: &DvvSet<V>) -> Vec<u64> {
    let mut ids: Vec<u64> = a
        .siblings
        .iter()
        .chain(&b.siblings)
        .filter_map(Sibling::id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.retain(|&id| {
        let known: Vec<Dot> = a.claims(id).chain(b.claims(id)).collect();
        known
            .iter()
            .any(|&d| a.superseded_here(id, d) || b.superseded_here(id, d))
    });
    ids
}

/// Adds `more` to the ascending, duplicate-free `dots`.
fn merge_dots(dots: &mut Vec<Dot>, more: &[Dot]) {
    for d in more {
        if let Err(at) = dots.binary_search(d) {
            dots.insert(at, *d);
        }
    }
}

/// Reads a write tag id (8 bytes, little-endian).
fn read_id(reader: &mut Reader<'_>, what: &'static str) -> Result<u64> {
    let mut id = [0u8; 8];
    id.copy_from_slice(reader.bytes(8, what)?);
    Ok(u64::from_le_bytes(id))
}

/// Reads a dot (actor, counter), which must be non-zero and covered by
/// `context`.
fn read_dot(reader: &mut Reader<'_>, context: &VectorClock, what: &'static str) -> Result<Dot> {
    let at = reader.position();
    let actor = ActorId(reader.varint("dot actor")?);
    let counter = reader.varint("dot counter")?;
    if counter == 0 || !context.covers(actor, counter) {
        return Err(DecodeError::Invalid { offset: at, what });
    }
    Ok(Dot { actor, counter })
}

/// Adds `r` to a list sorted by id: for an id already there, the smaller
/// dot and the later stamp (so that merges commute).
fn insert_retired(list: &mut Vec<Retired>, r: Retired) {
    match list.binary_search_by_key(&r.id, |x| x.id) {
        Ok(i) => {
            let x = &mut list[i];
            x.dot = x.dot.min(r.dot);
            x.stamp = x.stamp.max(r.stamp);
            x.lasting |= r.lasting;
        }
        Err(i) => list.insert(i, r),
    }
}

/// Keeps the newest [`BRIEF_CAP`] brief records (by stamp, then id) and
/// every lasting one.
fn cap_brief(list: &mut Vec<Retired>) {
    let brief = list.iter().filter(|r| !r.lasting).count();
    if brief <= BRIEF_CAP {
        return;
    }
    let mut ranks: Vec<(u64, u64)> = list
        .iter()
        .filter(|r| !r.lasting)
        .map(|r| (r.stamp, r.id))
        .collect();
    ranks.sort_unstable_by(|a, b| b.cmp(a));
    let cut = ranks[BRIEF_CAP - 1];
    list.retain(|r| r.lasting || (r.stamp, r.id) >= cut);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::NodeId;

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);

    /// The previous format (version 1): no write tags, no retired list.
    /// Nodes read it (docs/operations.md, "Upgrades"), so data written
    /// before tags is served after an upgrade.
    #[test]
    fn the_previous_format_still_decodes() {
        let mut key: DvvSet<Vec<u8>> = DvvSet::new();
        key.update(&VectorClock::new(), A, b"old".to_vec(), 0)
            .unwrap();
        key.update(&VectorClock::new(), B, b"older".to_vec(), 0)
            .unwrap();
        let mut v1 = vec![DVV_VERSION_UNTAGGED];
        key.context.encode_into(&mut v1, true);
        put_varint(&mut v1, key.siblings.len() as u64);
        for s in &key.siblings {
            put_varint(&mut v1, s.dot.actor.0);
            put_varint(&mut v1, s.dot.counter);
            s.value.encode_value(&mut v1);
        }
        let read = DvvSet::<Vec<u8>>::from_bytes(&v1).unwrap();
        assert_eq!(read, key);
        // Written back, it is the current format.
        assert_eq!(read.to_bytes()[0], DVV_VERSION);
        // A version from the future is refused, not guessed at.
        let mut future = v1.clone();
        future[0] = DVV_VERSION + 1;
        assert!(DvvSet::<Vec<u8>>::from_bytes(&future).is_err());
    }

    #[test]
    fn update_without_context_on_existing_key_makes_a_sibling() {
        let mut key = DvvSet::new();
        key.update(&VectorClock::new(), A, 1, 0).unwrap();
        key.update(&VectorClock::new(), A, 2, 0).unwrap();
        assert_eq!(key.values().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(key.context().get(A), 2);
    }

    #[test]
    fn context_from_other_coordinator_is_respected() {
        // Write at A, replicate to B, resolve at B with A's context.
        let mut at_a = DvvSet::new();
        at_a.update(&VectorClock::new(), A, "v1", 0).unwrap();
        let mut at_b = DvvSet::new();
        at_b.sync(&at_a);
        let ctx = at_b.context().clone();
        at_b.update(&ctx, B, "v2", 0).unwrap();
        assert_eq!(at_b.values().copied().collect::<Vec<_>>(), ["v2"]);
        // A learns of it and drops v1.
        at_a.sync(&at_b);
        assert_eq!(at_a, at_b);
    }

    #[test]
    fn counter_is_above_what_the_client_saw() {
        // A client context may carry a counter of this actor that the local
        // state lost track of; the new dot must still be fresh.
        let mut key: DvvSet<u8> = DvvSet::new();
        let ctx = VectorClock::from_counters([(A, 7)]);
        let dot = key.update(&ctx, A, 1, 0).unwrap();
        assert_eq!(dot.counter, 8);
    }

    #[test]
    fn a_forged_counter_is_refused_not_saturated() {
        // A context claiming u64::MAX for the coordinator: numbering above
        // it is impossible, and saturating would give two siblings one dot.
        let mut key: DvvSet<u8> = DvvSet::new();
        key.update(&VectorClock::new(), A, 1, 0).unwrap();
        let before = key.clone();
        let forged = VectorClock::from_counters([(A, u64::MAX)]);
        assert_eq!(
            key.update(&forged, A, 2, 0),
            Err(CounterOverflow { actor: A })
        );
        assert_eq!(key, before, "a refused write leaves the state as it was");
        assert!(
            key.update_above(&VectorClock::new(), A, u64::MAX, 3, 0)
                .is_err()
        );
        assert_eq!(key, before);
    }

    #[test]
    fn the_floor_keeps_a_forgotten_counter_from_being_reused() {
        // The actor issued counters up to 9 for this key, then the state
        // was reaped: numbering from the empty state would reuse 1.
        let mut key: DvvSet<u8> = DvvSet::new();
        let dot = key.update_above(&VectorClock::new(), A, 9, 1, 0).unwrap();
        assert_eq!(
            dot,
            Dot {
                actor: A,
                counter: 10
            }
        );
        // Below what the state already holds, the floor changes nothing.
        let dot = key.update_above(&VectorClock::new(), A, 3, 2, 0).unwrap();
        assert_eq!(dot.counter, 11);
    }

    #[test]
    fn truncate_drops_the_oldest() {
        let mut key = DvvSet::new();
        for v in 0..5 {
            key.update(&VectorClock::new(), A, v, 0).unwrap();
        }
        assert_eq!(key.truncate_siblings(3), 2);
        assert_eq!(key.values().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(key.truncate_siblings(3), 0);
    }

    #[test]
    fn prune_keeps_actors_with_siblings() {
        let policy = PrunePolicy {
            small: 1,
            big: 1,
            young: std::time::Duration::ZERO,
            old: std::time::Duration::ZERO,
        };
        let mut key = DvvSet::new();
        // Ten actors each write; a final write at actor 0 resolves them all.
        for actor in 0..10 {
            key.update(&VectorClock::new(), NodeId(actor), actor, 0)
                .unwrap();
        }
        let ctx = key.context().clone();
        key.update(&ctx, NodeId(3), 99, 0).unwrap();
        assert_eq!(key.len(), 1);
        let pruned = key.prune(&policy, 100, NodeId(0));
        // Actor 3 holds the sibling and actor 0 is kept: the other 8 go.
        assert_eq!(pruned, 8);
        assert_eq!(key.context().len(), 2);
        assert!(key.context().covers(NodeId(3), 2));
    }

    #[test]
    fn retired_epochs_are_pruned_once_old() {
        let policy = PrunePolicy::default();
        let old = policy.old.as_secs();
        let node = kv_core::NodeId(3);
        let epoch = |e| ActorId::of(node, e).unwrap();
        let mut key = DvvSet::new();
        // The node writes in epochs 1, 2 and 3 (two restarts); each write
        // resolves the last.
        for e in 1..=3 {
            let ctx = key.context().clone();
            key.update(&ctx, epoch(e), u32::from(e as u8), 0).unwrap();
        }
        assert_eq!(key.context().len(), 3);
        // Young: nothing goes (the clock is far below `small`).
        assert_eq!(key.prune(&policy, old, epoch(3)), 0);
        // Old: the two retired epochs go; the live one (a sibling) stays.
        assert_eq!(key.prune(&policy, old + 1, A), 2);
        assert_eq!(key.context().len(), 1);
        assert!(key.context().covers(epoch(3), 1));
        // An actor with no newer epoch in the clock is not retired.
        let mut other = DvvSet::new();
        other.update(&VectorClock::new(), epoch(1), 1, 0).unwrap();
        let ctx = other.context().clone();
        other.update(&ctx, B, 2, 0).unwrap();
        assert_eq!(other.prune(&policy, old * 10, B), 0);
    }

    #[test]
    fn what_a_client_context_teaches_is_stamped_now_and_not_pruned_at_once() {
        let policy = PrunePolicy::default();
        let node = kv_core::NodeId(3);
        let (old_epoch, new_epoch) = (ActorId::of(node, 1).unwrap(), ActorId::of(node, 2).unwrap());
        // A client read a state holding both epochs of node 3 (no
        // timestamps travel in contexts) and writes through node 1.
        let context = VectorClock::from_counters([(old_epoch, 4), (new_epoch, 1)]);
        let mut key: DvvSet<u8> = DvvSet::new();
        let now = 1_000_000;
        key.update(&context, A, 9, now).unwrap();
        assert!(key.context().entries().iter().all(|e| e.timestamp == now));
        assert_eq!(
            key.prune(&policy, now + 1, A),
            0,
            "the retired epoch is young"
        );
        assert!(key.context().covers(old_epoch, 4));
    }

    #[test]
    fn decode_checks_invariants() {
        let mut key = DvvSet::new();
        key.update(&VectorClock::new(), A, b"x".to_vec(), 5)
            .unwrap();
        key.update(&VectorClock::new(), B, b"y".to_vec(), 6)
            .unwrap();
        let bytes = key.to_bytes();
        assert_eq!(DvvSet::<Vec<u8>>::from_bytes(&bytes).unwrap(), key);
        // A sibling whose dot the context does not cover.
        let mut bad = Vec::new();
        bad.push(DVV_VERSION);
        VectorClock::from_counters([(A, 1)]).encode_into(&mut bad, false);
        bad.extend_from_slice(&[1, 1, 2, 0]); // one sibling, dot (1, 2), empty value
        assert!(matches!(
            DvvSet::<Vec<u8>>::from_bytes(&bad),
            Err(DecodeError::Invalid { .. })
        ));
    }
}
