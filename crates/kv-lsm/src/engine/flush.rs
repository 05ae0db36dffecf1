//! Flushing frozen memtables to level-0 tables, on the flush thread.

use super::*;

impl Inner {
    /// Waits (re-checking every [`WAIT`]) until `done` holds.
    pub(super) fn wait_for(&self, done: impl Fn(&SuperVersion) -> bool) -> Result<()> {
        let _hurry = Counted::new(&self.hurry);
        loop {
            self.check_poison()?;
            if done(&self.sv.read()) {
                return Ok(());
            }
            let mut bg = self.bg.lock();
            self.bg_cond.notify_all();
            self.bg_cond.wait_for(&mut bg, WAIT);
        }
    }

    /// The flush thread: writes frozen memtables to level-0 tables, oldest
    /// first.
    pub(super) fn flush_loop(&self) {
        loop {
            let oldest = self.sv.read().imms.last().cloned();
            match oldest {
                Some(imm) if !self.poisoned.load(Ordering::SeqCst) => {
                    if let Err(err) = self.flush_one(&imm) {
                        self.poison(&err);
                    }
                }
                _ => {
                    if self.shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut bg = self.bg.lock();
                    self.bg_cond.wait_for(&mut bg, WAIT);
                }
            }
        }
    }

    pub(super) fn flush_one(&self, imm: &Arc<Memtable>) -> Result<()> {
        let _running = BackgroundWork::start();
        // A switch froze `imm`: a file ready for the next one, first (a
        // few milliseconds; the flush takes a memtable's worth of CPU).
        self.prepare_spare();
        let number = self.new_file_number();
        let mut steps = self.steps(|| pacing::Pacer::flush(self.opts.memtable_bytes, imm));
        let meta = write_l0(&self.dir, &self.fs, &self.opts, imm, number, |builder| {
            self.pace(&mut steps, builder)
        })?;
        let handle = match &meta {
            Some(meta) => {
                let path = self.dir.join(table_name(meta.number));
                Some(TableHandle::new(
                    Table::open(&path, meta.number)?,
                    self.fs.clone(),
                ))
            }
            None => None,
        };
        {
            let mut ctl = self.manifest.lock();
            let sv = self.sv.read().clone();
            // Logs below the next memtable still to be flushed are done.
            let position = sv.imms.iter().position(|m| Arc::ptr_eq(m, imm));
            let log_number = match position {
                Some(i) if i > 0 => sv.imms[i - 1].log_number(),
                _ => sv.mem.log_number(),
            };
            let edit = VersionEdit {
                log_number: Some(log_number),
                next_file: Some(self.next_file.load(Ordering::SeqCst)),
                last_seq: Some(imm.max_seq()),
                added: meta.iter().map(|m| (0, m.clone())).collect(),
                deleted: Vec::new(),
            };
            self.log_edit(&mut ctl, &edit)?;
            let added: Vec<_> = handle.into_iter().map(|h| (0usize, h)).collect();
            self.swap_super(|current| SuperVersion {
                mem: current.mem.clone(),
                imms: current
                    .imms
                    .iter()
                    .filter(|m| !Arc::ptr_eq(m, imm))
                    .cloned()
                    .collect(),
                version: Arc::new(current.version.apply(&added, &[])),
            });
        }
        self.retire_segment(imm.log_number());
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        let _bg = self.bg.lock();
        self.bg_cond.notify_all();
        Ok(())
    }
}
