//! Commit-log segments: rotating to a new one when the memtable is full,
//! retiring (recycling) those no longer needed, and the interval syncer.

use super::*;

/// Reserves a segment's disk space (written zeros) a sixteenth of a
/// memtable at a time (256 KiB to 1 MiB), so appends rarely change
/// metadata and a segment takes little more space than it holds. The
/// zeros are written by whoever appends across the reserved end, under
/// the log lock: a step of 1 MiB holds the lock for about a quarter of a
/// millisecond.
pub(super) fn prepare_segment(writer: &mut LogWriter, opts: &Options) {
    let step = (opts.memtable_bytes as u64 / 16).clamp(256 << 10, 1 << 20);
    writer.reserve_in_steps(step);
}

impl Inner {
    /// Whether a write now might wait: the memtable is nearly full (its
    /// switch syncs the log and creates a segment), or the switch would
    /// stall on too many level-0 tables or frozen memtables.
    pub(super) fn write_may_wait(&self) -> bool {
        let sv = self.sv.read();
        let nearly_full = sv.mem.approximate_bytes() >= self.opts.memtable_bytes / 8 * 7;
        nearly_full
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

    /// Closes the current segment (fsynced whatever the policy) and starts
    /// a new segment and memtable.
    pub(super) fn rotate(&self, log: &mut LogState, sv: &Arc<SuperVersion>) -> Result<()> {
        // The terminator marks where this segment ends, in case it is
        // still needed at the next open (its flush failed).
        log.writer.end_segment()?;
        log.writer.sync()?;
        let number = self.new_file_number();
        let path = self.dir.join(segment_name(number));
        let recycled = self.recycled.lock().pop();
        let file = match recycled {
            Some(old) => {
                self.fs
                    .rename(&old, &path)
                    .map_err(|e| Error::io("recycle commit log", &old, e))?;
                self.fs
                    .overwrite(&path)
                    .map_err(|e| Error::io("open commit log", &path, e))?
            }
            None => self
                .fs
                .create(&path)
                .map_err(|e| Error::io("create commit log", &path, e))?,
        };
        let mut writer = LogWriter::new(file, path, number);
        // A recycled segment's blocks are already allocated up to its old
        // size: reserving within them changes nothing.
        prepare_segment(&mut writer, &self.opts);
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        log.writer = writer;
        self.swap_super(|current| {
            debug_assert!(
                Arc::ptr_eq(&current.mem, &sv.mem),
                "only the write leader swaps memtables"
            );
            let mut imms = Vec::with_capacity(current.imms.len() + 1);
            imms.push(current.mem.clone());
            imms.extend(current.imms.iter().cloned());
            SuperVersion {
                mem: Arc::new(Memtable::new(number)),
                imms,
                version: current.version.clone(),
            }
        });
        let _bg = self.bg.lock();
        self.bg_cond.notify_all();
        Ok(())
    }

    /// A flushed memtable's segment is kept for reuse or deleted.
    pub(super) fn retire_segment(&self, number: u64) {
        let path = self.dir.join(segment_name(number));
        let mut recycled = self.recycled.lock();
        if recycled.len() < self.opts.recycle_log_segments {
            recycled.push(path);
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
            let result = {
                let mut log = self.log.lock();
                log.writer
                    .write_buffered()
                    .and_then(|()| match log.writer.syncer() {
                        Some(syncer) => Ok(Some(syncer)),
                        None => log.writer.sync().map(|()| None),
                    })
            };
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
