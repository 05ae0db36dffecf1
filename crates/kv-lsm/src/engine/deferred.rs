//! Deferred writes: appended to the log and the memtable by the caller,
//! synced by the engine's syncer thread.
//!
//! Under `Durability::Always` a [`write_deferred`](Inner::write_deferred)
//! returns as soon as its batch is in the log file (one `write`) and in
//! the memtable, invisible to readers. The syncer thread takes every
//! deferred write waiting, syncs the log once through the newest of them,
//! makes them visible and resolves their [`Durable`]s, so an async caller
//! awaits the sync without a blocking thread of its own, and one sync
//! covers whatever arrived while the previous one ran. Blocking writes
//! under `Always` are deferred writes whose caller waits on the `Durable`
//! (`LsmEngine::write_batch`), so this thread is the one place that syncs
//! a write, and no writer holds the log lock across a sync.

use kv_core::{Durable, DurableSignal};

use super::*;
use crate::log::LogSyncer;

/// Deferred writes waiting for a sync: each one's last sequence number and
/// the signal that resolves its `Durable`.
#[derive(Default)]
pub(super) struct Waiting {
    writes: Vec<(u64, DurableSignal)>,
}

/// A failed commit as its writers see it: the engine is poisoned by it
/// (the group commit answers the same), except that a closed engine is
/// closed.
fn poisoning(err: Error) -> Error {
    match err {
        Error::Closed | Error::Poisoned(_) => err,
        other => Error::Poisoned(other.to_string()),
    }
}

impl Inner {
    /// Appends `batch` to the log and the memtable; returns a `Durable`
    /// that resolves once the batch is as durable as the policy promises
    /// (at once, unless `Always`).
    pub(super) fn write_deferred(&self, batch: WriteBatch) -> Result<Durable> {
        self.check_limits(&batch)?;
        self.check_open()?;
        if batch.is_empty() {
            return Ok(Durable::ready(Ok(())));
        }
        let seq = {
            let mut log = self.log.lock();
            // The switch of a full memtable (and a stall) waits here, as it
            // does for the group commit; `inline_writes` warns of both.
            self.make_room(&mut log, false)?;
            let base = log.last_seq;
            log.writer.add_batch(base + 1, &batch);
            if let Err(err) = log.writer.write_buffered() {
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
                return Ok(Durable::ready(Ok(())));
            }
            seq
        };
        let (durable, signal) = Durable::pending();
        let mut waiting = self.deferred.lock();
        waiting.writes.push((seq, signal));
        self.deferred_cond.notify_one();
        Ok(durable)
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
    pub(super) fn deferred_sync_loop(&self) {
        let mut handle: Option<(u64, LogSyncer)> = None;
        loop {
            let writes = {
                let mut waiting = self.deferred.lock();
                while waiting.writes.is_empty() && !self.shutdown.load(Ordering::SeqCst) {
                    self.deferred_cond.wait(&mut waiting);
                }
                if waiting.writes.is_empty() {
                    return;
                }
                std::mem::take(&mut waiting.writes)
            };
            let newest = writes.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
            // The previous sync read its target after these were appended
            // (they waited while it ran) and may already cover them all.
            let result = if self.visible_seq.load(Ordering::Acquire) >= newest {
                Ok(())
            } else {
                self.sync_deferred(&mut handle)
            };
            let result = result.map_err(|err| StorageError::from(poisoning(err)));
            for (_, signal) in writes {
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
        let target = {
            let mut log = self.log.lock();
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
        // A segment switched since the handle was taken was synced whole
        // by the switch: syncing the old handle still covers `target`.
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
