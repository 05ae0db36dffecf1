//! Commit-log segments: rotating to a new one when the memtable is full,
//! retiring (recycling) those no longer needed, and the interval syncer.

use super::*;
use crate::fs::WritableFile;
use crate::log::Prerequisite;

/// Bytes of a segment's disk space reserved at a time (written zeros): a
/// sixteenth of a memtable (256 KiB to 1 MiB), so appends rarely change
/// metadata and a segment takes little more space than it holds.
fn reserve_step(opts: &Options) -> u64 {
    (opts.memtable_bytes as u64 / 16).clamp(256 << 10, 1 << 20)
}

/// Reserves a segment's disk space one step at a time. The zeros are
/// written by whoever appends across the reserved end, under the log
/// lock: a step of 1 MiB holds the lock for about a quarter of a
/// millisecond.
pub(super) fn prepare_segment(writer: &mut LogWriter, opts: &Options) {
    writer.reserve_in_steps(reserve_step(opts));
}

/// The name of a spare segment file: without `recycle_log_segments`, the
/// flush thread makes one ready (created, its first step reserved and
/// synced) as each flush starts, and the next memtable switch renames it
/// to the new segment's name as it would a recycled segment. One left by
/// a crash or a copied backup is removed at the next open.
pub(super) fn spare_name(number: u64) -> String {
    format!("{number:06}.spare")
}

impl Inner {
    /// Whether a write now might wait: the memtable is nearly full and
    /// its switch would create a segment file (none is ready), or the
    /// switch would stall on too many level-0 tables or frozen memtables.
    pub(super) fn write_may_wait(&self) -> bool {
        let sv = self.sv.read();
        let nearly_full = sv.mem.approximate_bytes() >= self.opts.memtable_bytes / 8 * 7;
        (nearly_full && self.ready.lock().is_empty())
            || sv.version.levels[0].len() >= self.opts.l0_stop_writes_trigger
            || sv.imms.len() >= self.opts.max_immutable_memtables
    }

    /// Freezes the memtable when it is full (or `force` and not empty),
    /// waiting first while too many frozen memtables or level-0 tables
    /// pile up (back-pressure).
    pub(super) fn make_room(&self, log: &mut LogState, mut force: bool) -> Result<()> {
        loop {
            self.check_open()?;
            let sv = self.sv.read().clone();
            let full = sv.mem.approximate_bytes() >= self.opts.memtable_bytes;
            let rotate = full || (force && !sv.mem.is_empty());
            let too_many_l0 = sv.version.levels[0].len() >= self.opts.l0_stop_writes_trigger;
            let too_many_imms = rotate && sv.imms.len() >= self.opts.max_immutable_memtables;
            if too_many_l0 || too_many_imms {
                self.counters.stalls.fetch_add(1, Ordering::Relaxed);
                // A stalled writer: background work at full speed.
                let _hurry = super::Counted::new(&self.hurry);
                let mut bg = self.bg.lock();
                self.bg_cond.notify_all();
                self.bg_cond.wait_for(&mut bg, WAIT);
                continue;
            }
            if !rotate {
                if force {
                    // Nothing to freeze, but flush promises durability.
                    log.writer.write_buffered()?;
                    log.writer.sync()?;
                }
                return Ok(());
            }
            self.rotate(log, &sv)?;
            force = false;
            if !full {
                return Ok(());
            }
        }
    }

    /// Ends the current segment and starts a new segment and memtable.
    ///
    /// Under the log lock this writes the old segment's terminator and
    /// renames a ready file (a recycled segment or the spare) to the new
    /// segment's name, or creates one when none is ready. The syncs the
    /// switch needs (the old segment through its terminator, then the
    /// directory) are the new segment's [`Prerequisite`]: done by the log
    /// syncer outside the lock, or by whoever first writes to the new
    /// segment. Measured in the README's cluster before: 2-16 ms under
    /// the lock, on every node at once (the old segment's sync 0.2-2.0 ms,
    /// creating the file 0.03-1.1, its first megabyte of zeros 0.3-4.9,
    /// the directory's sync 0.5-2.4), every writer waiting behind it.
    pub(super) fn rotate(&self, log: &mut LogState, sv: &Arc<SuperVersion>) -> Result<()> {
        let number = self.new_file_number();
        let path = self.dir.join(segment_name(number));
        // First, so that failing (the write fails; the next one tries the
        // switch again) leaves the old segment as it was.
        let file = self.segment_file(&path)?;
        // The terminator marks where this segment ends, in case it is
        // still needed at the next open (its flush failed). Records
        // appended after it would read as damage: a failure poisons.
        if let Err(err) = log.writer.end_segment() {
            self.poison(&err);
            return Err(err);
        }
        let mut writer = LogWriter::new(file, path, number);
        // A ready file's blocks are already allocated up to its size:
        // reserving within them changes nothing.
        prepare_segment(&mut writer, &self.opts);
        let mut old = std::mem::replace(&mut log.writer, writer);
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let closing = Prerequisite::new(move || {
            old.sync()?;
            fs.sync_dir(&dir)
                .map_err(|e| Error::io("fsync directory", &dir, e))
        });
        log.writer.after(closing.clone());
        *self.closing.lock() = Some(closing);
        self.swap_super(|current| {
            debug_assert!(
                Arc::ptr_eq(&current.mem, &sv.mem),
                "only the write leader swaps memtables"
            );
            let mut imms = Vec::with_capacity(current.imms.len() + 1);
            imms.push(current.mem.clone());
            imms.extend(current.imms.iter().cloned());
            SuperVersion {
                mem: Arc::new(Memtable::new(number, self.opts.memtable_bytes)),
                imms,
                version: current.version.clone(),
            }
        });
        let _bg = self.bg.lock();
        self.bg_cond.notify_all();
        Ok(())
    }

    /// The file of the new segment at `path`: a ready one (a recycled
    /// segment or a spare) renamed, or a new file.
    fn segment_file(&self, path: &Path) -> Result<Box<dyn WritableFile>> {
        let ready = self.ready.lock().pop();
        if let Some(old) = ready {
            self.fs
                .rename(&old, path)
                .map_err(|e| Error::io("reuse commit log file", &old, e))?;
            return self
                .fs
                .overwrite(path)
                .map_err(|e| Error::io("open commit log", path, e));
        }
        self.fs
            .create(path)
            .map_err(|e| Error::io("create commit log", path, e))
    }

    /// Does the last switch's prerequisite (see [`rotate`](Self::rotate))
    /// if it is not done yet, outside the log lock; a failure poisons the
    /// engine.
    pub(super) fn settle_switch(&self) -> Result<()> {
        let closing = self.closing.lock().take();
        match closing.map(|work| work.settle()) {
            Some(Err(err)) => {
                self.poison(&err);
                Err(err)
            }
            _ => Ok(()),
        }
    }

    /// Makes a spare segment file ready for the next switch (see
    /// [`spare_name`]), unless segments are recycled or a file is ready.
    /// On the flush thread; a failure (a full disk) leaves none, and the
    /// switch then creates the file itself.
    pub(super) fn prepare_spare(&self) {
        if self.opts.recycle_log_segments > 0 || !self.ready.lock().is_empty() {
            return;
        }
        let path = self.dir.join(spare_name(self.new_file_number()));
        let made = self.fs.create(&path).and_then(|mut file| {
            file.preallocate(reserve_step(&self.opts))?;
            file.sync_data()
        });
        match made {
            Ok(()) => self.ready.lock().push(path),
            Err(_) => {
                let _ = self.fs.remove_file(&path);
            }
        }
    }

    /// Removes the files kept ready for the next segment (when the engine
    /// closes; the next open would remove them).
    pub(super) fn remove_ready(&self) {
        for path in self.ready.lock().drain(..) {
            let _ = self.fs.remove_file(&path);
        }
    }

    /// A flushed memtable's segment is kept for reuse or deleted.
    pub(super) fn retire_segment(&self, number: u64) {
        let path = self.dir.join(segment_name(number));
        let mut ready = self.ready.lock();
        if ready.len() < self.opts.recycle_log_segments {
            ready.push(path);
        } else if self.fs.remove_file(&path).is_ok() {
            // A deletion lost in a crash leaves a segment below the log
            // number, which the next open removes; the sync is best effort.
            let _ = self.fs.sync_dir(&self.dir);
        }
    }

    /// The interval syncer.
    pub(super) fn sync_loop(&self) {
        let Durability::Interval(every) = self.opts.durability else {
            return;
        };
        while !self.shutdown.load(Ordering::SeqCst) {
            {
                let mut bg = self.bg.lock();
                self.bg_cond.wait_for(&mut bg, every);
            }
            if self.poisoned.load(Ordering::SeqCst) {
                continue;
            }
            // Written under the log lock, synced outside it where the file
            // layer allows: writers then never wait for the periodic sync.
            let result = self.settle_switch().and_then(|()| {
                let mut log = self.log.lock();
                log.writer
                    .write_buffered()
                    .and_then(|()| match log.writer.syncer() {
                        Some(syncer) => Ok(Some(syncer)),
                        None => log.writer.sync().map(|()| None),
                    })
            });
            let result = match result {
                Ok(Some(mut syncer)) => syncer.sync(),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.counters.log_syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => self.poison(&err),
            }
        }
    }
}
