//! The offline checker: a history file against its own final states.
//!
//! Writes and final states go through [`kv_server::history::check`] (no
//! acknowledged write lost, no phantom or corrupted value, no resurrected
//! delete, the sibling bound, replicas converged). In strict-quorum runs
//! every read is also checked: it must see every write acknowledged before
//! it began, unless a write issued before the read ended superseded it,
//! and it must not return a value that an acknowledged write (or delete)
//! had superseded before it began.

use std::collections::BTreeMap;

use kv_clock::VectorClock;
use kv_core::{ActorId, NodeId};
use kv_server::history::{self, Outcome, Report, Write};

use crate::record::{Event, unhex};
use crate::workload::value;

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Writes, keys and violations of the final-state check.
    pub history: Report,
    /// Reads checked for freshness (strict runs only).
    pub reads_checked: usize,
    /// Reads that broke a strict-quorum rule.
    pub read_violations: Vec<String>,
    /// Changes the run's watch delivered (runs with a watch).
    pub changes: usize,
    /// Where the watch broke its guarantees: an acknowledged write no
    /// delivered change covers, or a change that moved its key backwards.
    pub feed_violations: Vec<String>,
}

impl CheckReport {
    /// Every violation found.
    pub fn violations(&self) -> usize {
        self.history.violations.len() + self.read_violations.len() + self.feed_violations.len()
    }
}

struct WriteInfo {
    value: Option<u64>,
    context: VectorClock,
    dot: Option<(ActorId, u64)>,
    invoke_us: u64,
    complete_us: u64,
}

/// Checks a history (as read by [`crate::record::read`]).
///
/// # Errors
/// When the history is malformed: no `meta` line first, or a field that
/// does not decode.
pub fn check(events: &[Event]) -> Result<CheckReport, String> {
    let Some(Event::Meta {
        strict,
        value_size,
        max_siblings,
        watched,
        ..
    }) = events.first()
    else {
        return Err("a history starts with its meta line".into());
    };
    let mut writes = Vec::new();
    let mut finals = BTreeMap::new();
    let mut per_key: BTreeMap<Vec<u8>, Vec<WriteInfo>> = BTreeMap::new();
    let mut reads = Vec::new();
    let mut changes = Vec::new();
    for event in &events[1..] {
        match event {
            Event::Meta { .. } => return Err("a second meta line".into()),
            Event::Write {
                key,
                value: id,
                context,
                acked,
                invoke_us,
                complete_us,
                write_id,
                ..
            } => {
                let key = unhex(key)?;
                let context = unhex(context)?;
                let clock = if context.is_empty() {
                    VectorClock::new()
                } else {
                    VectorClock::from_bytes(&context)
                        .map_err(|e| format!("a write's context does not decode: {e}"))?
                };
                per_key.entry(key.clone()).or_default().push(WriteInfo {
                    value: *id,
                    context: clock,
                    dot: acked.map(|(n, c)| (ActorId(n), c)),
                    invoke_us: *invoke_us,
                    complete_us: *complete_us,
                });
                writes.push(Write {
                    key,
                    value: id.map(|id| value(id, *value_size)),
                    context,
                    invoke_us: *invoke_us,
                    complete_us: *complete_us,
                    outcome: match acked {
                        Some((actor, counter)) => Outcome::Acked(ActorId(*actor), *counter),
                        None => Outcome::Unknown,
                    },
                    write_id: *write_id,
                });
            }
            Event::Read {
                key,
                values,
                invoke_us,
                complete_us,
            } => reads.push((unhex(key)?, values, *invoke_us, *complete_us)),
            // A failed read says nothing about the data.
            Event::ReadFailed { .. } => {}
            Event::Change {
                key,
                context,
                at_us,
                ..
            } => {
                let clock = VectorClock::from_bytes(&unhex(context)?)
                    .map_err(|e| format!("a change's context does not decode: {e}"))?;
                changes.push((unhex(key)?, clock, *at_us));
            }
            Event::Final { key, replicas } => {
                let mut states = Vec::new();
                for (node, state) in replicas {
                    states.push((NodeId(*node), state.as_deref().map(unhex).transpose()?));
                }
                finals.insert(unhex(key)?, states);
            }
        }
    }
    let mut report = CheckReport {
        history: history::check(&writes, &finals, *max_siblings),
        ..CheckReport::default()
    };
    if *watched {
        report.changes = changes.len();
        report.feed_violations = check_feed(&per_key, &changes);
    }
    if *strict {
        for (key, values, invoke, complete) in reads {
            report.reads_checked += 1;
            let none = Vec::new();
            let known = per_key.get(&key).unwrap_or(&none);
            let name = String::from_utf8_lossy(&key).into_owned();
            for w in known {
                let Some((actor, counter)) = w.dot else {
                    continue;
                };
                if w.complete_us >= invoke {
                    continue;
                }
                // Acknowledged before the read began: visible, unless
                // superseded by a write issued before the read ended.
                if let Some(id) = w.value
                    && !values.contains(&id)
                    && !known
                        .iter()
                        .any(|x| x.invoke_us < complete && x.context.covers(actor, counter))
                {
                    report.read_violations.push(format!(
                        "read of {name} at {invoke} us misses value {id:016x} acknowledged at {} us",
                        w.complete_us
                    ));
                }
                // Whatever it superseded stays superseded.
                for id in values {
                    let superseded = known.iter().any(|v| {
                        v.value == Some(*id) && v.dot.is_some_and(|(a, c)| w.context.covers(a, c))
                    });
                    if superseded {
                        report.read_violations.push(format!(
                            "read of {name} at {invoke} us returns value {id:016x}, superseded by a write acknowledged at {} us",
                            w.complete_us
                        ));
                    }
                }
            }
        }
    }
    Ok(report)
}

/// The change feed's guarantees over a run's writes and the changes its
/// watch delivered (in the order delivered): per key, no change that the
/// join of the key's earlier changes covers (causal order), and every
/// acknowledged write covered by some change of its key (at least once).
fn check_feed(
    writes: &BTreeMap<Vec<u8>, Vec<WriteInfo>>,
    changes: &[(Vec<u8>, VectorClock, u64)],
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut joined: BTreeMap<&[u8], VectorClock> = BTreeMap::new();
    for (key, clock, at) in changes {
        let seen = joined.entry(key).or_default();
        if !seen.is_empty() && seen.descends(clock) {
            violations.push(format!(
                "the watch moved {} backwards at {at} us: a change it had already covered",
                String::from_utf8_lossy(key)
            ));
        }
        seen.merge(clock);
    }
    for (key, known) in writes {
        for w in known {
            let Some((actor, counter)) = w.dot else {
                continue;
            };
            if !joined
                .get(key.as_slice())
                .is_some_and(|c| c.covers(actor, counter))
            {
                violations.push(format!(
                    "the watch never delivered the write of {} acknowledged at {} us (dot {actor}:{counter})",
                    String::from_utf8_lossy(key),
                    w.complete_us
                ));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::hex;
    use kv_server::history::ReplicaStates;

    fn meta(strict: bool) -> Event {
        Event::Meta {
            n: 3,
            w: 2,
            r: 2,
            strict,
            value_size: 32,
            max_siblings: 100,
            started_unix_ms: None,
            watched: false,
        }
    }

    /// The state a replica holds after `writes` (value ids) coordinated
    /// by node 1 in order, each superseding the previous one.
    fn state_of(ids: &[u64]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut state = kv_coordinator::Siblings::new();
        let mut contexts = Vec::new();
        for &id in ids {
            let mut ctx = Vec::new();
            state.context().encode_into(&mut ctx, false);
            contexts.push(ctx);
            let clock = state.context().clone();
            state
                .update(&clock, NodeId(1), Some(value(id, 32)), 0)
                .unwrap();
        }
        (state.to_bytes(), contexts)
    }

    fn final_line(state: &[u8]) -> Event {
        let replicas: ReplicaStates = vec![(NodeId(1), Some(state.to_vec()))];
        Event::Final {
            key: hex(b"k"),
            replicas: replicas
                .into_iter()
                .map(|(n, s)| (n.0, s.map(|s| hex(&s))))
                .collect(),
        }
    }

    fn write(id: u64, context: &[u8], dot: u64, at: u64) -> Event {
        Event::Write {
            key: hex(b"k"),
            value: Some(id),
            context: hex(context),
            acked: Some((1, dot)),
            invoke_us: at,
            complete_us: at + 1,
            error: None,
            write_id: 0,
        }
    }

    fn read(values: Vec<u64>, at: u64) -> Event {
        Event::Read {
            key: hex(b"k"),
            values,
            invoke_us: at,
            complete_us: at + 1,
        }
    }

    #[test]
    fn fresh_reads_pass_and_stale_ones_are_caught() {
        let (state, contexts) = state_of(&[10, 11]);
        let good = vec![
            meta(true),
            write(10, &contexts[0], 1, 0),
            read(vec![10], 5),
            write(11, &contexts[1], 2, 10),
            read(vec![11], 20),
            final_line(&state),
        ];
        let report = check(&good).unwrap();
        assert_eq!(report.violations(), 0, "{report:?}");
        assert_eq!(report.reads_checked, 2);

        // A read after 11 was acknowledged that still sees only 10: it
        // misses 11 and returns what 11 superseded.
        let mut stale = good.clone();
        stale.insert(5, read(vec![10], 30));
        let report = check(&stale).unwrap();
        assert_eq!(report.read_violations.len(), 2, "{report:?}");
        // Not strict: reads are not judged.
        let mut relaxed = stale.clone();
        relaxed[0] = meta(false);
        assert_eq!(check(&relaxed).unwrap().violations(), 0);

        // A lost acknowledged write shows in the final-state check.
        let (only_first, _) = state_of(&[10]);
        let mut lost = good.clone();
        *lost.last_mut().unwrap() = final_line(&only_first);
        assert!(!check(&lost).unwrap().history.violations.is_empty());
    }

    fn change(context: &[u8], at: u64) -> Event {
        Event::Change {
            key: hex(b"k"),
            values: Vec::new(),
            context: hex(context),
            resync: false,
            at_us: at,
        }
    }

    #[test]
    fn a_watch_must_deliver_every_acknowledged_write_and_never_go_backwards() {
        let (state, contexts) = state_of(&[10, 11]);
        // The context after 10, and after 11.
        let (_, after) = state_of(&[10, 11, 12]);
        let watched = |mut events: Vec<Event>| {
            if let Event::Meta { watched, .. } = &mut events[0] {
                *watched = true;
            }
            check(&events).unwrap()
        };
        let good = vec![
            meta(false),
            write(10, &contexts[0], 1, 0),
            change(&after[1], 3),
            write(11, &contexts[1], 2, 10),
            change(&after[2], 12),
            final_line(&state),
        ];
        let report = watched(good.clone());
        assert_eq!((report.violations(), report.changes), (0, 2), "{report:?}");
        // 10 only covered by the change after 11: still delivered.
        let mut covered = good.clone();
        covered.remove(2);
        assert_eq!(watched(covered).violations(), 0);
        // The change of 11 never came: 11 was not delivered.
        let mut missing = good.clone();
        missing.remove(4);
        let report = watched(missing);
        assert_eq!(report.feed_violations.len(), 1, "{report:?}");
        assert!(report.feed_violations[0].contains("never delivered"));
        // The change of 10 after the change of 11: backwards.
        let mut backwards = good.clone();
        backwards.insert(5, change(&after[1], 20));
        let report = watched(backwards.clone());
        assert_eq!(report.feed_violations.len(), 1, "{report:?}");
        assert!(report.feed_violations[0].contains("backwards"));
        // Without a watch, changes are not judged.
        assert_eq!(check(&backwards).unwrap().violations(), 0);
    }

    #[test]
    fn malformed_histories_are_errors() {
        assert!(check(&[]).is_err());
        assert!(check(&[read(vec![], 0)]).is_err());
        let bad_context = vec![
            meta(true),
            Event::Write {
                key: hex(b"k"),
                value: Some(1),
                context: "ff".into(),
                acked: None,
                invoke_us: 0,
                complete_us: 1,
                error: None,
                write_id: 0,
            },
        ];
        assert!(check(&bad_context).unwrap_err().contains("context"));
    }
}
