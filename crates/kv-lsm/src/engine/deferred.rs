//! Deferred writes: appended to the log and the memtable by the caller,
//! synced by the engine's syncer thread.
//!
//! Under `Durability::Always` a [`write_deferred`](Inner::write_deferred)
//! returns as soon as its batch is in the log's buffer and in the
//! memtable, invisible to readers. The syncer thread takes every deferred
//! write waiting, writes the buffer (one `write` for all of them) and syncs
//! the log once through the newest of them, makes them visible and
//! resolves their [`Durable`]s, so an async caller
//! awaits the sync without a blocking thread of its own, and one sync
//! covers whatever arrived while the previous one ran. Blocking writes
//! under `Always` (`LsmEngine::write_batch`) are deferred writes whose
//! callers wait together for the log to be synced through their own
//! sequence number ([`Synced`]), so this thread is the one place that
//! syncs a write, and no writer holds the log lock across a sync.
//!
//! Blocked writers share one condition variable, woken all at once. With
//! a `Durable` each, woken one by one, each writer woken preempted the
//! syncer before it woke the next (`perf sched timehist` of `lsm-bench
//! --workload fillsync --threads 16`: one context switch per writer
//! woken, 250 us to wake sixteen, the other core idle meanwhile).

use std::time::Instant;

use kv_core::{Durable, DurableSignal};

use super::*;
use crate::log::LogSyncer;

/// Deferred writes waiting for a sync: each one's last sequence number and
/// the signal that resolves its `Durable` (`None`: a blocked writer, woken
/// through [`Synced`]).
#[derive(Default)]
pub(super) struct Waiting {
    writes: Vec<(u64, Option<DurableSignal>)>,
    /// How many writes the syncer waits for before it is woken (0: any;
    /// more during a commit delay).
    want: usize,
}

/// Why writes the syncer has not made durable never will be, for blocked
/// writers (under `Always`); how far it has is `visible_seq`, which it
/// raises before it takes this lock to wake them. It lives under a `std`
/// mutex and condition variable: on Linux `std`'s `notify_all` wakes
/// every waiter with one system call, where `parking_lot`'s requeues them
/// to be woken one at a time.
#[derive(Default)]
pub(super) struct Synced {
    /// The sync that failed (the engine is poisoned).
    failed: Option<StorageError>,
    /// The syncer has stopped.
    stopped: bool,
}

/// Tells blocked writers the syncer has stopped when its loop ends, by
/// returning or by a panic.
struct StopsSynced<'a>(&'a Inner);

impl Drop for StopsSynced<'_> {
    fn drop(&mut self) {
        let mut synced = self.0.lock_synced();
        synced.stopped = true;
        drop(synced);
        self.0.synced_cond.notify_all();
    }
}

/// The syncer thread's scheduling policy as it last set it (see
/// [`SyncerScheduling`]): when yielding, `SCHED_BATCH` while it waits for
/// writes and no flush or compaction runs, else the normal policy. A
/// change is one system call; with writes arriving steadily the policy
/// changes twice per sync (to wait, then to sync).
struct SyncerPolicy {
    yielding: bool,
    /// Whether the thread is (taken to be) in `SCHED_BATCH`.
    batch: bool,
}

impl SyncerPolicy {
    /// The policy of a thread not yet changed (the normal one).
    fn new(scheduling: SyncerScheduling) -> Self {
        SyncerPolicy {
            yielding: scheduling == SyncerScheduling::Yielding,
            batch: false,
        }
    }

    /// Before the syncer waits for writes, with flushes or compactions
    /// running (`background`) or not: a yielding syncer does not preempt
    /// to start a sync, unless lowered threads hold the CPUs.
    fn before_wait(&mut self, background: bool) {
        self.set(self.yielding && !background);
    }

    /// Before the syncer syncs: the normal policy, so that the writes it
    /// covers are released as soon as the sync ends.
    fn before_sync(&mut self) {
        self.set(false);
    }

    /// Sets the calling thread's policy, if it changed. Best effort: a
    /// failure leaves the thread as it was, and is not retried until the
    /// wanted policy changes again.
    fn set(&mut self, batch: bool) {
        if batch != self.batch {
            self.batch = batch;
            set_batch_policy(batch);
        }
    }

    /// Whether the thread is (taken to be) in `SCHED_BATCH`.
    #[cfg(test)]
    fn is_batch(&self) -> bool {
        self.batch
    }
}

/// The longest a sync waits for writers to come back (see
/// [`Inner::deferred_sync_loop`]).
const MAX_COMMIT_DELAY: Duration = Duration::from_micros(500);

/// Bytes of deferred records a writer leaves in the log's buffer for the
/// syncer to write; past it the writer writes them itself.
const DEFERRED_BUFFER: usize = 1 << 20;

/// A failed commit as its writers see it: the engine is poisoned by it
/// (the group commit answers the same), except that a closed engine is
/// closed.
fn poisoning(err: Error) -> Error {
    match err {
        Error::Closed | Error::Poisoned(_) => err,
        other => Error::Poisoned(other.to_string()),
    }
}

/// How long the syncer waits for more writes when `waiting` wait and the
/// last sync, which took `took`, released `released` (see
/// [`Inner::deferred_sync_loop`]); `None`: sync now.
fn commit_delay(waiting: usize, released: usize, took: Duration) -> Option<Duration> {
    (waiting < released).then(|| (took / 2).min(MAX_COMMIT_DELAY))
}

impl Inner {
    /// Appends `batch` to the log and the memtable; returns a `Durable`
    /// that resolves once the batch is as durable as the policy promises
    /// (at once, unless `Always`).
    pub(super) fn write_deferred(&self, batch: WriteBatch) -> Result<Durable> {
        let Some(seq) = self.append_deferred(&batch)? else {
            return Ok(Durable::ready(Ok(())));
        };
        let (durable, signal) = Durable::pending();
        self.await_sync(seq, Some(signal));
        Ok(durable)
    }

    /// Appends `batch` as [`write_deferred`](Self::write_deferred) does and
    /// blocks the calling thread until it is as durable as the policy
    /// promises.
    pub(super) fn write_blocking(&self, batch: WriteBatch) -> Result<()> {
        let Some(seq) = self.append_deferred(&batch)? else {
            return Ok(());
        };
        self.await_sync(seq, None);
        let mut synced = self.lock_synced();
        loop {
            if self.visible_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if let Some(err) = &synced.failed {
                return Err(self.failed_sync(err.clone()));
            }
            if synced.stopped {
                return Err(self.failed_sync(StorageError::Closed));
            }
            synced = self
                .synced_cond
                .wait(synced)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Appends `batch` to the log and the memtable. Returns its last
    /// sequence number when it waits for the syncer (`Always`); `None`
    /// when it is already as durable as the policy promises.
    fn append_deferred(&self, batch: &WriteBatch) -> Result<Option<u64>> {
        self.check_limits(batch)?;
        self.check_open()?;
        if batch.is_empty() {
            return Ok(None);
        }
        let mut log = self.log.lock();
        // The switch of a full memtable (and a stall) waits here, as it
        // does for the group commit; `inline_writes` warns of both.
        self.make_room(&mut log, false)?;
        let base = log.last_seq;
        log.writer.add_batch(base + 1, batch);
        // Under `Always` the syncer writes what is buffered before it
        // syncs: one `write` for every deferred write it covers, none
        // by the writer under this lock.
        let defer =
            self.opts.durability == Durability::Always && log.writer.buffered() < DEFERRED_BUFFER;
        if !defer && let Err(err) = log.writer.write_buffered() {
            self.poison(&err);
            return Err(poisoning(err));
        }
        let mem = self.sv.read().mem.clone();
        let mut seq = base;
        for op in batch.ops() {
            seq += 1;
            match op {
                BatchOp::Put { key, value } => mem.insert(key, seq, Some(value)),
                BatchOp::Delete { key } => mem.insert(key, seq, None),
            }
        }
        log.last_seq = seq;
        self.counters.write_groups.fetch_add(1, Ordering::Relaxed);
        if self.opts.durability != Durability::Always {
            self.visible_seq.fetch_max(seq, Ordering::Release);
            return Ok(None);
        }
        Ok(Some(seq))
    }

    /// Queues a write appended through `seq` for the syncer.
    fn await_sync(&self, seq: u64, signal: Option<DurableSignal>) {
        let mut waiting = self.deferred.lock();
        waiting.writes.push((seq, signal));
        if waiting.writes.len() >= waiting.want {
            self.deferred_cond.notify_one();
        }
    }

    fn lock_synced(&self) -> std::sync::MutexGuard<'_, Synced> {
        self.synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes blocked writers after a sync (`visible_seq` already covers
    /// what it made durable), with its failure if it failed.
    fn publish_synced(&self, result: &std::result::Result<(), StorageError>) {
        let mut synced = self.lock_synced();
        if let Err(err) = result {
            synced.failed.get_or_insert_with(|| err.clone());
        }
        drop(synced);
        self.synced_cond.notify_all();
    }

    /// A deferred write's failure as this crate's error: the engine is
    /// closed, or poisoned (for the reason it keeps).
    pub(super) fn failed_sync(&self, err: StorageError) -> Error {
        match err {
            StorageError::Closed => Error::Closed,
            other => match self.check_poison() {
                Err(poisoned) => poisoned,
                Ok(()) => Error::Poisoned(other.to_string()),
            },
        }
    }

    /// The syncer thread (under `Always`): until shutdown, and after it
    /// until nothing waits, syncs the log through every deferred write
    /// waiting and resolves them.
    ///
    /// A commit delay sized by what it measured: writers that the last
    /// sync released often write again at once (a thread's next write, a
    /// batch's next message), and they come back while the syncer would
    /// already be syncing the one or two that did not wait. So when fewer
    /// writes wait than the last sync released, it waits for as many, at
    /// most half as long as the last sync took (and at most
    /// [`MAX_COMMIT_DELAY`]): a write waits at most half a sync longer, and
    /// syncs cover more writes each when writers are many. A lone writer
    /// never waits (the last sync released one, and one is waiting).
    pub(super) fn deferred_sync_loop(&self) {
        let _stops = StopsSynced(self);
        let mut handle: Option<(u64, LogSyncer)> = None;
        let (mut released, mut took) = (0usize, Duration::ZERO);
        let mut policy = SyncerPolicy::new(self.opts.syncer_scheduling);
        loop {
            // A wait's wake-up is where the policy counts.
            policy.before_wait(BackgroundWork::running());
            let writes = {
                let mut waiting = self.deferred.lock();
                while waiting.writes.is_empty() && !self.shutdown.load(Ordering::SeqCst) {
                    self.deferred_cond.wait(&mut waiting);
                }
                if waiting.writes.is_empty() {
                    return;
                }
                if let Some(delay) = commit_delay(waiting.writes.len(), released, took)
                    && !self.shutdown.load(Ordering::SeqCst)
                {
                    let until = Instant::now() + delay;
                    waiting.want = released;
                    while waiting.writes.len() < released
                        && !self
                            .deferred_cond
                            .wait_until(&mut waiting, until)
                            .timed_out()
                    {}
                    waiting.want = 0;
                }
                std::mem::take(&mut waiting.writes)
            };
            released = writes.len();
            policy.before_sync();
            let started = Instant::now();
            let newest = writes.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
            // The previous sync read its target after these were appended
            // (they waited while it ran) and may already cover them all.
            let result = if self.visible_seq.load(Ordering::Acquire) >= newest {
                Ok(())
            } else {
                self.sync_deferred(&mut handle)
            };
            took = started.elapsed();
            let result = result.map_err(|err| StorageError::from(poisoning(err)));
            if writes.iter().any(|(_, signal)| signal.is_none()) {
                self.publish_synced(&result);
            }
            for signal in writes.into_iter().filter_map(|(_, signal)| signal) {
                signal.complete(result.clone());
            }
        }
    }

    /// Syncs the log through everything appended so far, on a second
    /// handle to the segment (outside the log lock, so writers go on
    /// appending) where the file layer has one; then makes it visible.
    fn sync_deferred(&self, handle: &mut Option<(u64, LogSyncer)>) -> Result<()> {
        // After a failed sync what it left unsynced may be lost, and a later
        // sync that succeeds proves nothing of it (fsync reports a lost
        // write once).
        self.check_poison()?;
        // A switch's syncs, before the lock (under it, writing the buffer
        // to the new segment would do them).
        self.settle_switch()?;
        let target = {
            let mut log = self.log.lock();
            if let Err(err) = log.writer.write_buffered() {
                self.poison(&err);
                return Err(err);
            }
            let number = log.writer.number();
            if handle.as_ref().map(|(n, _)| *n) != Some(number) {
                *handle = log.writer.syncer().map(|h| (number, h));
            }
            if handle.is_none()
                && let Err(err) = log.writer.sync()
            {
                self.poison(&err);
                return Err(err);
            }
            log.last_seq
        };
        // A segment switched since the handle was taken was written whole
        // before the switch: syncing the old handle still covers `target`.
        if let Some((_, h)) = handle.as_mut()
            && let Err(err) = h.sync()
        {
            self.poison(&err);
            return Err(err);
        }
        self.counters.log_syncs.fetch_add(1, Ordering::Relaxed);
        self.visible_seq.fetch_max(target, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yielding_syncer_batches_only_while_it_waits_and_no_background_work_runs() {
        let mut policy = SyncerPolicy::new(SyncerScheduling::Yielding);
        assert!(!policy.is_batch(), "a new thread has the normal policy");
        policy.before_wait(false);
        assert!(policy.is_batch(), "waiting for writes: no preemption");
        policy.before_sync();
        assert!(!policy.is_batch(), "syncing: released at once");
        policy.before_wait(true);
        assert!(!policy.is_batch(), "a flush or compaction runs: preempts");
        policy.before_wait(false);
        assert!(policy.is_batch());

        let mut preempting = SyncerPolicy::new(SyncerScheduling::Preempting);
        preempting.before_wait(false);
        assert!(!preempting.is_batch(), "Preempting never batches");
    }

    #[test]
    fn the_commit_delay_waits_only_for_writers_a_sync_released_and_half_a_sync_at_most() {
        let sync = Duration::from_micros(200);
        // A lone writer, or as many waiting as were released: sync now.
        assert_eq!(commit_delay(1, 1, sync), None);
        assert_eq!(commit_delay(16, 16, sync), None);
        assert_eq!(commit_delay(20, 16, sync), None);
        // Fewer than were released: half the last sync.
        assert_eq!(commit_delay(3, 16, sync), Some(Duration::from_micros(100)));
        // Never more than the bound, whatever the last sync took.
        assert_eq!(
            commit_delay(1, 2, Duration::from_millis(30)),
            Some(MAX_COMMIT_DELAY)
        );
    }
}
