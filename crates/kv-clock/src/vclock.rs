//! Vector clocks: actor -> counter, with a timestamp per entry for pruning.

use std::cmp::Ordering;

use kv_core::ActorId;

use crate::error::{CounterOverflow, DecodeError, Result};
use crate::prune::PrunePolicy;
use kv_core::codec::{Reader, put_varint};

/// How two clocks relate causally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Causality {
    /// Same counters for every actor.
    Equal,
    /// `self` happened before `other` (`other` strictly descends from `self`).
    Before,
    /// `self` happened after `other` (`self` strictly descends from `other`).
    After,
    /// Neither descends from the other.
    Concurrent,
}

/// One actor's entry in a [`VectorClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The actor (a node that coordinates writes).
    pub actor: ActorId,
    /// How many events of this actor the clock covers; never zero.
    pub counter: u64,
    /// When the entry last advanced, in seconds of the caller's clock. Only
    /// pruning reads it; it plays no part in causality.
    pub timestamp: u64,
}

/// A vector clock: for each actor, how many of its events are covered.
///
/// Actors absent from the clock have counter zero. Equality and ordering
/// compare counters only; timestamps are metadata for pruning, merged by
/// taking the newer one so that merge stays a semilattice.
///
/// ```
/// use kv_clock::{Causality, VectorClock};
/// use kv_core::NodeId;
///
/// let mut a = VectorClock::new();
/// a.increment(NodeId(1), 0);
/// let mut b = a.clone();
/// b.increment(NodeId(2), 0);
/// assert_eq!(a.compare(&b), Causality::Before);
/// a.increment(NodeId(3), 0);
/// assert_eq!(a.compare(&b), Causality::Concurrent);
/// a.merge(&b);
/// assert!(a.descends(&b));
/// # Ok::<(), kv_clock::CounterOverflow>(())
/// ```
#[derive(Debug, Clone, Default, Eq)]
pub struct VectorClock {
    /// Sorted by actor, counters non-zero.
    entries: Vec<Entry>,
}

impl PartialEq for VectorClock {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(&other.entries)
                .all(|(a, b)| a.actor == b.actor && a.counter == b.counter)
    }
}

impl std::hash::Hash for VectorClock {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for entry in &self.entries {
            entry.actor.hash(state);
            entry.counter.hash(state);
        }
    }
}

/// Encoding format version of a clock.
const CLOCK_VERSION: u8 = 1;
/// Flag bit: the encoding carries per-entry timestamps.
const FLAG_TIMESTAMPS: u8 = 0b1;

impl VectorClock {
    /// The empty clock (every counter zero).
    pub const fn new() -> Self {
        VectorClock {
            entries: Vec::new(),
        }
    }

    /// Builds a clock from `(actor, counter)` pairs with timestamp zero.
    /// Zero counters are skipped; a repeated actor keeps its largest counter.
    pub fn from_counters<A: Into<ActorId>>(pairs: impl IntoIterator<Item = (A, u64)>) -> Self {
        let mut clock = VectorClock::new();
        for (actor, counter) in pairs {
            clock.observe(actor.into(), counter, 0);
        }
        clock
    }

    /// The entries, sorted by actor.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many actors have a non-zero counter.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every counter is zero.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, actor: ActorId) -> std::result::Result<usize, usize> {
        self.entries.binary_search_by_key(&actor, |e| e.actor)
    }

    /// The counter of `actor` (zero when absent).
    pub fn get(&self, actor: impl Into<ActorId>) -> u64 {
        self.find(actor.into())
            .map_or(0, |i| self.entries[i].counter)
    }

    /// Whether this clock covers event number `counter` of `actor`.
    pub fn covers(&self, actor: impl Into<ActorId>, counter: u64) -> bool {
        self.get(actor) >= counter
    }

    /// Advances `actor` by one at time `now` and returns the new counter.
    ///
    /// # Errors
    ///
    /// [`CounterOverflow`] when the counter is already `u64::MAX` (only a
    /// forged clock gets there); the clock is left as it was.
    pub fn increment(
        &mut self,
        actor: impl Into<ActorId>,
        now: u64,
    ) -> std::result::Result<u64, CounterOverflow> {
        let actor = actor.into();
        let next = self
            .get(actor)
            .checked_add(1)
            .ok_or(CounterOverflow { actor })?;
        self.set(actor, next, now);
        Ok(next)
    }

    /// The largest counter of any actor (zero for the empty clock).
    pub fn max_counter(&self) -> u64 {
        self.entries.iter().map(|e| e.counter).max().unwrap_or(0)
    }

    /// Raises `actor` to at least `counter`, taking the newer timestamp when
    /// the counters tie (the merge of this clock with a one-entry clock).
    pub fn observe(&mut self, actor: impl Into<ActorId>, counter: u64, timestamp: u64) {
        let actor = actor.into();
        if counter == 0 {
            return;
        }
        match self.find(actor) {
            Ok(i) => {
                let e = &mut self.entries[i];
                if (counter, timestamp) > (e.counter, e.timestamp) {
                    e.counter = counter;
                    e.timestamp = timestamp;
                }
            }
            Err(i) => self.entries.insert(
                i,
                Entry {
                    actor,
                    counter,
                    timestamp,
                },
            ),
        }
    }

    /// Sets `actor`'s entry outright (used where the caller has computed the
    /// next counter itself). A zero counter removes the entry.
    pub(crate) fn set(&mut self, actor: ActorId, counter: u64, timestamp: u64) {
        match (self.find(actor), counter) {
            (Ok(i), 0) => {
                self.entries.remove(i);
            }
            (Ok(i), _) => {
                self.entries[i].counter = counter;
                self.entries[i].timestamp = timestamp;
            }
            (Err(_), 0) => {}
            (Err(i), _) => self.entries.insert(
                i,
                Entry {
                    actor,
                    counter,
                    timestamp,
                },
            ),
        }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.actor.cmp(&y.actor),
                (Some(_), None) => Ordering::Less,
                (None, _) => Ordering::Greater,
            };
            match order {
                // Actor only in self: self is ahead there.
                Ordering::Less => {
                    greater = true;
                    i += 1;
                }
                // Actor only in other.
                Ordering::Greater => {
                    less = true;
                    j += 1;
                }
                Ordering::Equal => {
                    match a[i].counter.cmp(&b[j].counter) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether `self` covers every event `other` covers (`self >= other`).
    pub fn descends(&self, other: &VectorClock) -> bool {
        matches!(self.compare(other), Causality::Equal | Causality::After)
    }

    /// Merges `other` into `self`: the least upper bound, entry-wise maximum.
    pub fn merge(&mut self, other: &VectorClock) {
        if other.entries.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (a, b) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].actor.cmp(&b[j].actor) {
                Ordering::Less => {
                    merged.push(a[i]);
                    i += 1;
                }
                Ordering::Greater => {
                    merged.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    let newer = if (b[j].counter, b[j].timestamp) > (a[i].counter, a[i].timestamp) {
                        b[j]
                    } else {
                        a[i]
                    };
                    merged.push(newer);
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.entries = merged;
    }

    /// The least upper bound of `self` and `other`, as a new clock.
    pub fn merged(&self, other: &VectorClock) -> VectorClock {
        let mut out = self.clone();
        out.merge(other);
        out
    }

    /// Prunes entries by `policy` at time `now`, never removing an actor for
    /// which `keep` returns true. Returns how many entries were removed.
    ///
    /// Pruning trades precision for size: a clock missing an entry may later
    /// look concurrent with one it descends from (a false sibling), never the
    /// other way round, as long as the actors that still have live events
    /// are kept (see [`DvvSet::prune`](crate::DvvSet::prune)).
    pub fn prune(
        &mut self,
        policy: &PrunePolicy,
        now: u64,
        keep: impl Fn(ActorId) -> bool,
    ) -> usize {
        if self.entries.len() <= policy.small {
            return 0;
        }
        let mut by_age: Vec<Entry> = self
            .entries
            .iter()
            .copied()
            .filter(|e| !keep(e.actor))
            .collect();
        by_age.sort_by_key(|e| (e.timestamp, e.actor));
        let young = policy.young.as_secs();
        let old = policy.old.as_secs();
        let mut removed = 0;
        for candidate in by_age {
            let len = self.entries.len();
            if len <= policy.small {
                break;
            }
            let age = now.saturating_sub(candidate.timestamp);
            if age < young {
                break;
            }
            if len > policy.big || age > old {
                self.set(candidate.actor, 0, 0);
                removed += 1;
            } else {
                break;
            }
        }
        removed
    }

    /// Appends the encoding of this clock; with `timestamps` false the
    /// per-entry timestamps are left out (decoded as zero), which is what a
    /// client context needs.
    pub fn encode_into(&self, out: &mut Vec<u8>, timestamps: bool) {
        out.push(CLOCK_VERSION);
        out.push(if timestamps { FLAG_TIMESTAMPS } else { 0 });
        put_varint(out, self.entries.len() as u64);
        let mut previous = 0u64;
        for entry in &self.entries {
            put_varint(out, entry.actor.0 - previous);
            put_varint(out, entry.counter);
            previous = entry.actor.0;
        }
        if timestamps && !self.entries.is_empty() {
            let base = self.entries.iter().map(|e| e.timestamp).min().unwrap_or(0);
            put_varint(out, base);
            for entry in &self.entries {
                put_varint(out, entry.timestamp - base);
            }
        }
    }

    /// The encoding of this clock with timestamps.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.entries.len() * 4);
        self.encode_into(&mut out, true);
        out
    }

    /// Decodes a clock that fills `bytes` exactly.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] for bytes that are not a whole clock.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut reader = Reader::new(bytes);
        let clock = Self::decode_from(&mut reader)?;
        reader.finish()?;
        Ok(clock)
    }

    /// Decodes one clock from `reader`, leaving it just past the clock.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] if the reader does not hold a clock.
    pub fn decode_from(reader: &mut Reader<'_>) -> Result<Self> {
        reader.version(CLOCK_VERSION, "clock version")?;
        let flags_at = reader.position();
        let flags = reader.u8("clock flags")?;
        if flags & !FLAG_TIMESTAMPS != 0 {
            return Err(DecodeError::Invalid {
                offset: flags_at,
                what: "clock flags",
            });
        }
        let count = reader.count("clock entry count", 2)?;
        let mut entries = Vec::with_capacity(count);
        let mut previous: Option<u64> = None;
        for _ in 0..count {
            let at = reader.position();
            let delta = reader.varint("clock actor")?;
            let actor = match previous {
                None => delta,
                Some(_) if delta == 0 => {
                    return Err(DecodeError::Invalid {
                        offset: at,
                        what: "clock actor order (actors must ascend)",
                    });
                }
                Some(p) => p.checked_add(delta).ok_or(DecodeError::Invalid {
                    offset: at,
                    what: "clock actor (overflows 64 bits)",
                })?,
            };
            let counter_at = reader.position();
            let counter = reader.varint("clock counter")?;
            if counter == 0 {
                return Err(DecodeError::Invalid {
                    offset: counter_at,
                    what: "clock counter (zero)",
                });
            }
            entries.push(Entry {
                actor: ActorId(actor),
                counter,
                timestamp: 0,
            });
            previous = Some(actor);
        }
        if flags & FLAG_TIMESTAMPS != 0 && !entries.is_empty() {
            let base = reader.varint("clock timestamp base")?;
            for entry in &mut entries {
                let at = reader.position();
                let delta = reader.varint("clock timestamp")?;
                entry.timestamp = base.checked_add(delta).ok_or(DecodeError::Invalid {
                    offset: at,
                    what: "clock timestamp (overflows 64 bits)",
                })?;
            }
        }
        Ok(VectorClock { entries })
    }
}

impl<A: Into<ActorId>> FromIterator<(A, u64)> for VectorClock {
    fn from_iter<I: IntoIterator<Item = (A, u64)>>(iter: I) -> Self {
        VectorClock::from_counters(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::NodeId;
    use std::time::Duration;

    fn clock(pairs: &[(u64, u64)]) -> VectorClock {
        pairs.iter().map(|&(a, c)| (NodeId(a), c)).collect()
    }

    #[test]
    fn compare_cases() {
        assert_eq!(clock(&[]).compare(&clock(&[])), Causality::Equal);
        assert_eq!(
            clock(&[(1, 1)]).compare(&clock(&[(1, 2)])),
            Causality::Before
        );
        assert_eq!(
            clock(&[(1, 2)]).compare(&clock(&[(1, 1)])),
            Causality::After
        );
        assert_eq!(
            clock(&[(1, 1)]).compare(&clock(&[(2, 1)])),
            Causality::Concurrent
        );
        assert_eq!(
            clock(&[(1, 1), (2, 1)]).compare(&clock(&[(1, 1)])),
            Causality::After
        );
        assert_eq!(
            clock(&[(1, 1)]).compare(&clock(&[(1, 1), (3, 4)])),
            Causality::Before
        );
    }

    #[test]
    fn merge_takes_entrywise_max() {
        let mut a = clock(&[(1, 3), (2, 1)]);
        a.merge(&clock(&[(2, 5), (3, 1)]));
        assert_eq!(a, clock(&[(1, 3), (2, 5), (3, 1)]));
    }

    #[test]
    fn zero_counters_are_absent() {
        let c = clock(&[(1, 0), (2, 3)]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(NodeId(1)), 0);
    }

    #[test]
    fn three_actor_clock_is_small() {
        let mut c = VectorClock::new();
        let now = 1_790_000_000; // seconds, a date in 2026
        for (actor, n) in [(1u64, 100_000u64), (2, 50_000), (3, 2)] {
            for _ in 0..n {
                c.increment(NodeId(actor), now).unwrap();
            }
        }
        let bytes = c.to_bytes();
        assert!(
            bytes.len() <= 30,
            "3-actor clock took {} bytes",
            bytes.len()
        );
        assert_eq!(VectorClock::from_bytes(&bytes).unwrap(), c);
    }

    #[test]
    fn decode_refuses_unordered_actors_and_zero_counters() {
        let mut good = Vec::new();
        clock(&[(1, 1), (2, 1)]).encode_into(&mut good, false);
        assert!(VectorClock::from_bytes(&good).is_ok());
        // Second actor delta zero: actors repeat.
        let repeated = [CLOCK_VERSION, 0, 2, 1, 1, 0, 1];
        assert!(matches!(
            VectorClock::from_bytes(&repeated),
            Err(DecodeError::Invalid { offset: 5, .. })
        ));
        let zero = [CLOCK_VERSION, 0, 1, 1, 0];
        assert!(matches!(
            VectorClock::from_bytes(&zero),
            Err(DecodeError::Invalid { offset: 4, .. })
        ));
        assert!(matches!(
            VectorClock::from_bytes(&[9, 0, 0]),
            Err(DecodeError::UnknownVersion { version: 9, .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            VectorClock::from_bytes(&trailing),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn prune_follows_small_big_young_old() {
        let policy = PrunePolicy {
            small: 2,
            big: 4,
            young: Duration::from_secs(10),
            old: Duration::from_secs(100),
        };
        // Six entries with timestamps 0..6 at now = 50: all older than young,
        // none older than old, so only the size above big is pruned.
        let mut c = VectorClock::new();
        for actor in 0..6 {
            c.observe(NodeId(actor), 1, actor);
        }
        assert_eq!(c.prune(&policy, 50, |_| false), 2);
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(NodeId(0)), 0, "the oldest entries go first");
        assert_eq!(c.get(NodeId(1)), 0);
        // At now = 200 every entry is old: prune down to small.
        assert_eq!(c.prune(&policy, 200, |_| false), 2);
        assert_eq!(c.len(), 2);
        // Kept actors survive whatever their age.
        let mut d = VectorClock::new();
        for actor in 0..6 {
            d.observe(NodeId(actor), 1, 0);
        }
        assert_eq!(d.prune(&policy, 200, |a| a.0 < 4), 2);
        assert_eq!(d.len(), 4);
        // Young entries are never pruned, even above big.
        let mut e = VectorClock::new();
        for actor in 0..6 {
            e.observe(NodeId(actor), 1, 195);
        }
        assert_eq!(e.prune(&policy, 200, |_| false), 0);
    }
}
