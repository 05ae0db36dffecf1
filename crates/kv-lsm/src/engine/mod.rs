//! The engine: its public API ([`LsmEngine`]), the shared state of its
//! threads (`Inner`), and where each part of the work lives:
//! `group_commit` (the write path), `segments` (commit-log segments and
//! the interval syncer), `flush` (memtables to tables), `read` (gets and
//! scans), `recovery` (opening), `compaction` (leveled compaction on its
//! own thread), `checkpoint` (point-in-time copies).

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kv_core::{BatchOp, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::iter::{InternalIter, MergingIter, UserIter};
use crate::log::{LogWriter, SegmentEnd, decode_batch, scan_segment, segment_name};
use crate::manifest::{self, Manifest, ManifestState, VersionEdit};
use crate::memtable::{MemIter, Memtable};
use crate::options::{BackgroundPriority, Durability, Options, RecoveryMode, SyncerScheduling};
use crate::table::{Table, TableBuilder, table_name};
use crate::version::{TableHandle, Version};
pub use builder::LsmEngineBuilder;
pub use checkpoint::Checkpoint;

mod builder;
mod checkpoint;
mod compaction;
mod deferred;
mod flush;
mod group_commit;
mod pacing;
mod read;
mod recovery;
mod segments;

use group_commit::{Queue, Single, SlotOp};
use segments::prepare_segment;

/// How long a stalled writer or idle thread waits before re-checking.
const WAIT: Duration = Duration::from_millis(50);

/// What readers see: the memtables and the tables, swapped as one.
#[derive(Debug)]
pub(crate) struct SuperVersion {
    pub(crate) mem: Arc<Memtable>,
    /// Frozen memtables, newest first.
    pub(crate) imms: Vec<Arc<Memtable>>,
    pub(crate) version: Arc<Version>,
}

/// The commit log, used only by the current write leader.
#[derive(Debug)]
struct LogState {
    writer: LogWriter,
    /// Last sequence number assigned.
    last_seq: u64,
}

/// The manifest and the state it describes, changed together.
#[derive(Debug)]
pub(crate) struct ManifestCtl {
    pub(crate) manifest: Manifest,
    pub(crate) state: ManifestState,
}

/// Counters, readable through [`LsmEngine::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) flushes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) compaction_bytes_written: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) write_groups: AtomicU64,
    pub(crate) log_syncs: AtomicU64,
}

/// Figures about an engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Tables per level.
    pub tables_per_level: Vec<usize>,
    /// Table bytes per level.
    pub bytes_per_level: Vec<u64>,
    /// Bytes in the live memtable and the frozen ones.
    pub memtable_bytes: u64,
    /// Frozen memtables waiting for flush.
    pub immutable_memtables: usize,
    /// Memtables flushed since open.
    pub flushes: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// Bytes written by compactions since open.
    pub compaction_bytes_written: u64,
    /// Bytes waiting to be compacted down: all of level 0 once it has
    /// reached `l0_compaction_trigger` tables, and each deeper level's bytes
    /// over its target (RocksDB's "pending compaction bytes"). Growing
    /// means compaction does not keep up; writes stall when it does not.
    pub compaction_debt_bytes: u64,
    /// Times a writer waited for flush or compaction.
    pub stalls: u64,
    /// Commit groups written (each shares one log write and fsync).
    pub write_groups: u64,
    /// Commit-log fsyncs.
    pub log_syncs: u64,
    /// Last sequence number visible to readers.
    pub last_sequence: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) opts: Options,
    pub(crate) fs: Arc<dyn FileSystem>,
    _lock: File,
    queue: Mutex<Queue>,
    log: Mutex<LogState>,
    /// Deferred writes (under `Always`) waiting for the log syncer.
    deferred: Mutex<deferred::Waiting>,
    deferred_cond: Condvar,
    /// How far blocked writers' deferred writes are synced.
    synced: std::sync::Mutex<deferred::Synced>,
    synced_cond: std::sync::Condvar,
    visible_seq: AtomicU64,
    pub(crate) sv: RwLock<Arc<SuperVersion>>,
    /// Guards background wake-ups and stalls.
    pub(crate) bg: Mutex<()>,
    pub(crate) bg_cond: Condvar,
    pub(crate) manifest: Mutex<ManifestCtl>,
    pub(crate) next_file: AtomicU64,
    poison: Mutex<Option<String>>,
    poisoned: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    /// Who waits for background work: paced table writes go at full
    /// speed while anyone does (see `pacing`).
    pub(crate) hurry: AtomicUsize,
    /// Serialises compactions (background and manual).
    pub(crate) compacting: Mutex<()>,
    /// Files ready to be the next segment: flushed segments kept for
    /// reuse (`recycle_log_segments`), or else a spare made ahead (see
    /// `segments::spare_name`).
    ready: Mutex<Vec<PathBuf>>,
    /// The last switch's prerequisite, for the log syncer to do outside
    /// the log lock (see `Inner::rotate`).
    closing: Mutex<Option<crate::log::Prerequisite>>,
    pub(crate) counters: Counters,
}

/// An LSM storage engine: a commit log, a memtable, and levels of sorted
/// tables compacted in the background.
///
/// ```
/// use kv_core::StorageEngine;
/// use kv_lsm::LsmEngine;
///
/// let dir = tempfile::tempdir()?;
/// {
///     let engine = LsmEngine::builder(dir.path()).open()?;
///     engine.put(b"hello", b"world")?;
/// }
/// // Reopened, the write is still there.
/// let engine = LsmEngine::builder(dir.path()).open()?;
/// assert_eq!(engine.get(b"hello")?, Some(b"world".to_vec()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LsmEngine {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for LsmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LsmEngine")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl LsmEngine {
    /// A builder for an engine in directory `path`.
    pub fn builder(path: impl Into<PathBuf>) -> LsmEngineBuilder {
        LsmEngineBuilder::new(path)
    }

    pub(crate) fn open_with(dir: PathBuf, opts: Options) -> Result<Self> {
        let inner = Arc::new(Inner::open(dir, opts)?);
        // The threads go into the engine as they start: if a later one
        // cannot, dropping the engine stops and joins those started (they
        // hold the directory's lock, which a retried open needs).
        let engine = LsmEngine {
            inner,
            threads: Mutex::new(Vec::new()),
        };
        // Each thread has its priority once `open` returns: it says so
        // before it starts its loop.
        let spawn = |name: &'static str, f: fn(&Inner), background: bool| {
            let inner = engine.inner.clone();
            let lower = background && inner.opts.background_priority == BackgroundPriority::Low;
            let (ready, started) = std::sync::mpsc::channel::<()>();
            let thread = spawn_thread(name, move || {
                if lower {
                    lower_this_thread(BACKGROUND_NICE);
                }
                let _ = ready.send(());
                f(&inner)
            })
            .map_err(|e| Error::io("spawn thread", name.to_string(), e))?;
            let _ = started.recv();
            engine.threads.lock().push(thread);
            Ok::<_, Error>(())
        };
        spawn("lsm-flush", Inner::flush_loop, true)?;
        spawn("lsm-compact", compaction::compaction_loop, true)?;
        // The syncers are the writers' own wait: never lowered (the
        // deferred one may yield, see [`SyncerScheduling`]; its loop sets
        // its policy before each wait).
        match engine.inner.opts.durability {
            Durability::Interval(_) => spawn("lsm-sync", Inner::sync_loop, false)?,
            Durability::Always => spawn("lsm-syncer", Inner::deferred_sync_loop, false)?,
            Durability::Never => {}
        }
        Ok(engine)
    }

    /// Applies `batch` atomically (see [`StorageEngine::write`]).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for a key or value over the limits;
    /// [`Error::Poisoned`] after an earlier failed sync; I/O errors from the
    /// commit log (which poison the engine).
    pub fn write_batch(&self, batch: WriteBatch) -> Result<()> {
        self.inner.check_limits(&batch)?;
        if batch.is_empty() {
            return self.inner.check_open();
        }
        if self.inner.opts.durability == Durability::Always {
            // Synced by the syncer thread with every other write waiting,
            // so no writer holds the log lock across a sync.
            return self.inner.write_blocking(batch);
        }
        self.inner.submit(SlotOp::Batch(batch))
    }

    /// Sets `key` to `value` (one write; cheaper than a batch of one).
    ///
    /// # Errors
    ///
    /// As [`write_batch`](Self::write_batch).
    pub fn put_value(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.single(key, Some(value))
    }

    /// Removes `key`.
    ///
    /// # Errors
    ///
    /// As [`write_batch`](Self::write_batch).
    pub fn delete_key(&self, key: &[u8]) -> Result<()> {
        self.single(key, None)
    }

    fn single(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let limits = &self.inner.opts;
        if key.len() > limits.max_key_bytes {
            return Err(Error::TooLarge {
                what: "key",
                len: key.len(),
                limit: limits.max_key_bytes,
            });
        }
        let value_bytes = value.unwrap_or_default();
        if value_bytes.len() > limits.max_value_bytes {
            return Err(Error::TooLarge {
                what: "value",
                len: value_bytes.len(),
                limit: limits.max_value_bytes,
            });
        }
        if self.inner.opts.durability == Durability::Always {
            let mut batch = WriteBatch::new();
            match value {
                Some(v) => batch.put(key, v),
                None => batch.delete(key),
            };
            return self.write_batch(batch);
        }
        self.inner
            .submit(SlotOp::Single(Single::Borrowed { key, value }))
    }

    /// The value of `key`.
    ///
    /// # Errors
    ///
    /// An I/O or corruption error from a table (a block that fails its
    /// checksum).
    pub fn get_value(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    /// Freezes the memtable, writes every frozen memtable to a table and
    /// makes the log durable; returns when that is done.
    ///
    /// # Errors
    ///
    /// An I/O error writing or syncing the log, a table or the manifest; the
    /// engine is then poisoned.
    pub fn flush_all(&self) -> Result<()> {
        self.inner.submit(SlotOp::Rotate)?;
        self.inner.wait_for(|sv| sv.imms.is_empty())
    }

    /// Compacts every table down to one level, dropping overwritten
    /// versions and tombstones. Returns when done.
    ///
    /// # Errors
    ///
    /// An I/O error from compaction; the engine is then poisoned.
    pub fn compact_all(&self) -> Result<()> {
        self.flush_all()?;
        compaction::compact_all(&self.inner)
    }

    /// Waits until no background compaction is due.
    ///
    /// # Errors
    ///
    /// The error that poisoned the engine, if a background flush or compaction
    /// failed.
    pub fn wait_for_compactions(&self) -> Result<()> {
        let _hurry = Counted::new(&self.inner.hurry);
        loop {
            self.inner.check_poison()?;
            let idle = {
                let version = self.inner.sv.read().version.clone();
                compaction::pick(&self.inner, &version).is_none()
            };
            if idle {
                // A compaction may still be running: take its lock.
                let _running = self.inner.compacting.lock();
                let version = self.inner.sv.read().version.clone();
                if compaction::pick(&self.inner, &version).is_none() {
                    return Ok(());
                }
            }
            let mut bg = self.inner.bg.lock();
            self.inner.bg_cond.notify_all();
            self.inner.bg_cond.wait_for(&mut bg, WAIT);
        }
    }

    /// Figures about the engine.
    pub fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let sv = inner.sv.read().clone();
        let c = &inner.counters;
        let bytes_per_level: Vec<u64> = (0..sv.version.levels.len())
            .map(|l| sv.version.level_bytes(l))
            .collect();
        EngineStats {
            tables_per_level: sv.version.levels.iter().map(Vec::len).collect(),
            compaction_debt_bytes: compaction::debt(
                &inner.opts,
                sv.version.levels.first().map_or(0, Vec::len),
                &bytes_per_level,
            ),
            bytes_per_level,
            memtable_bytes: (sv.mem.approximate_bytes()
                + sv.imms.iter().map(|m| m.approximate_bytes()).sum::<usize>())
                as u64,
            immutable_memtables: sv.imms.len(),
            flushes: c.flushes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            compaction_bytes_written: c.compaction_bytes_written.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            write_groups: c.write_groups.load(Ordering::Relaxed),
            log_syncs: c.log_syncs.load(Ordering::Relaxed),
            last_sequence: inner.visible_seq.load(Ordering::Acquire),
        }
    }

    /// The directory the engine lives in.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// The space left on the file system of the engine's directory (a
    /// full disk makes the engine refuse writes: watch it before).
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn disk_space(&self) -> std::io::Result<crate::DiskSpace> {
        crate::disk_space(&self.inner.dir)
    }

    /// Stops the background threads and makes the log durable. Dropping the
    /// engine does the same but cannot report a failure.
    ///
    /// # Errors
    ///
    /// An I/O error from the final flush or sync, or the error that poisoned
    /// the engine.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        {
            let _bg = self.inner.bg.lock();
            self.inner.bg_cond.notify_all();
        }
        {
            let _waiting = self.inner.deferred.lock();
            self.inner.deferred_cond.notify_all();
        }
        for handle in self.threads.lock().drain(..) {
            let _ = handle.join();
        }
        self.inner.remove_ready();
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut log = self.inner.log.lock();
        log.writer.write_buffered()?;
        log.writer.sync()
    }
}

#[cfg(test)]
thread_local! {
    /// The name of an engine thread whose start fails on this thread's
    /// opens, for tests of an open that fails part way.
    static FAIL_SPAWN: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// Starts the engine thread `name` running `f`.
fn spawn_thread(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    #[cfg(test)]
    if FAIL_SPAWN.get() == Some(name) {
        return Err(std::io::Error::other("thread start refused by the test"));
    }
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

impl Drop for LsmEngine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl StorageEngine for LsmEngine {
    fn get(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.get(key)?)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> std::result::Result<(), StorageError> {
        Ok(self.put_value(key, value)?)
    }

    fn delete(&self, key: &[u8]) -> std::result::Result<(), StorageError> {
        Ok(self.delete_key(key)?)
    }

    fn write(&self, batch: WriteBatch) -> std::result::Result<(), StorageError> {
        Ok(self.write_batch(batch)?)
    }

    /// Appended to the log and the memtable at once; under `Always` the
    /// engine's syncer thread syncs it (with whatever else waits) and then
    /// makes it visible and resolves the `Durable`.
    fn write_deferred(
        &self,
        batch: WriteBatch,
    ) -> std::result::Result<kv_core::Durable, StorageError> {
        Ok(self.inner.write_deferred(batch)?)
    }

    fn get_latest(&self, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.get_at(key, u64::MAX)?)
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> std::result::Result<ScanIter<'_>, StorageError> {
        let iter = self.inner.scan(start, end)?;
        Ok(Box::new(iter.map(|r| r.map_err(StorageError::from))))
    }

    fn flush(&self) -> std::result::Result<(), StorageError> {
        Ok(self.flush_all()?)
    }

    fn last_sequence(&self) -> SeqNo {
        SeqNo(self.inner.visible_seq.load(Ordering::Acquire))
    }

    /// Reads look in the memtables and in memory-mapped tables (blocks
    /// checksummed in place); no lock is held across I/O.
    fn inline_reads(&self) -> bool {
        true
    }

    /// A deferred write finishes in microseconds (its sync, under
    /// `Always`, is the syncer thread's) unless it stalls or switches the
    /// memtable (which syncs and creates a log segment): `true` when
    /// neither is due.
    fn inline_writes(&self) -> bool {
        !self.inner.write_may_wait()
    }

    /// Poisoned once a commit, flush or compaction failed (a full disk, a
    /// failed fsync): the engine refuses writes until it is reopened.
    fn health(&self) -> std::result::Result<(), StorageError> {
        Ok(self.inner.check_poison()?)
    }
}

impl Inner {
    /// Records `edit` in the manifest, durably; the caller holds the
    /// manifest lock (`ctl`) so edits and the state they build stay in order.
    pub(crate) fn log_edit(&self, ctl: &mut ManifestCtl, edit: &VersionEdit) -> Result<()> {
        ctl.state
            .apply(edit)
            .map_err(|reason| Error::corrupt(&self.dir, reason))?;
        let state = ctl.state.clone();
        ctl.manifest
            .log_edit(edit, &state, || self.new_file_number())
    }

    /// Replaces what readers see with `change(current)`, reading and
    /// writing under one lock so that concurrent flushes, compactions and
    /// memtable switches never undo each other.
    pub(crate) fn swap_super(&self, change: impl FnOnce(&SuperVersion) -> SuperVersion) {
        let mut slot = self.sv.write();
        let next = change(&slot);
        *slot = Arc::new(next);
    }

    pub(crate) fn new_file_number(&self) -> u64 {
        self.next_file.fetch_add(1, Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.check_poison()
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            let reason = self.poison.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned(reason));
        }
        Ok(())
    }

    /// Refuses every later write: state on disk can no longer be vouched for.
    pub(crate) fn poison(&self, err: &Error) {
        let mut poison = self.poison.lock();
        if poison.is_none() {
            *poison = Some(err.to_string());
        }
        self.poisoned.store(true, Ordering::SeqCst);
        let _bg = self.bg.lock();
        self.bg_cond.notify_all();
    }
}

/// Flushes and compactions running now, in every engine of the process:
/// a yielding syncer is scheduled normally while any runs (see
/// [`SyncerScheduling::Yielding`]), since those threads are lowered
/// whichever engine they belong to (three nodes in one process share the
/// CPUs as much as one node's own threads do).
static BACKGROUND_WORK: AtomicUsize = AtomicUsize::new(0);

/// Flushes and compactions in [`BACKGROUND_WORK`].
pub(crate) struct BackgroundWork;

impl BackgroundWork {
    /// Counts a flush or compaction while the guard lives.
    pub(crate) fn start() -> Counted<'static> {
        Counted::new(&BACKGROUND_WORK)
    }

    /// Whether a flush or compaction runs anywhere in the process.
    pub(crate) fn running() -> bool {
        BACKGROUND_WORK.load(Ordering::SeqCst) > 0
    }
}

/// Counts itself in a counter while it lives: background work running
/// ([`BackgroundWork`]), or someone waiting for it (`Inner::hurry`).
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Nice levels a flush or compaction thread runs below the thread that
/// opened the engine ([`BackgroundPriority::Low`]).
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by `levels` nice levels (at
/// most to 19). On Linux a thread's nice value is its own, so the rest
/// of the process keeps its priority. Best effort: a failure leaves the
/// thread as it was.
#[cfg(target_os = "linux")]
fn lower_this_thread(levels: i32) {
    // SAFETY: nice(2) takes an integer and changes only the calling
    // thread's scheduling; it touches no memory of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::nice(levels);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread(_levels: i32) {}

/// Puts the calling thread in `SCHED_BATCH` (`true`: the same share of
/// the CPU, no preemption on wake-up) or back in the normal policy, at the
/// same nice value either way ([`SyncerScheduling::Yielding`]). Best
/// effort, as [`lower_this_thread`].
#[cfg(target_os = "linux")]
pub(super) fn set_batch_policy(batch: bool) {
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) reads the `sched_param` we pass by
    // reference for the duration of the call and changes only the calling
    // thread's (pid 0) scheduling; both policies are unprivileged.
    #[allow(unsafe_code)]
    unsafe {
        libc::sched_setscheduler(0, policy, &param);
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn set_batch_policy(_batch: bool) {}

/// Writes the newest version of every key of `mem` to level-0 table
/// `number`. `None` for an empty memtable.
pub(crate) fn write_l0(
    dir: &Path,
    fs: &Arc<dyn FileSystem>,
    opts: &Options,
    mem: &Memtable,
    number: u64,
    mut pace: impl FnMut(&mut TableBuilder) -> Result<()>,
) -> Result<Option<crate::table::TableMeta>> {
    if mem.is_empty() {
        return Ok(None);
    }
    let path = dir.join(table_name(number));
    let file = fs
        .create(&path)
        .map_err(|e| Error::io("create table", &path, e))?;
    let mut builder = TableBuilder::new(
        file,
        &path,
        number,
        opts.block_bytes,
        opts.bloom_bits_per_key,
    );
    // The previous entry's key (versions of one key are adjacent, newest
    // first): one buffer reused, not a copy per entry.
    let mut last: Option<Vec<u8>> = None;
    let mut result = Ok(());
    mem.for_each(|key, seq, value| {
        if result.is_err() || last.as_deref() == Some(key) {
            return;
        }
        result = builder
            .add(key, seq, value)
            .and_then(|()| pace(&mut builder));
        let last = last.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(key);
    });
    result?;
    let meta = builder.finish()?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open that cannot start one of its threads (each in turn) fails,
    /// stops the threads it had started and lets go of the directory: the
    /// next open finds it unlocked and every write made before.
    #[test]
    fn an_open_that_cannot_start_a_thread_leaves_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            LsmEngine::builder(dir.path())
                .durability(Durability::Always)
                .open()
        };
        open().unwrap().put_value(b"k", b"v").unwrap();
        for name in ["lsm-flush", "lsm-compact", "lsm-syncer"] {
            FAIL_SPAWN.set(Some(name));
            let err = open().unwrap_err();
            FAIL_SPAWN.set(None);
            assert!(err.to_string().contains(name), "{name}: {err}");
            let engine = open().unwrap_or_else(|e| panic!("reopen after {name} failed: {e}"));
            assert_eq!(engine.inner.get(b"k").unwrap(), Some(b"v".to_vec()));
        }
    }
}
