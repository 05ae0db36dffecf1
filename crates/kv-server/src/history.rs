//! Checks a history of client writes against the cluster's final state:
//! what a client saw acknowledged must hold after faults heal.
//!
//! A history is every write a client issued (its key, value or delete,
//! the context it carried, and its outcome); the final state is each
//! key's stored state at each of its replicas once the cluster converged.
//! The rules:
//!
//! 1. **Convergence**: a key's replicas hold identical states.
//! 2. **No phantom**: every value present was written by some put.
//! 3. **No corruption**: a present version with an acknowledged write's
//!    dot holds that write's value.
//! 4. **No lost write**: an acknowledged write is present (at its dot, or
//!    as another copy of it: an attempt that reached another coordinator,
//!    kept when the copies met), or superseded through another copy (the
//!    state remembers the write's tag among its superseded copies), or a
//!    write
//!    (of any outcome) that began after it was issued with a context
//!    covering it. A write whose outcome is unknown (timed out,
//!    unavailable) may or may not be there. An acknowledged delete may be
//!    absent: tombstones are collected (rule 5 still holds it to what it
//!    deleted).
//! 5. **No resurrection**: nothing an acknowledged write's context covered
//!    (what it superseded, or what a delete removed) is present.
//! 6. **Sibling bound**: no key holds more siblings than the bound.
//! 7. **No reused dot**: no acknowledged write's dot is covered by the
//!    context of a write that completed before it began. That context
//!    came from a read that ended before the dot was issued, so it can
//!    cover the dot only if its coordinator numbered it at or below a
//!    counter it had issued before: a reused dot, which replicas that
//!    hold the older one silently drop.
//! 8. **No returning copy**: a write that an acknowledged write's context
//!    superseded (through the copy it acknowledged) is not present as
//!    another copy (an attempt stored by another coordinator).

use std::collections::{BTreeMap, BTreeSet};

use kv_clock::VectorClock;
use kv_coordinator::Siblings;
use kv_core::{ActorId, NodeId};

/// How a write ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged, with the new version's dot (actor, counter).
    Acked(ActorId, u64),
    /// Not acknowledged: failed or timed out. It may still have been
    /// applied (by its coordinator, at least), so nothing is expected of it.
    Unknown,
}

/// One write of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The key.
    pub key: Vec<u8>,
    /// The value (unique across the history), `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// The context sent with it (empty: none).
    pub context: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
    /// When the client sent it (any monotonic clock, microseconds).
    pub invoke_us: u64,
    /// The write's tag id (0: unknown).
    pub write_id: u64,
    /// When the client had its answer (same clock).
    pub complete_us: u64,
}

/// A rule the history broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key concerned.
    pub key: Vec<u8>,
    /// Which rule, and the details.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {:?}: {}",
            String::from_utf8_lossy(&self.key),
            self.what
        )
    }
}

/// The converged state of one key: each replica's stored state (`None`
/// when it holds nothing).
pub type ReplicaStates = Vec<(NodeId, Option<Vec<u8>>)>;

/// What [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Writes checked.
    pub writes: usize,
    /// Of them, acknowledged.
    pub acked: usize,
    /// Keys checked.
    pub keys: usize,
    /// Broken rules (none is the goal).
    pub violations: Vec<Violation>,
}

/// Checks `writes` against the final state of every key written, `last`
/// (at most `max_siblings` siblings per key).
pub fn check(
    writes: &[Write],
    last: &BTreeMap<Vec<u8>, ReplicaStates>,
    max_siblings: usize,
) -> Report {
    let mut report = Report {
        writes: writes.len(),
        acked: writes
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::Acked(..)))
            .count(),
        ..Report::default()
    };
    let mut by_key: BTreeMap<&[u8], Vec<&Write>> = BTreeMap::new();
    for w in writes {
        by_key.entry(&w.key).or_default().push(w);
    }
    for (key, writes) in by_key {
        report.keys += 1;
        let found = match last.get(key) {
            Some(replicas) => check_key(&writes, replicas, max_siblings),
            None => vec!["no final state was read".into()],
        };
        report
            .violations
            .extend(found.into_iter().map(|what| Violation {
                key: key.to_vec(),
                what,
            }));
    }
    report
}

/// The rules one key's `writes` and final `replicas` states break.
fn check_key(writes: &[&Write], replicas: &ReplicaStates, max_siblings: usize) -> Vec<String> {
    // 1. Convergence.
    let first = replicas.first().and_then(|(_, s)| s.clone());
    if let Some((node, _)) = replicas.iter().find(|(_, s)| *s != first) {
        return vec![format!(
            "replica {node} differs from replica {}",
            replicas[0].0
        )];
    }
    let state = match first.as_deref().map(Siblings::from_bytes).transpose() {
        Ok(state) => state.unwrap_or_default(),
        Err(e) => return vec![format!("stored state does not decode: {e}")],
    };
    let key = KeyHistory::new(writes, &state);
    let mut bad = Vec::new();
    key.no_phantom(&mut bad);
    key.acknowledged_survive(&mut bad);
    key.no_reused_dot(&mut bad);
    key.no_resurrection(&mut bad);
    key.no_returning_copy(&mut bad);
    // 6. Sibling bound.
    if key.present.len() > max_siblings {
        bad.push(format!(
            "{} siblings, above the bound of {max_siblings}",
            key.present.len()
        ));
    }
    bad
}

/// One key's writes and its converged state, as the rules read them.
struct KeyHistory<'a> {
    writes: &'a [&'a Write],
    state: &'a Siblings,
    /// The state's siblings: dot and value (`None`: a tombstone).
    present: Vec<(ActorId, u64, Option<&'a Vec<u8>>)>,
    /// Each write with a readable context, with it.
    contexts: Vec<(VectorClock, &'a Write)>,
}

impl<'a> KeyHistory<'a> {
    fn new(writes: &'a [&'a Write], state: &'a Siblings) -> Self {
        let present = state
            .siblings()
            .iter()
            .map(|s| (s.dot.actor, s.dot.counter, s.value.as_ref()))
            .collect();
        let contexts = writes
            .iter()
            .filter_map(|w| {
                if w.context.is_empty() {
                    Some((VectorClock::new(), *w))
                } else {
                    VectorClock::from_bytes(&w.context).ok().map(|c| (c, *w))
                }
            })
            .collect();
        KeyHistory {
            writes,
            state,
            present,
            contexts,
        }
    }

    /// Rule 2, no phantom: every value present was written.
    fn no_phantom(&self, bad: &mut Vec<String>) {
        let written: BTreeSet<&Vec<u8>> = self
            .writes
            .iter()
            .filter_map(|w| w.value.as_ref())
            .collect();
        for (actor, counter, value) in &self.present {
            if let Some(v) = value
                && !written.contains(v)
            {
                bad.push(format!(
                    "phantom value {:?} at dot {actor}:{counter}",
                    String::from_utf8_lossy(v)
                ));
            }
        }
    }

    /// Rules 3 and 4: acknowledged writes are present and intact, or superseded
    /// by a write that began after them.
    fn acknowledged_survive(&self, bad: &mut Vec<String>) {
        for w in self.writes {
            let Outcome::Acked(actor, counter) = w.outcome else {
                continue;
            };
            match self
                .present
                .iter()
                .find(|(a, c, _)| *a == actor && *c == counter)
            {
                Some((_, _, value)) => {
                    if value.map(Vec::as_slice) != w.value.as_deref() {
                        bad.push(format!("dot {actor}:{counter} holds another value"));
                    }
                }
                None if w.value.is_none() => {}
                // Another copy of the same write (values are unique): an
                // earlier attempt that reached another coordinator, kept
                // when the copies met.
                None if self
                    .present
                    .iter()
                    .any(|(_, _, value)| value.map(Vec::as_slice) == w.value.as_deref()) => {}
                None => {
                    // Superseded: through the acknowledged copy, or
                    // through another copy of it, which the state
                    // remembers by the write's tag.
                    let superseded = self
                        .contexts
                        .iter()
                        .any(|(c, x)| x.invoke_us > w.invoke_us && c.covers(actor, counter))
                        || (w.write_id != 0
                            && self.state.retired().iter().any(|r| r.id == w.write_id));
                    if !superseded {
                        bad.push(format!(
                            "acknowledged write of {:?} at dot {actor}:{counter} is lost",
                            String::from_utf8_lossy(w.value.as_deref().unwrap_or_default())
                        ));
                    }
                }
            }
        }
    }

    /// Rule 7, no reused dot: no acknowledged write's dot was covered by a
    /// context a write completed with before it began.
    fn no_reused_dot(&self, bad: &mut Vec<String>) {
        for w in self.writes {
            let Outcome::Acked(actor, counter) = w.outcome else {
                continue;
            };
            if let Some((_, x)) = self
                .contexts
                .iter()
                .find(|(c, x)| x.complete_us < w.invoke_us && c.covers(actor, counter))
            {
                bad.push(format!(
                "dot {actor}:{counter} was issued again: a write that completed at {} us, before this one began at {} us, already covered it",
                x.complete_us, w.invoke_us
            ));
            }
        }
    }

    /// Rule 5, no resurrection: no dot an acknowledged write's context covered
    /// is present.
    fn no_resurrection(&self, bad: &mut Vec<String>) {
        for (c, w) in &self.contexts {
            if !matches!(w.outcome, Outcome::Acked(..)) {
                continue;
            }
            for (actor, counter, _) in &self.present {
                if c.covers(*actor, *counter) {
                    bad.push(format!(
                    "dot {actor}:{counter} is present though an acknowledged write's context covered it"
                ));
                }
            }
        }
    }

    /// Rule 8, no returning copy: a write superseded through one copy does not
    /// live on as another copy.
    fn no_returning_copy(&self, bad: &mut Vec<String>) {
        for w in self.writes {
            let (Outcome::Acked(actor, counter), Some(value)) = (w.outcome, w.value.as_ref())
            else {
                continue;
            };
            let copy = self
                .present
                .iter()
                .find(|(a, c, v)| (*a, *c) != (actor, counter) && *v == Some(value));
            if let Some((a, c, _)) = copy
                && self.contexts.iter().any(|(ctx, x)| {
                    matches!(x.outcome, Outcome::Acked(..)) && ctx.covers(actor, counter)
                })
            {
                bad.push(format!(
                "the write of {:?} was superseded at dot {actor}:{counter}, but another copy of it is present at dot {a}:{c}",
                String::from_utf8_lossy(value)
            ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny model of a replica: coordinates writes as the node does.
    /// (value or delete, context, coordinating node) per write.
    type Step<'a> = (Option<&'a [u8]>, &'a VectorClock, u64);

    fn state_after(steps: &[Step<'_>]) -> Siblings {
        let mut state = Siblings::new();
        for (value, context, node) in steps {
            state
                .update(context, NodeId(*node), value.map(<[u8]>::to_vec), 0)
                .unwrap();
        }
        state
    }

    fn context_of(state: &Siblings) -> Vec<u8> {
        let mut out = Vec::new();
        state.context().encode_into(&mut out, false);
        out
    }

    fn last(key: &[u8], state: &Siblings) -> BTreeMap<Vec<u8>, ReplicaStates> {
        let bytes = Some(state.to_bytes());
        BTreeMap::from([(
            key.to_vec(),
            vec![(NodeId(1), bytes.clone()), (NodeId(2), bytes)],
        )])
    }

    /// A write of `value` (None: delete) with `context`, sent at `at` us
    /// and answered 10 us later.
    fn write(value: Option<&[u8]>, context: &[u8], outcome: Outcome, at: u64) -> Write {
        Write {
            key: b"k".to_vec(),
            value: value.map(<[u8]>::to_vec),
            context: context.to_vec(),
            outcome,
            write_id: 0,
            invoke_us: at,
            complete_us: at + 10,
        }
    }

    fn acked(node: u64, counter: u64) -> Outcome {
        Outcome::Acked(ActorId(node), counter)
    }

    #[test]
    fn a_clean_history_passes_and_each_rule_catches_its_fault() {
        let empty = VectorClock::new();
        // a then b (blind): two siblings, both acknowledged.
        let two = state_after(&[(Some(b"a"), &empty, 1), (Some(b"b"), &empty, 2)]);
        let ctx = context_of(&two);
        let writes = vec![
            write(Some(b"a"), &[], acked(1, 1), 0),
            write(Some(b"b"), &[], acked(2, 1), 0),
        ];
        let report = check(&writes, &last(b"k", &two), 10);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!((report.writes, report.acked, report.keys), (2, 2, 1));

        // Lost: the final state misses b.
        let only_a = state_after(&[(Some(b"a"), &empty, 1)]);
        let report = check(&writes, &last(b"k", &only_a), 10);
        assert_eq!(report.violations.len(), 1);
        assert!(report.violations[0].what.contains("is lost"));

        // ...unless a write with a context covering b was issued, even one
        // whose outcome is unknown.
        let mut superseded = writes.clone();
        superseded.push(write(Some(b"c"), &ctx, Outcome::Unknown, 100));
        let covered = VectorClock::from_bytes(&ctx).unwrap();
        let c_only = state_after(&[
            (Some(b"a"), &empty, 1),
            (Some(b"b"), &empty, 2),
            (Some(b"c"), &covered, 1),
        ]);
        let report = check(&superseded, &last(b"k", &c_only), 10);
        assert!(report.violations.is_empty(), "{:?}", report.violations);

        // Resurrection: an acknowledged delete covered a and b, yet they
        // are still there.
        let mut deleted = writes.clone();
        deleted.push(write(None, &ctx, acked(1, 2), 100));
        let report = check(&deleted, &last(b"k", &two), 10);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.what.contains("covered it")),
            "{:?}",
            report.violations
        );

        // Phantom: a value nobody wrote.
        let phantom = state_after(&[
            (Some(b"a"), &empty, 1),
            (Some(b"b"), &empty, 2),
            (Some(b"zz"), &empty, 3),
        ]);
        let report = check(&writes, &last(b"k", &phantom), 10);
        assert!(report.violations.iter().any(|v| v.what.contains("phantom")));

        // Sibling bound.
        let report = check(&writes, &last(b"k", &two), 1);
        assert!(report.violations.iter().any(|v| v.what.contains("bound")));

        // Divergence.
        let mut split = last(b"k", &two);
        split.get_mut(&b"k"[..]).unwrap()[1].1 = Some(only_a.to_bytes());
        let report = check(&writes, &split, 10);
        assert!(report.violations[0].what.contains("differs"));

        // Corruption: the acknowledged dot holds another value.
        let swapped = state_after(&[(Some(b"b"), &empty, 1), (Some(b"a"), &empty, 2)]);
        let report = check(&writes, &last(b"k", &swapped), 10);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.what.contains("another value"))
        );
    }

    #[test]
    fn a_reaped_delete_may_be_absent_and_a_reused_dot_is_caught() {
        let empty = VectorClock::new();
        let a = state_after(&[(Some(b"a"), &empty, 1)]);
        let ctx = context_of(&a);
        // a, then a delete covering it; the tombstone was collected, so
        // nothing is left: no violation.
        let writes = vec![
            write(Some(b"a"), &[], acked(1, 1), 0),
            write(None, &ctx, acked(1, 2), 100),
        ];
        let gone = BTreeMap::from([(b"k".to_vec(), vec![(NodeId(1), None), (NodeId(2), None)])]);
        let report = check(&writes, &gone, 10);
        assert!(report.violations.is_empty(), "{:?}", report.violations);

        // After the collection the coordinator numbered a new write from
        // scratch: dot 1:1 again, which replicas still holding the
        // tombstone dropped. The write is lost, and its dot was reused.
        let mut reused = writes.clone();
        reused.push(write(Some(b"b"), &[], acked(1, 1), 200));
        let report = check(&reused, &gone, 10);
        assert!(
            report.violations.iter().any(|v| v.what.contains("is lost")),
            "{:?}",
            report.violations
        );
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.what.contains("issued again")),
            "{:?}",
            report.violations
        );

        // With a fresh dot (a new epoch, or a counter above the old ones)
        // the same history is clean.
        let fresh = state_after(&[(Some(b"b"), &empty, 1 << 32 | 1)]);
        let mut unique = writes.clone();
        unique.push(write(Some(b"b"), &[], acked(1 << 32 | 1, 1), 200));
        let report = check(&unique, &last(b"k", &fresh), 10);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    #[test]
    fn a_retried_write_counts_once_and_a_returning_copy_is_caught() {
        let empty = VectorClock::new();
        let tag = |retry| Some(kv_core::WriteTag { id: 7, retry });
        // The first attempt of "a" is stored by node 1, whose answer is
        // lost; the retry is stored and acknowledged by node 2.
        let mut at_1 = Siblings::new();
        at_1.update_tagged(&empty, NodeId(1), 0, Some(b"a".to_vec()), tag(false), 0)
            .unwrap();
        let mut at_2 = Siblings::new();
        at_2.update_tagged(&empty, NodeId(2), 0, Some(b"a".to_vec()), tag(true), 0)
            .unwrap();
        let writes = vec![write(Some(b"a"), &[], acked(2, 1), 0)];
        // Merged, node 1's copy (the smaller dot) stands for the write.
        let merged = at_1.synced(&at_2);
        assert_eq!(merged.siblings()[0].dot.actor, ActorId(1));
        let report = check(&writes, &last(b"k", &merged), 10);
        assert!(report.violations.is_empty(), "{:?}", report.violations);

        // A client overwrites the acknowledged copy, having read only it;
        // node 1's copy must not come back beside the new value. The
        // store remembers the superseded retry, so it does not.
        let read = at_2.context().clone();
        let mut overwritten = at_2.clone();
        overwritten
            .update_tagged(&read, NodeId(2), 0, Some(b"b".to_vec()), None, 1)
            .unwrap();
        let mut history = writes.clone();
        history.push(write(Some(b"b"), &context_of(&at_2), acked(2, 2), 100));
        let converged = overwritten.synced(&at_1);
        let report = check(&history, &last(b"k", &converged), 10);
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        // Had the first copy come back (a store without that memory), the
        // checker says so.
        let returned = state_after(&[(Some(b"a"), &empty, 1)]).synced(&overwritten);
        let report = check(&history, &last(b"k", &returned), 10);
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.what.contains("another copy")),
            "{:?}",
            report.violations
        );
    }
}
