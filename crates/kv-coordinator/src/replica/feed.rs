//! A replica's change log: the states its keys took, in the order they
//! were stored, kept in memory while someone watches (see
//! [`kv_core::FeedQuery`]).
//!
//! The log records only while a watcher asked within [`LINGER`]: a node
//! nobody watches pays one clock read per change. Whenever it starts
//! recording again, and when it drops its oldest changes to stay within
//! its bounds, the positions before that can no longer be served and the
//! watcher resyncs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::ops::Bound;
use std::sync::Arc;

use kv_core::{FeedPage, FeedPosition, FeedQuery, StorageEngine};
use parking_lot::Mutex;

use super::{Replica, off_runtime, prefix_end};
use crate::error::Result;

/// How long the log keeps recording after the last watcher asked: longer
/// than a watcher's poll, so a watcher that re-subscribes elsewhere finds
/// its position still served.
pub(crate) const LINGER: Duration = Duration::from_secs(60);

/// Most changes kept.
pub(crate) const MAX_CHANGES: usize = 100_000;

/// Most bytes of keys and states kept.
pub(crate) const MAX_BYTES: usize = 64 << 20;

/// The longest a node holds a watcher's request waiting for a change.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);

/// Stored keys one resync page looks at most.
const RESYNC_SCAN: usize = 1 << 16;

/// Distinguishes logs made in one process (a simulation restarts replicas
/// without restarting the process).
static LOGS_MADE: AtomicU64 = AtomicU64::new(0);

/// Keys and their states, and the last key looked at when more follow.
type StatesPage = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

struct Change {
    seq: u64,
    key: Vec<u8>,
    state: Vec<u8>,
}

struct Inner {
    changes: VecDeque<Change>,
    /// The number the next change gets (the first is 1).
    next: u64,
    /// Every change from this one on is held (or still to come).
    complete_from: u64,
    bytes: usize,
}

/// What the log holds for a position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The position is not this log's, or its changes are gone: resync.
    Gap,
    /// The matching changes after the position (maybe none), and the
    /// position after them.
    Changes(Vec<(Vec<u8>, Vec<u8>)>, u64),
}

pub(crate) struct ChangeLog {
    log: u64,
    base: Instant,
    /// Milliseconds after `base` until which changes are recorded.
    active_until: AtomicU64,
    recording: AtomicBool,
    inner: Mutex<Inner>,
    tick: tokio::sync::watch::Sender<u64>,
}

impl ChangeLog {
    /// A new log, with a number no earlier log of this node had: the
    /// epoch (fresh every start) above, the time and a process-wide count
    /// below.
    pub(crate) fn new(epoch: u32) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let made = LOGS_MADE.fetch_add(1, Ordering::Relaxed);
        let low = u64::from(nanos)
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(made)
            & 0xffff_ffff;
        ChangeLog {
            // Never 0, which names no log.
            log: (u64::from(epoch) << 32 | low).max(1),
            base: Instant::now(),
            active_until: AtomicU64::new(0),
            recording: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                changes: VecDeque::new(),
                next: 1,
                complete_from: 1,
                bytes: 0,
            }),
            tick: tokio::sync::watch::Sender::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A watcher asks: record from now on (for [`LINGER`] at least).
    /// Returns the position at the log's end.
    pub(crate) fn watched(&self) -> FeedPosition {
        let until = self.now_ms().saturating_add(LINGER.as_millis() as u64);
        self.active_until.fetch_max(until, Ordering::SeqCst);
        let mut inner = self.inner.lock();
        if !self.recording.swap(true, Ordering::SeqCst) {
            // The changes while nobody watched were not recorded.
            inner.changes.clear();
            inner.bytes = 0;
            inner.complete_from = inner.next;
        }
        FeedPosition {
            log: self.log,
            seq: inner.next - 1,
            resync_after: None,
        }
    }

    /// Records that `key` now holds `state` (the caller holds the key's
    /// lock, so one key's changes are recorded in the order they were
    /// made). Takes the state the caller has stored: while watched, the
    /// log keeps it without a copy.
    pub(crate) fn record(&self, key: &[u8], state: Vec<u8>) {
        if !self.recording.load(Ordering::SeqCst) {
            return;
        }
        let mut inner = self.inner.lock();
        if self.now_ms() > self.active_until.load(Ordering::SeqCst) {
            // Nobody watches any more: stop, and forget.
            self.recording.store(false, Ordering::SeqCst);
            inner.changes.clear();
            inner.bytes = 0;
            return;
        }
        let seq = inner.next;
        inner.next += 1;
        inner.bytes += key.len() + state.len();
        inner.changes.push_back(Change {
            seq,
            key: key.to_vec(),
            state,
        });
        while inner.changes.len() > MAX_CHANGES || inner.bytes > MAX_BYTES {
            let Some(old) = inner.changes.pop_front() else {
                break;
            };
            inner.bytes -= old.key.len() + old.state.len();
            inner.complete_from = old.seq + 1;
        }
        drop(inner);
        self.tick.send_replace(seq);
    }

    /// The changes after `at` that `matches` keeps, about `max_bytes` of
    /// them (at least one).
    pub(crate) fn read(
        &self,
        at: &FeedPosition,
        matches: impl Fn(&[u8]) -> bool,
        max_bytes: usize,
    ) -> Step {
        let inner = self.inner.lock();
        if !self.serves_locked(&inner, at) {
            return Step::Gap;
        }
        let first = inner.changes.front().map_or(inner.next, |c| c.seq);
        let skip = usize::try_from(at.seq + 1 - first).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for c in inner.changes.iter().skip(skip) {
            if matches(&c.key) {
                out.push((c.key.clone(), c.state.clone()));
                bytes += c.key.len() + c.state.len();
                if bytes >= max_bytes {
                    return Step::Changes(out, c.seq);
                }
            }
        }
        Step::Changes(out, inner.next - 1)
    }

    /// Whether the log can serve `at` (it names this log, and every
    /// change after it is held).
    fn serves(&self, at: &FeedPosition) -> bool {
        self.serves_locked(&self.inner.lock(), at)
    }

    fn serves_locked(&self, inner: &Inner, at: &FeedPosition) -> bool {
        at.log == self.log
            && self.recording.load(Ordering::SeqCst)
            && at.seq + 1 >= inner.complete_from
            && at.seq < inner.next
    }

    /// This log's number.
    #[cfg(test)]
    fn log(&self) -> u64 {
        self.log
    }

    /// Wakes when a change is recorded.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tick.subscribe()
    }
}

/// A resync from the first watched key, after which the log is read from
/// `end` (where it stood before the resync began).
fn resync_from(end: FeedPosition) -> FeedPosition {
    FeedPosition {
        resync_after: Some(Vec::new()),
        ..end
    }
}

impl<E: StorageEngine + 'static> Replica<E> {
    /// Answers a watcher (see [`FeedQuery`]): the changes of the watched
    /// keys after its position, waiting up to `wait_ms` (at most
    /// 30 s) for one; a page of a resync when the position cannot
    /// be served or a resync is under way; the log's end for a watcher
    /// without a position. Asking keeps the log recording for 60 s.
    ///
    /// # Errors
    ///
    /// Storage errors while resending states.
    pub async fn changes(self: &Arc<Self>, query: FeedQuery) -> Result<FeedPage> {
        let log = self.change_log();
        let end = log.watched();
        let Some(at) = query.at.clone() else {
            return Ok(FeedPage {
                position: end,
                ..FeedPage::default()
            });
        };
        let plain = FeedPosition {
            resync_after: None,
            ..at.clone()
        };
        // A resync under way goes on while the log still serves where it
        // began; a position the log cannot serve starts one (below, too).
        if at.resync_after.is_some() {
            let from = if log.serves(&plain) {
                at
            } else {
                resync_from(end)
            };
            return self.resync_page(query, from).await;
        }
        let wait = Duration::from_millis(u64::from(query.wait_ms)).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let max_bytes = (query.max_bytes as usize).max(1);
        let mut woken = log.subscribe();
        loop {
            match log.read(&plain, |k| query.matches(k), max_bytes) {
                // Where the log ends now: changes may have been dropped
                // while this request waited.
                Step::Gap => return self.resync_page(query, resync_from(log.watched())).await,
                Step::Changes(changes, seq)
                    if !changes.is_empty() || tokio::time::Instant::now() >= deadline =>
                {
                    let position = FeedPosition { seq, ..plain };
                    return Ok(FeedPage {
                        changes,
                        resync: false,
                        position,
                    });
                }
                // Wait for a change, or until the deadline (then the next
                // look answers with what there is).
                Step::Changes(..) => {
                    if let Ok(Err(_)) = tokio::time::timeout_at(deadline, woken.changed()).await {
                        // The log is gone with its replica.
                        tokio::time::sleep_until(deadline).await;
                    }
                }
            }
        }
    }

    /// One page of a resync from `at`: the current states of the watched
    /// keys after `at.resync_after`, tombstones too (a watcher learns of
    /// deletes), in key order.
    async fn resync_page(self: &Arc<Self>, query: FeedQuery, at: FeedPosition) -> Result<FeedPage> {
        let replica = self.clone();
        let after = at.resync_after.clone().unwrap_or_default();
        let max_bytes = (query.max_bytes as usize).max(1);
        let (changes, more) =
            off_runtime(move || replica.states_after(&query, &after, max_bytes)).await?;
        Ok(FeedPage {
            changes,
            resync: true,
            position: FeedPosition {
                resync_after: more,
                ..at
            },
        })
    }

    /// The stored states of the keys `query` watches after `after` (from
    /// the first when empty), about `max_bytes` of them, and the last key
    /// looked at when the page ended before the keys did.
    fn states_after(
        &self,
        query: &FeedQuery,
        after: &[u8],
        max_bytes: usize,
    ) -> Result<StatesPage> {
        if query.exact {
            let state = match after.is_empty() {
                true => self.engine().get(&query.prefix)?,
                false => None,
            };
            return Ok((
                state
                    .map(|s| (query.prefix.clone(), s))
                    .into_iter()
                    .collect(),
                None,
            ));
        }
        let start = if after >= query.prefix.as_slice() && !after.is_empty() {
            Bound::Excluded(after)
        } else if query.prefix.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Included(query.prefix.as_slice())
        };
        let end_key = prefix_end(&query.prefix);
        let end = end_key.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let (mut out, mut bytes, mut scanned) = (Vec::new(), 0, 0);
        for item in self.engine().scan(start, end)? {
            let (key, state) = item?;
            scanned += 1;
            bytes += key.len() + state.len();
            out.push((key, state));
            if bytes >= max_bytes || scanned >= RESYNC_SCAN {
                let last = out.last().map(|(k, _)| k.clone());
                return Ok((out, last));
            }
        }
        Ok((out, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(log: &ChangeLog, seq: u64) -> FeedPosition {
        FeedPosition {
            log: log.log(),
            seq,
            resync_after: None,
        }
    }

    #[test]
    fn nothing_is_recorded_until_watched_and_then_in_order() {
        let log = ChangeLog::new(3);
        assert_eq!(log.log() >> 32, 3);
        log.record(b"a", b"1".to_vec());
        let start = log.watched();
        assert_eq!(start.seq, 0, "the unwatched change took no number");
        log.record(b"a", b"2".to_vec());
        log.record(b"b", b"3".to_vec());
        log.record(b"a", b"4".to_vec());
        assert_eq!(
            log.read(&start, |k| k == b"a", 1 << 20),
            Step::Changes(
                vec![
                    (b"a".to_vec(), b"2".to_vec()),
                    (b"a".to_vec(), b"4".to_vec())
                ],
                3
            )
        );
        // A page that fills stops at its last change.
        assert_eq!(
            log.read(&start, |_| true, 1),
            Step::Changes(vec![(b"a".to_vec(), b"2".to_vec())], 1)
        );
        assert_eq!(
            log.read(&at(&log, 3), |_| true, 1),
            Step::Changes(vec![], 3)
        );
    }

    #[test]
    fn another_log_a_future_position_or_a_dropped_change_is_a_gap() {
        let log = ChangeLog::new(1);
        let start = log.watched();
        log.record(b"k", b"v".to_vec());
        let other = ChangeLog::new(1);
        assert_ne!(other.log(), log.log());
        assert_eq!(log.read(&other.watched(), |_| true, 1 << 20), Step::Gap);
        assert_eq!(log.read(&at(&log, 2), |_| true, 1 << 20), Step::Gap);
        assert_eq!(
            log.read(&FeedPosition::resync(), |_| true, 1 << 20),
            Step::Gap
        );
        for i in 0..MAX_CHANGES {
            log.record(b"k", i.to_le_bytes().to_vec());
        }
        assert_eq!(
            log.read(&start, |_| true, 1 << 20),
            Step::Gap,
            "the first change was dropped"
        );
        assert!(matches!(
            log.read(&at(&log, 1), |_| true, 1 << 20),
            Step::Changes(..)
        ));
    }

    #[test]
    fn a_log_nobody_watches_stops_and_its_positions_lapse() {
        let mut log = ChangeLog::new(1);
        // The log was made a second ago (its clock counts from `base`).
        log.base = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(log.base);
        let start = log.watched();
        log.record(b"k", b"1".to_vec());
        // Nobody asked for longer than the linger.
        log.active_until.store(0, Ordering::SeqCst);
        log.record(b"k", b"2".to_vec());
        assert_eq!(log.read(&start, |_| true, 1 << 20), Step::Gap);
        let again = log.watched();
        assert_eq!(
            log.read(&start, |_| true, 1 << 20),
            Step::Gap,
            "a change went unrecorded"
        );
        log.record(b"k", b"3".to_vec());
        assert_eq!(
            log.read(&again, |_| true, 1 << 20),
            Step::Changes(vec![(b"k".to_vec(), b"3".to_vec())], again.seq + 1)
        );
    }
}
