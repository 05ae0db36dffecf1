//! The coordinator's decisions as pure functions and a small state
//! machine, apart from the async code that drives them: what a read's
//! answers add up to and which replicas it repairs, whether a tombstone
//! may be collected, what to do with a hint. Each is tested here without
//! a runtime, a network or an engine.

use std::collections::VecDeque;

use kv_core::{NodeId, RemoteFailure, TransportError};

use crate::error::Error;
use crate::versions::Siblings;

/// A read's answers as they arrive, until R of them are in. This node's
/// own state is the first answer; of the other replicas only R-1 are
/// asked at first (those believed alive first), and one more for each that
/// fails, or all the rest once the hedge delay passes with answers still
/// due.
#[derive(Debug)]
pub(crate) struct ReadTally {
    needed: usize,
    answers: Vec<(NodeId, Siblings)>,
    failed: Vec<NodeId>,
    /// The other replicas in the order they are asked.
    others: Vec<NodeId>,
    /// How many of `others` were asked.
    asked: usize,
}

impl ReadTally {
    /// A read that needs `r` answers, this node's own `local` state the
    /// first of them, from the replicas `others` (this node excluded);
    /// `down` says which are believed down (asked last). `ask` is given
    /// each replica to ask now.
    pub(crate) fn new(
        r: usize,
        me: NodeId,
        local: Siblings,
        mut others: Vec<NodeId>,
        down: impl Fn(NodeId) -> bool,
        ask: impl FnMut(NodeId),
    ) -> Self {
        // Stable: the preference order holds within the alive and the down.
        others.sort_by_key(|&peer| down(peer));
        let mut tally = ReadTally {
            needed: r,
            answers: vec![(me, local)],
            failed: Vec::new(),
            others,
            asked: 0,
        };
        tally.ask_more(r.saturating_sub(1), ask);
        tally
    }

    /// Asks up to `count` replicas not asked yet.
    fn ask_more(&mut self, count: usize, mut ask: impl FnMut(NodeId)) {
        let until = (self.asked + count).min(self.others.len());
        for &peer in &self.others[self.asked..until] {
            ask(peer);
        }
        self.asked = until;
    }

    /// Whether R answers are in.
    pub(crate) fn is_met(&self) -> bool {
        self.answers.len() >= self.needed
    }

    /// Answers still due: replicas asked that neither answered nor failed
    /// (this node's own answer was never asked for).
    fn outstanding(&self) -> usize {
        self.asked - (self.answers.len() - 1) - self.failed.len()
    }

    /// Whether to keep waiting: R is not met and answers are still due.
    pub(crate) fn waiting(&self) -> bool {
        !self.is_met() && self.outstanding() > 0
    }

    /// Whether a replica is left that was not asked.
    pub(crate) fn can_hedge(&self) -> bool {
        self.asked < self.others.len()
    }

    /// The replicas never asked.
    pub(crate) fn unasked(&self) -> &[NodeId] {
        &self.others[self.asked..]
    }

    /// A peer's answer: its stored state (`None`: it holds nothing), or a
    /// failure. A state that does not decode counts as a failure, and a
    /// failure asks the next replica not asked yet (through `ask`).
    pub(crate) fn answer<X>(
        &mut self,
        peer: NodeId,
        answer: Result<Option<Vec<u8>>, X>,
        ask: impl FnMut(NodeId),
    ) {
        let state = match answer {
            Ok(None) => Some(Siblings::new()),
            Ok(Some(bytes)) => Siblings::from_bytes(&bytes).ok(),
            Err(_) => None,
        };
        match state {
            Some(state) => self.answers.push((peer, state)),
            None => {
                self.failed.push(peer);
                self.ask_more(1, ask);
            }
        }
    }

    /// The hedge delay passed short of R: every replica not asked yet is
    /// asked (see [`can_hedge`](Self::can_hedge)).
    pub(crate) fn hedge(&mut self, ask: impl FnMut(NodeId)) {
        self.ask_more(self.others.len(), ask);
    }

    /// The merged state and the answers it came from, or, short of R,
    /// the quorum error naming who failed and who, asked, never answered.
    pub(crate) fn finish(self) -> Result<(Siblings, Vec<(NodeId, Siblings)>), Error> {
        if !self.is_met() {
            let timed_out = self.others[..self.asked]
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

/// The replicas a read repairs: those whose answer is not the merged
/// state, and, when any answer was not, the replicas not asked as well
/// (disagreement among the asked is a sign the others may be behind too).
pub(crate) fn stale_replicas(
    merged: &Siblings,
    answers: &[(NodeId, Siblings)],
    unasked: &[NodeId],
) -> Vec<NodeId> {
    let mut stale: Vec<NodeId> = answers
        .iter()
        .filter(|(_, state)| state != merged)
        .map(|(node, _)| *node)
        .collect();
    if !stale.is_empty() {
        stale.extend_from_slice(unasked);
    }
    stale
}

/// From when a state that holds only tombstones and values that lapse
/// counts as deleted (seconds since the Unix epoch): the latest of its
/// tombstones' writes (from their dots' entries in the context) and its
/// values' expiries; `None` for a state that holds a value that never
/// lapses, or nothing. The grace runs from there.
pub(crate) fn tombstone_time(state: &Siblings) -> Option<u64> {
    let lasting = |s: &kv_clock::Sibling<crate::Value>| s.value.is_some() && s.expires.is_none();
    if state.is_empty() || state.siblings().iter().any(lasting) {
        return None;
    }
    let written = |s: &kv_clock::Sibling<crate::Value>| {
        state
            .context()
            .entries()
            .iter()
            .find(|e| e.actor == s.dot.actor)
            .map(|e| e.timestamp)
            // No time known: never old enough.
            .unwrap_or(u64::MAX)
    };
    state
        .siblings()
        .iter()
        .map(|s| match (&s.value, s.expires) {
            // A value that lapses counts from when it lapses.
            (Some(_), Some(at)) => at,
            _ => written(s),
        })
        .max()
}

/// Whether a tombstone written at `written` may be collected at `now` by
/// the key's first replica: the grace has passed, and no hint for the key
/// waits here (it could carry an older write that the tombstone must still
/// cover). The replicas' agreement is asked after.
pub(crate) fn may_collect(written: u64, now: u64, grace: u64, hinted: bool) -> bool {
    now.saturating_sub(written) >= grace && !hinted
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

/// What delivering an owner's hints does after one send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailedHint {
    /// The owner cannot take hints now (down, slow, busy, its storage
    /// failing, refusing this node): no more are sent to it this round.
    StopOwner,
    /// The owner refused this hint itself (the state does not decode
    /// there, or its own state of the key is damaged): the hint stays,
    /// and the owner's next hints are still sent, so one bad hint does
    /// not hold back the rest for ever.
    SkipHint,
}

/// The step after a hint's send failed with `error`, by its kind.
pub(crate) fn after_failed_hint(error: &TransportError) -> AfterFailedHint {
    match error {
        TransportError::Remote {
            kind: RemoteFailure::Invalid | RemoteFailure::Corrupt,
            ..
        } => AfterFailedHint::SkipHint,
        _ => AfterFailedHint::StopOwner,
    }
}

/// One replica write to send: to `target`, holding it for `hint_for` when
/// `target` is a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Where the state goes.
    pub(crate) target: NodeId,
    /// The replica it stands in for, when it is a hinted fallback.
    pub(crate) hint_for: Option<NodeId>,
}

/// A write's acknowledgements as they arrive, until W of them are in, and
/// which fallbacks (sloppy quorum) get a hinted copy: for a replica known
/// down, one that failed, or, once the hedge delay passed, one that is
/// silent. The coordinator's own write counts as the first
/// acknowledgement.
#[derive(Debug)]
pub(crate) struct WriteTally {
    needed: usize,
    acked: usize,
    outstanding: usize,
    others: Vec<NodeId>,
    answered: Vec<NodeId>,
    failed: Vec<NodeId>,
    hinted: Vec<NodeId>,
    fallbacks: VecDeque<NodeId>,
}

impl WriteTally {
    /// A write that needs `w` acknowledgements, to the replicas `others`
    /// (this node excluded), with `fallbacks` in order; `down` says which
    /// replicas are known down (they go straight to a fallback, when there
    /// is one). `send` is given each delivery to make now.
    pub(crate) fn new(
        w: usize,
        others: Vec<NodeId>,
        fallbacks: VecDeque<NodeId>,
        down: impl Fn(NodeId) -> bool,
        mut send: impl FnMut(Delivery),
    ) -> Self {
        let mut tally = WriteTally {
            needed: w,
            acked: 1,
            outstanding: 0,
            others,
            answered: Vec::new(),
            failed: Vec::new(),
            hinted: Vec::new(),
            fallbacks,
        };
        for i in 0..tally.others.len() {
            let peer = tally.others[i];
            if !down(peer) {
                send(Delivery {
                    target: peer,
                    hint_for: None,
                });
                tally.outstanding += 1;
            } else if let Some(fallback) = tally.hint(peer) {
                send(fallback);
            } else {
                tally.failed.push(peer);
            }
        }
        tally
    }

    /// Whether W acknowledgements are in.
    pub(crate) fn is_met(&self) -> bool {
        self.acked >= self.needed
    }

    /// Whether to keep waiting: W is not met and answers are still due.
    pub(crate) fn waiting(&self) -> bool {
        !self.is_met() && self.outstanding > 0
    }

    /// Answers still due.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether a fallback is left to hedge with.
    pub(crate) fn can_hedge(&self) -> bool {
        !self.fallbacks.is_empty()
    }

    /// The answer of `target` (standing in for `hint_for`, if a fallback).
    /// A replica that failed gets a hinted fallback once, if one is left:
    /// that send is returned.
    pub(crate) fn answer(
        &mut self,
        target: NodeId,
        hint_for: Option<NodeId>,
        ok: bool,
    ) -> Option<Delivery> {
        self.outstanding -= 1;
        self.answered.push(hint_for.unwrap_or(target));
        if ok {
            self.acked += 1;
            return None;
        }
        self.failed.push(target);
        self.fallback_for_failed(target, hint_for)
    }

    /// A hinted fallback for `target`, which failed, unless it was itself
    /// a fallback or already has one.
    fn fallback_for_failed(
        &mut self,
        target: NodeId,
        hint_for: Option<NodeId>,
    ) -> Option<Delivery> {
        if hint_for.is_some() || self.hinted.contains(&target) {
            return None;
        }
        self.hint(target)
    }

    /// The next fallback, holding a hint for `peer`, if one is left;
    /// counted as outstanding, and `peer` as hinted (it gets no second).
    fn hint(&mut self, peer: NodeId) -> Option<Delivery> {
        let fallback = self.fallbacks.pop_front()?;
        self.hinted.push(peer);
        self.outstanding += 1;
        Some(Delivery {
            target: fallback,
            hint_for: Some(peer),
        })
    }

    /// The hedge delay passed: every replica that has neither answered nor
    /// failed nor been hinted gets a hinted fallback, while fallbacks last.
    pub(crate) fn hedge(&mut self, mut send: impl FnMut(Delivery)) {
        for i in 0..self.others.len() {
            let peer = self.others[i];
            if self.answered.contains(&peer)
                || self.failed.contains(&peer)
                || self.hinted.contains(&peer)
            {
                continue;
            }
            let Some(fallback) = self.hint(peer) else {
                break;
            };
            send(fallback);
        }
    }

    /// Short of W: the quorum error, naming who failed and who never
    /// answered.
    pub(crate) fn error(&self) -> Error {
        Error::WriteQuorum {
            acked: self.acked,
            needed: self.needed,
            failed: self.failed.clone(),
            timed_out: self
                .others
                .iter()
                .copied()
                .filter(|p| !self.answered.contains(p) && !self.failed.contains(p))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_clock::VectorClock;
    use kv_core::ActorId;
    use std::cell::RefCell;

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

    fn asked(log: &RefCell<Vec<NodeId>>) -> Vec<NodeId> {
        std::mem::take(&mut *log.borrow_mut())
    }

    #[test]
    fn a_read_asks_r_minus_one_alive_replicas_and_merges_what_it_got() {
        let a = written(1 << 32, Some(b"a"), 100);
        let log = RefCell::new(Vec::new());
        let ask = |p: NodeId| log.borrow_mut().push(p);
        // Node 2 is believed down: node 3 is asked first.
        let mut tally = ReadTally::new(
            2,
            NodeId(1),
            a.clone(),
            vec![NodeId(2), NodeId(3)],
            |p| p == NodeId(2),
            ask,
        );
        assert_eq!(asked(&log), vec![NodeId(3)]);
        assert!(tally.waiting());
        assert_eq!(tally.unasked(), &[NodeId(2)]);
        tally.answer::<()>(NodeId(3), Ok(Some(a.to_bytes())), ask);
        assert!(tally.is_met() && !tally.waiting());
        assert!(asked(&log).is_empty(), "no one else asked");
        let unasked = tally.unasked().to_vec();
        let (merged, answers) = tally.finish().unwrap();
        assert_eq!(merged, a);
        assert!(
            stale_replicas(&merged, &answers, &unasked).is_empty(),
            "agreement repairs nothing, not even the unasked"
        );
    }

    #[test]
    fn a_failure_asks_the_next_replica_and_the_hedge_asks_the_rest() {
        let log = RefCell::new(Vec::new());
        let ask = |p: NodeId| log.borrow_mut().push(p);
        let others = vec![NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
        let mut tally = ReadTally::new(3, NodeId(1), Siblings::new(), others, |_| false, ask);
        assert_eq!(asked(&log), vec![NodeId(2), NodeId(3)]);
        // Garbage is a failure: node 4 is asked in its place.
        tally.answer(NodeId(2), Ok::<_, ()>(Some(vec![0xde, 0xad])), ask);
        assert_eq!(asked(&log), vec![NodeId(4)]);
        assert!(tally.waiting());
        tally.hedge(ask);
        assert_eq!(asked(&log), vec![NodeId(5)]);
        assert!(!tally.can_hedge());
        tally.answer(NodeId(4), Err("unreachable"), ask);
        assert!(asked(&log).is_empty(), "no one left to ask");
        assert!(tally.waiting(), "nodes 3 and 5 still due");
        match tally.finish() {
            Err(Error::ReadQuorum {
                answered,
                needed,
                failed,
                timed_out,
            }) => {
                assert_eq!((answered, needed), (1, 3));
                assert_eq!(failed, vec![NodeId(2), NodeId(4)]);
                assert_eq!(timed_out, vec![NodeId(3), NodeId(5)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn r_of_one_asks_no_one() {
        let log = RefCell::new(Vec::new());
        let tally = ReadTally::new(
            1,
            NodeId(1),
            Siblings::new(),
            vec![NodeId(2), NodeId(3)],
            |_| false,
            |p: NodeId| log.borrow_mut().push(p),
        );
        assert!(log.borrow().is_empty());
        assert!(tally.is_met() && !tally.waiting());
    }

    #[test]
    fn disagreement_merges_into_siblings_and_repairs_the_unasked_too() {
        let a = written(1 << 32, Some(b"a"), 100);
        let b = written(2 << 32, Some(b"b"), 100);
        let ask = |_: NodeId| {};
        let others = vec![NodeId(2), NodeId(3), NodeId(4)];
        let mut tally = ReadTally::new(3, NodeId(1), a.clone(), others, |_| false, ask);
        tally.answer::<()>(NodeId(2), Ok(Some(b.to_bytes())), ask);
        tally.answer::<()>(NodeId(3), Ok(Some(a.to_bytes())), ask);
        let unasked = tally.unasked().to_vec();
        assert_eq!(unasked, vec![NodeId(4)]);
        let (merged, answers) = tally.finish().unwrap();
        assert_eq!(merged.values().count(), 2);
        assert_eq!(
            stale_replicas(&merged, &answers, &unasked),
            vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4)]
        );
    }

    #[test]
    fn only_an_old_tombstone_without_hints_is_collected() {
        let value = written(1 << 32, Some(b"v"), 100);
        assert_eq!(tombstone_time(&value), None);
        assert_eq!(tombstone_time(&Siblings::new()), None);
        let deleted = written(1 << 32, None, 100);
        let at = tombstone_time(&deleted).unwrap();
        assert_eq!(at, 100);
        let grace = 50;
        assert!(may_collect(at, 150, grace, false));
        assert!(!may_collect(at, 149, grace, false), "grace not over");
        assert!(!may_collect(at, 1_000, grace, true), "a hint waits");
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

    #[test]
    fn a_hint_the_owner_rejects_does_not_hold_back_the_rest() {
        let remote = |kind| TransportError::Remote {
            node: NodeId(2),
            kind,
            message: String::new(),
        };
        use AfterFailedHint::*;
        assert_eq!(after_failed_hint(&remote(RemoteFailure::Invalid)), SkipHint);
        assert_eq!(after_failed_hint(&remote(RemoteFailure::Corrupt)), SkipHint);
        for kind in [
            RemoteFailure::Storage,
            RemoteFailure::Busy,
            RemoteFailure::Refused,
            RemoteFailure::Internal,
        ] {
            assert_eq!(after_failed_hint(&remote(kind)), StopOwner, "{kind}");
        }
        assert_eq!(
            after_failed_hint(&TransportError::Unreachable(NodeId(2))),
            StopOwner
        );
        assert_eq!(
            after_failed_hint(&TransportError::Timeout(NodeId(2))),
            StopOwner
        );
    }

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    fn to(target: u64, hint_for: Option<u64>) -> Delivery {
        Delivery {
            target: NodeId(target),
            hint_for: hint_for.map(NodeId),
        }
    }

    /// A tally and the deliveries it asked for at the start.
    fn tally(
        w: usize,
        others: &[u64],
        fallbacks: &[u64],
        down: impl Fn(NodeId) -> bool,
    ) -> (WriteTally, Vec<Delivery>) {
        let mut sends = Vec::new();
        let t = WriteTally::new(w, nodes(others), nodes(fallbacks).into(), down, |d| {
            sends.push(d);
        });
        (t, sends)
    }

    fn hedged(t: &mut WriteTally) -> Vec<Delivery> {
        let mut sends = Vec::new();
        t.hedge(|d| sends.push(d));
        sends
    }

    #[test]
    fn a_write_is_met_at_w_counting_the_coordinator() {
        let (mut t, sends) = tally(2, &[2, 3], &[], |_| false);
        assert_eq!(sends, vec![to(2, None), to(3, None)]);
        assert!(t.waiting());
        assert_eq!(t.answer(NodeId(3), None, true), None);
        assert!(t.is_met());
        assert!(!t.waiting());
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn a_down_replica_goes_to_a_fallback_and_without_one_it_has_failed() {
        let (mut t, sends) = tally(3, &[2, 3], &[4, 5, 6], |n| n != NodeId(2));
        assert_eq!(sends, vec![to(2, None), to(4, Some(3))]);
        assert_eq!(t.outstanding(), 2);
        assert_eq!(
            hedged(&mut t),
            vec![to(5, Some(2))],
            "the silent replica is hedged; the down one has its fallback already"
        );
        let (t, sends) = tally(3, &[2, 3], &[], |n| n == NodeId(3));
        assert_eq!(sends, vec![to(2, None)]);
        match t.error() {
            Error::WriteQuorum {
                failed,
                timed_out,
                acked,
                needed,
            } => {
                assert_eq!((acked, needed), (1, 3));
                assert_eq!(failed, nodes(&[3]));
                assert_eq!(timed_out, nodes(&[2]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_replica_gets_one_hinted_fallback_and_a_failed_fallback_none() {
        let (mut t, _) = tally(3, &[2, 3], &[4, 5], |_| false);
        assert_eq!(t.answer(NodeId(2), None, false), Some(to(4, Some(2))));
        assert_eq!(
            t.answer(NodeId(4), Some(NodeId(2)), false),
            None,
            "no fallback for a fallback"
        );
        assert_eq!(t.answer(NodeId(3), None, true), None);
        assert!(!t.is_met());
        assert!(!t.waiting(), "nothing left to wait for");
        assert!(matches!(t.error(), Error::WriteQuorum { acked: 2, .. }));
    }

    #[test]
    fn hedging_covers_only_the_silent_and_stops_when_fallbacks_run_out() {
        let (mut t, _) = tally(4, &[2, 3, 4], &[5], |_| false);
        assert_eq!(t.answer(NodeId(2), None, true), None);
        assert!(t.can_hedge());
        assert_eq!(hedged(&mut t), vec![to(5, Some(3))]);
        assert!(!t.can_hedge());
        assert_eq!(hedged(&mut t), Vec::new());
        assert_eq!(t.outstanding(), 3);
    }

    #[test]
    fn after_w_a_late_failure_still_gets_its_fallback() {
        let (mut t, _) = tally(2, &[2, 3], &[4], |_| false);
        t.answer(NodeId(2), None, true);
        assert!(t.is_met());
        assert_eq!(t.answer(NodeId(3), None, false), Some(to(4, Some(3))));
        assert_eq!(t.outstanding(), 1, "the fallback's answer is still due");
        assert_eq!(t.answer(NodeId(4), Some(NodeId(3)), true), None);
        assert_eq!(t.outstanding(), 0);
        assert!(!t.can_hedge());
    }
}
