//! The coordinator's decisions as pure functions and a small state
//! machine, apart from the async code that drives them: what a read's
//! answers add up to and which replicas it repairs, whether a tombstone
//! may be collected, what to do with a hint. Each is tested here without
//! a runtime, a network or an engine.

use kv_core::NodeId;

use crate::error::Error;
use crate::versions::Siblings;

/// A read's answers as they arrive, until R of them are in.
#[derive(Debug)]
pub(crate) struct ReadTally {
    needed: usize,
    answers: Vec<(NodeId, Siblings)>,
    failed: Vec<NodeId>,
}

impl ReadTally {
    /// A read that needs `r` answers, this node's own `local` state the
    /// first of them.
    pub(crate) fn new(r: usize, me: NodeId, local: Siblings) -> Self {
        ReadTally {
            needed: r,
            answers: vec![(me, local)],
            failed: Vec::new(),
        }
    }

    /// Whether R answers are in.
    pub(crate) fn is_met(&self) -> bool {
        self.answers.len() >= self.needed
    }

    /// A peer's answer: its stored state (`None`: it holds nothing), or a
    /// failure. A state that does not decode counts as a failure.
    pub(crate) fn answer<X>(&mut self, peer: NodeId, answer: Result<Option<Vec<u8>>, X>) {
        let state = match answer {
            Ok(None) => Siblings::new(),
            Ok(Some(bytes)) => match Siblings::from_bytes(&bytes) {
                Ok(state) => state,
                Err(_) => {
                    self.failed.push(peer);
                    return;
                }
            },
            Err(_) => {
                self.failed.push(peer);
                return;
            }
        };
        self.answers.push((peer, state));
    }

    /// The merged state and the answers it came from, or, short of R,
    /// the quorum error naming who failed and who never answered among
    /// `asked`.
    pub(crate) fn finish(
        self,
        asked: &[NodeId],
    ) -> Result<(Siblings, Vec<(NodeId, Siblings)>), Error> {
        if !self.is_met() {
            let timed_out = asked
                .iter()
                .copied()
                .filter(|p| !self.failed.contains(p) && !self.answers.iter().any(|(a, _)| a == p))
                .collect();
            return Err(Error::ReadQuorum {
                answered: self.answers.len(),
                needed: self.needed,
                failed: self.failed,
                timed_out,
            });
        }
        let mut merged = Siblings::new();
        for (_, state) in &self.answers {
            merged.sync(state);
        }
        Ok((merged, self.answers))
    }
}

/// The replicas a read repairs: those whose answer is not the merged state.
pub(crate) fn stale_replicas(merged: &Siblings, answers: &[(NodeId, Siblings)]) -> Vec<NodeId> {
    answers
        .iter()
        .filter(|(_, state)| state != merged)
        .map(|(node, _)| *node)
        .collect()
}

/// When the newest tombstone of a state that holds only tombstones was
/// written (seconds since the Unix epoch, from its dot's entry in the
/// context); `None` for a state that holds a value or nothing.
pub(crate) fn tombstone_time(state: &Siblings) -> Option<u64> {
    if state.is_empty() || state.values().any(Option::is_some) {
        return None;
    }
    Some(
        state
            .siblings()
            .iter()
            .filter_map(|s| {
                state
                    .context()
                    .entries()
                    .iter()
                    .find(|e| e.actor == s.dot.actor)
                    .map(|e| e.timestamp)
            })
            .max()
            // No time known: never old enough.
            .unwrap_or(u64::MAX),
    )
}

/// Whether a tombstone written at `written` may be collected by this node
/// at `now`: it is the key's first replica, the grace has passed, and no
/// hint for the key waits here (it could carry an older write that the
/// tombstone must still cover). The replicas' agreement is asked after.
pub(crate) fn may_collect(
    first_replica: bool,
    written: u64,
    now: u64,
    grace: u64,
    hinted: bool,
) -> bool {
    first_replica && now.saturating_sub(written) >= grace && !hinted
}

/// What to do with the hints this node holds for one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HintAction {
    /// Send them to their owner.
    Deliver,
    /// Their owner left the ring: send them to each key's current
    /// replicas.
    Retarget,
    /// Their owner is down: keep them.
    Keep,
}

/// The fate of the hints for `owner`, given the nodes of the ring (an
/// empty ring is no evidence that it left) and whether it is alive.
pub(crate) fn hint_action(ring: &[NodeId], owner: NodeId, owner_alive: bool) -> HintAction {
    if !ring.is_empty() && !ring.contains(&owner) {
        HintAction::Retarget
    } else if owner_alive {
        HintAction::Deliver
    } else {
        HintAction::Keep
    }
}

/// Whether a hint stored at `stored_at` is past the expiry `cutoff` (the
/// tombstone grace ago): it is dropped unsent, since the key's tombstone
/// may be collected by now and delivering would bring a deleted value
/// back.
pub(crate) fn hint_expired(stored_at: u64, cutoff: u64) -> bool {
    stored_at < cutoff
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_clock::VectorClock;
    use kv_core::ActorId;

    fn written(actor: u64, value: Option<&[u8]>, at: u64) -> Siblings {
        let mut s = Siblings::new();
        s.update(
            &VectorClock::default(),
            ActorId(actor),
            value.map(<[u8]>::to_vec),
            at,
        )
        .unwrap();
        s
    }

    #[test]
    fn a_read_is_met_at_r_and_merges_what_it_got() {
        let a = written(1 << 32, Some(b"a"), 100);
        let mut tally = ReadTally::new(2, NodeId(1), a.clone());
        assert!(!tally.is_met());
        tally.answer::<()>(NodeId(2), Ok(None));
        assert!(tally.is_met());
        let (merged, answers) = tally.finish(&[NodeId(2), NodeId(3)]).unwrap();
        assert_eq!(merged, a);
        assert_eq!(stale_replicas(&merged, &answers), vec![NodeId(2)]);
    }

    #[test]
    fn garbage_and_failures_do_not_count_and_the_silent_are_named() {
        let mut tally = ReadTally::new(3, NodeId(1), Siblings::new());
        tally.answer(NodeId(2), Ok::<_, ()>(Some(vec![0xde, 0xad])));
        tally.answer(NodeId(3), Err("unreachable"));
        assert!(!tally.is_met());
        match tally.finish(&[NodeId(2), NodeId(3), NodeId(4)]) {
            Err(Error::ReadQuorum {
                answered,
                needed,
                failed,
                timed_out,
            }) => {
                assert_eq!((answered, needed), (1, 3));
                assert_eq!(failed, vec![NodeId(2), NodeId(3)]);
                assert_eq!(timed_out, vec![NodeId(4)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn concurrent_answers_merge_into_siblings_and_every_replica_behind_is_repaired() {
        let a = written(1 << 32, Some(b"a"), 100);
        let b = written(2 << 32, Some(b"b"), 100);
        let mut tally = ReadTally::new(3, NodeId(1), a.clone());
        tally.answer::<()>(NodeId(2), Ok(Some(b.to_bytes())));
        tally.answer::<()>(NodeId(3), Ok(Some(a.to_bytes())));
        let (merged, answers) = tally.finish(&[NodeId(2), NodeId(3)]).unwrap();
        assert_eq!(merged.values().count(), 2);
        assert_eq!(
            stale_replicas(&merged, &answers),
            vec![NodeId(1), NodeId(2), NodeId(3)]
        );
    }

    #[test]
    fn only_an_old_tombstone_held_by_the_first_replica_without_hints_is_collected() {
        let value = written(1 << 32, Some(b"v"), 100);
        assert_eq!(tombstone_time(&value), None);
        assert_eq!(tombstone_time(&Siblings::new()), None);
        let deleted = written(1 << 32, None, 100);
        let at = tombstone_time(&deleted).unwrap();
        assert_eq!(at, 100);
        let grace = 50;
        assert!(may_collect(true, at, 150, grace, false));
        assert!(!may_collect(true, at, 149, grace, false), "grace not over");
        assert!(
            !may_collect(false, at, 1_000, grace, false),
            "not the first"
        );
        assert!(!may_collect(true, at, 1_000, grace, true), "a hint waits");
    }

    #[test]
    fn hints_follow_their_owner_and_expire_past_the_grace() {
        use HintAction::*;
        let ring = [NodeId(1), NodeId(2)];
        assert_eq!(hint_action(&ring, NodeId(2), true), Deliver);
        assert_eq!(hint_action(&ring, NodeId(2), false), Keep);
        assert_eq!(hint_action(&ring, NodeId(3), true), Retarget);
        assert_eq!(hint_action(&ring, NodeId(3), false), Retarget);
        assert_eq!(hint_action(&[], NodeId(3), true), Deliver, "no ring yet");
        assert!(hint_expired(10, 20));
        assert!(!hint_expired(20, 20));
    }
}
