//! The engine: write path with group commit, reads, flush and recovery.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use kv_core::{BatchOp, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::cache::BlockCache;
use crate::compaction;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::iter::{InternalIter, MergingIter, UserIter};
use crate::log::{LogWriter, SegmentEnd, decode_batch, scan_segment, segment_name};
use crate::manifest::{self, Manifest, ManifestState, VersionEdit};
use crate::memtable::{MemIter, Memtable};
use crate::options::{Durability, LsmEngineBuilder, Options, RecoveryMode};
use crate::table::{Table, TableBuilder, table_name};
use crate::version::{TableHandle, Version};

/// Log segments kept for reuse instead of deleted.
const RECYCLE_SEGMENTS: usize = 2;
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

enum SlotOp {
    Batch(WriteBatch),
    /// One put or delete, key and value in one buffer (the key is the first
    /// `key_len` bytes), handed to the memtable without a copy.
    Single {
        data: Vec<u8>,
        key_len: usize,
        tombstone: bool,
    },
    /// Freeze the memtable (for `flush`).
    Rotate,
}

/// Where a queued request stands.
enum SlotState {
    Waiting,
    /// The previous leader handed leadership to this request's writer.
    Lead,
    Done(Result<()>),
}

/// One request in the write queue.
struct Slot {
    op: Mutex<Option<SlotOp>>,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Arc<Slot>>,
    leader: bool,
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
    pub(crate) cache: Arc<BlockCache>,
    _lock: File,
    queue: Mutex<Queue>,
    /// Waiting writers sleep here; a finished group is announced with one
    /// `notify_all` (one system call, however large the group).
    done_lock: Mutex<()>,
    done_cond: Condvar,
    log: Mutex<LogState>,
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
    /// Serialises compactions (background and manual).
    pub(crate) compacting: Mutex<()>,
    recycled: Mutex<Vec<PathBuf>>,
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
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(&Inner)| {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || f(&inner))
                .map_err(|e| Error::io("spawn thread", name.to_string(), e))
        };
        threads.push(spawn("lsm-flush", Inner::flush_loop)?);
        threads.push(spawn("lsm-compact", compaction::compaction_loop)?);
        if let Durability::Interval(_) = inner.opts.durability {
            threads.push(spawn("lsm-sync", Inner::sync_loop)?);
        }
        Ok(LsmEngine {
            inner,
            threads: Mutex::new(threads),
        })
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
        let mut data = Vec::with_capacity(key.len() + value_bytes.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value_bytes);
        self.inner.submit(SlotOp::Single {
            data,
            key_len: key.len(),
            tombstone: value.is_none(),
        })
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
        EngineStats {
            tables_per_level: sv.version.levels.iter().map(Vec::len).collect(),
            bytes_per_level: (0..sv.version.levels.len())
                .map(|l| sv.version.level_bytes(l))
                .collect(),
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
        for handle in self.threads.lock().drain(..) {
            let _ = handle.join();
        }
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut log = self.inner.log.lock();
        log.writer.write_buffered()?;
        log.writer.sync()
    }
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

    /// Reads look in the memtables and in memory-mapped tables through the
    /// block cache; no lock is held across I/O.
    fn inline_reads(&self) -> bool {
        true
    }

    /// Poisoned once a commit, flush or compaction failed (a full disk, a
    /// failed fsync): the engine refuses writes until it is reopened.
    fn health(&self) -> std::result::Result<(), StorageError> {
        Ok(self.inner.check_poison()?)
    }
}

/// A scan: the user iterator plus the versions it reads, kept alive.
struct Scan {
    iter: UserIter,
    _pin: Arc<SuperVersion>,
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.iter.next()
    }
}

impl Inner {
    fn open(dir: PathBuf, opts: Options) -> Result<Inner> {
        let fs = opts.fs.clone();
        kv_core::files::create_private_dir(&dir)
            .map_err(|e| Error::io("create directory", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = kv_core::files::private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
        let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
        let (mut state, old_manifest) = match manifest::recover(&dir, fs.as_ref())? {
            Some((state, number)) => (state, Some(number)),
            None => (ManifestState::empty(), None),
        };

        // Open the live tables.
        let mut version = Version::empty();
        for (level, metas) in state.levels.iter().enumerate() {
            for meta in metas {
                let path = dir.join(table_name(meta.number));
                let table = Table::open(&path, meta.number, cache.clone())?;
                if table.meta().size != meta.size {
                    return Err(Error::corrupt(
                        &path,
                        format!(
                            "size {} differs from the manifest's {}",
                            table.meta().size,
                            meta.size
                        ),
                    ));
                }
                version.levels[level].push(TableHandle::new(table, fs.clone(), cache.clone()));
            }
        }
        version.normalize();

        // Replay the logs the manifest still needs.
        let mut logs = list_numbered(&dir, ".log")?;
        logs.retain(|&n| n >= state.log_number);
        let mut next_file = state.next_file.max(logs.last().map_or(0, |n| n + 1));
        let mut mem = Memtable::new(0);
        let mut last_seq = state.last_seq;
        let mut added = Vec::new();
        let mut discard_from = None;
        for (i, &number) in logs.iter().enumerate() {
            if discard_from.is_some() {
                break;
            }
            let path = dir.join(segment_name(number));
            let bytes = std::fs::read(&path).map_err(|e| Error::io("read commit log", &path, e))?;
            let contents = scan_segment(&bytes, number);
            let is_last = i + 1 == logs.len();
            let cut = match &contents.end {
                SegmentEnd::Clean => None,
                SegmentEnd::Torn { offset, reason } if is_last => {
                    let _ = (offset, reason);
                    Some(contents.valid_len)
                }
                SegmentEnd::Torn { offset, reason } | SegmentEnd::Corrupt { offset, reason } => {
                    if opts.recovery == RecoveryMode::Strict {
                        return Err(Error::LogCorruption {
                            segment: path,
                            offset: *offset,
                            reason: reason.clone(),
                        });
                    }
                    discard_from = Some(i + 1);
                    Some(contents.valid_len)
                }
            };
            for record in &contents.records {
                let ops =
                    decode_batch(&bytes[record.clone()]).map_err(|e| Error::LogCorruption {
                        segment: path.clone(),
                        offset: record.start as u64,
                        reason: format!("checksummed batch does not decode: {e}"),
                    })?;
                for op in ops {
                    mem.insert(op.key, op.seq, op.value);
                    last_seq = last_seq.max(op.seq);
                }
                if mem.approximate_bytes() >= opts.memtable_bytes {
                    let meta = write_l0(&dir, &fs, &opts, &mem, next_file)?;
                    next_file += 1;
                    added.extend(meta);
                    mem = Memtable::new(0);
                }
            }
            if let Some(len) = cut {
                fs.truncate(&path, len)
                    .map_err(|e| Error::io("truncate commit log", &path, e))?;
            }
        }
        if !mem.is_empty() {
            added.extend(write_l0(&dir, &fs, &opts, &mem, next_file)?);
            next_file += 1;
        }

        // The new segment, and a manifest that no longer needs the old ones.
        let log_number = next_file;
        next_file += 1;
        let manifest_number = next_file;
        next_file += 1;
        let mut edit = VersionEdit {
            log_number: Some(log_number),
            next_file: Some(next_file),
            last_seq: Some(last_seq),
            ..VersionEdit::default()
        };
        for meta in &added {
            let path = dir.join(table_name(meta.number));
            let table = Table::open(&path, meta.number, cache.clone())?;
            version.levels[0].push(TableHandle::new(table, fs.clone(), cache.clone()));
            edit.added.push((0, meta.clone()));
        }
        version.normalize();
        state
            .apply(&edit)
            .map_err(|reason| Error::corrupt(&dir, reason))?;
        let segment_path = dir.join(segment_name(log_number));
        let file = fs
            .create(&segment_path)
            .map_err(|e| Error::io("create commit log", &segment_path, e))?;
        let mut writer = LogWriter::new(file, segment_path.clone(), log_number);
        prepare_segment(&mut writer, &opts)?;
        let manifest = Manifest::create(&dir, fs.clone(), manifest_number, &state, old_manifest)?;
        remove_strays(&dir, fs.as_ref(), &state, log_number, manifest_number);

        Ok(Inner {
            dir,
            fs,
            cache,
            _lock: lock,
            queue: Mutex::new(Queue::default()),
            done_lock: Mutex::new(()),
            done_cond: Condvar::new(),
            log: Mutex::new(LogState { writer, last_seq }),
            visible_seq: AtomicU64::new(last_seq),
            sv: RwLock::new(Arc::new(SuperVersion {
                mem: Arc::new(Memtable::new(log_number)),
                imms: Vec::new(),
                version: Arc::new(version),
            })),
            bg: Mutex::new(()),
            bg_cond: Condvar::new(),
            manifest: Mutex::new(ManifestCtl { manifest, state }),
            next_file: AtomicU64::new(next_file),
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            compacting: Mutex::new(()),
            recycled: Mutex::new(Vec::new()),
            counters: Counters::default(),
            opts,
        })
    }

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

    fn check_limits(&self, batch: &WriteBatch) -> Result<()> {
        for op in batch.ops() {
            let key = op.key();
            if key.len() > self.opts.max_key_bytes {
                return Err(Error::TooLarge {
                    what: "key",
                    len: key.len(),
                    limit: self.opts.max_key_bytes,
                });
            }
            if let BatchOp::Put { value, .. } = op
                && value.len() > self.opts.max_value_bytes
            {
                return Err(Error::TooLarge {
                    what: "value",
                    len: value.len(),
                    limit: self.opts.max_value_bytes,
                });
            }
        }
        Ok(())
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

    /// Queues `op` and returns its result. The first writer to find no
    /// leader commits every queued request as one group (one log write,
    /// one fsync), wakes the group's members, and hands leadership to the
    /// next queued writer.
    fn submit(&self, op: SlotOp) -> Result<()> {
        self.check_open()?;
        let slot = Arc::new(Slot {
            op: Mutex::new(Some(op)),
            state: Mutex::new(SlotState::Waiting),
        });
        {
            let mut queue = self.queue.lock();
            queue.pending.push_back(slot.clone());
            if queue.leader {
                drop(queue);
                let mut done = self.done_lock.lock();
                loop {
                    let state = std::mem::replace(&mut *slot.state.lock(), SlotState::Waiting);
                    match state {
                        SlotState::Done(result) => return result,
                        SlotState::Lead => break,
                        SlotState::Waiting => self.done_cond.wait(&mut done),
                    }
                }
            } else {
                queue.leader = true;
            }
        }
        // Leader: our request is still queued; commit everything queued.
        let group: Vec<Arc<Slot>> = self.queue.lock().pending.drain(..).collect();
        let outcome = self.commit_group(&group);
        if let Err(err) = &outcome
            && !matches!(err, Error::Closed | Error::Poisoned(_))
        {
            self.poison(err);
        }
        let mut own = Ok(());
        for member in &group {
            let result = match &outcome {
                Ok(()) => Ok(()),
                Err(Error::Closed) => Err(Error::Closed),
                Err(err) => Err(Error::Poisoned(err.to_string())),
            };
            if Arc::ptr_eq(member, &slot) {
                own = result;
            } else {
                *member.state.lock() = SlotState::Done(result);
            }
        }
        {
            let mut queue = self.queue.lock();
            match queue.pending.front() {
                Some(next) => *next.state.lock() = SlotState::Lead,
                None => queue.leader = false,
            }
        }
        let _done = self.done_lock.lock();
        self.done_cond.notify_all();
        own
    }

    /// Writes a group to the log (one write, one fsync under `Always`),
    /// then to the memtable, then makes it visible.
    fn commit_group(&self, group: &[Arc<Slot>]) -> Result<()> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        self.check_poison()?;
        let mut ops: Vec<SlotOp> = group.iter().filter_map(|s| s.op.lock().take()).collect();
        let force_rotate = ops.iter().any(|op| matches!(op, SlotOp::Rotate));
        let mut log = self.log.lock();
        self.make_room(&mut log, force_rotate)?;
        let mut seq = log.last_seq;
        let mut any = false;
        for op in &ops {
            match op {
                SlotOp::Batch(batch) => {
                    log.writer.add_batch(seq + 1, batch);
                    seq += batch.len() as u64;
                    any = true;
                }
                SlotOp::Single {
                    data,
                    key_len,
                    tombstone,
                } => {
                    let (key, value) = data.split_at(*key_len);
                    log.writer
                        .add_single(seq + 1, key, (!tombstone).then_some(value));
                    seq += 1;
                    any = true;
                }
                SlotOp::Rotate => {}
            }
        }
        if !any {
            return Ok(());
        }
        log.writer.write_buffered()?;
        if self.opts.durability == Durability::Always {
            log.writer.sync()?;
            self.counters.log_syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.write_groups.fetch_add(1, Ordering::Relaxed);
        let mem = self.sv.read().mem.clone();
        let mut next = log.last_seq;
        for op in ops.drain(..) {
            match op {
                SlotOp::Batch(batch) => {
                    for op in batch.ops() {
                        next += 1;
                        match op {
                            BatchOp::Put { key, value } => mem.insert(key, next, Some(value)),
                            BatchOp::Delete { key } => mem.insert(key, next, None),
                        }
                    }
                }
                SlotOp::Single {
                    data,
                    key_len,
                    tombstone,
                } => {
                    next += 1;
                    mem.insert_owned(data, key_len, next, tombstone);
                }
                SlotOp::Rotate => {}
            }
        }
        log.last_seq = seq;
        self.visible_seq.store(seq, Ordering::Release);
        Ok(())
    }

    /// Freezes the memtable when it is full (or `force` and not empty),
    /// waiting first while too many frozen memtables or level-0 tables
    /// pile up (back-pressure).
    fn make_room(&self, log: &mut LogState, mut force: bool) -> Result<()> {
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
    fn rotate(&self, log: &mut LogState, sv: &Arc<SuperVersion>) -> Result<()> {
        // The terminator marks where this segment ends, in case it is
        // still needed at the next open (its flush failed).
        log.writer.end_segment()?;
        log.writer.sync()?;
        let number = self.new_file_number();
        let path = self.dir.join(segment_name(number));
        let recycled = self.recycled.lock().pop();
        let fresh = recycled.is_none();
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
        if fresh {
            prepare_segment(&mut writer, &self.opts)?;
        }
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

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let seq = self.visible_seq.load(Ordering::Acquire);
        let sv = self.sv.read().clone();
        if let Some(found) = sv.mem.get(key, seq) {
            return Ok(found);
        }
        for imm in &sv.imms {
            if let Some(found) = imm.get(key, seq) {
                return Ok(found);
            }
        }
        Ok(sv.version.get(key, seq)?.flatten())
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        let seq = self.visible_seq.load(Ordering::Acquire);
        let sv = self.sv.read().clone();
        let mut children: Vec<Box<dyn InternalIter>> = Vec::with_capacity(2 + sv.imms.len());
        children.push(Box::new(MemIter::new(sv.mem.clone(), start)));
        for imm in &sv.imms {
            children.push(Box::new(MemIter::new(imm.clone(), start)));
        }
        children.extend(sv.version.iters(start)?);
        let mut iter = UserIter::new(MergingIter::new(children), seq, end.map(<[u8]>::to_vec));
        // An excluded start: the sources are positioned at or after the key.
        if let Bound::Excluded(k) = start {
            iter.skip_key(k);
        }
        Ok(Scan { iter, _pin: sv })
    }

    /// Waits (re-checking every [`WAIT`]) until `done` holds.
    fn wait_for(&self, done: impl Fn(&SuperVersion) -> bool) -> Result<()> {
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
    fn flush_loop(&self) {
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

    fn flush_one(&self, imm: &Arc<Memtable>) -> Result<()> {
        let number = self.new_file_number();
        let meta = write_l0(&self.dir, &self.fs, &self.opts, imm, number)?;
        let handle = match &meta {
            Some(meta) => {
                let path = self.dir.join(table_name(meta.number));
                Some(TableHandle::new(
                    Table::open(&path, meta.number, self.cache.clone())?,
                    self.fs.clone(),
                    self.cache.clone(),
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

    /// A flushed memtable's segment is kept for reuse or deleted.
    fn retire_segment(&self, number: u64) {
        let path = self.dir.join(segment_name(number));
        let mut recycled = self.recycled.lock();
        if recycled.len() < RECYCLE_SEGMENTS {
            recycled.push(path);
        } else if self.fs.remove_file(&path).is_ok() {
            // A deletion lost in a crash leaves a segment below the log
            // number, which the next open removes; the sync is best effort.
            let _ = self.fs.sync_dir(&self.dir);
        }
    }

    /// The interval syncer.
    fn sync_loop(&self) {
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

impl UserIter {
    /// Skips every version of `key` at the start of the iteration.
    pub(crate) fn skip_key(&mut self, key: &[u8]) {
        self.set_last(key);
    }
}

/// Sizes a new segment so that appends within it change no metadata.
fn prepare_segment(writer: &mut LogWriter, opts: &Options) -> Result<()> {
    let path = writer.path().to_path_buf();
    writer
        .preallocate((opts.memtable_bytes as u64).saturating_mul(2))
        .map_err(|e| Error::io("preallocate commit log", &path, e))
}

/// Writes the newest version of every key of `mem` to level-0 table
/// `number`. `None` for an empty memtable.
pub(crate) fn write_l0(
    dir: &Path,
    fs: &Arc<dyn FileSystem>,
    opts: &Options,
    mem: &Memtable,
    number: u64,
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
    let mut last: Option<Vec<u8>> = None;
    let mut result = Ok(());
    mem.for_each(|key, seq, value| {
        if result.is_err() || last.as_deref() == Some(key) {
            return;
        }
        result = builder.add(key, seq, value);
        last = Some(key.to_vec());
    });
    result?;
    let meta = builder.finish()?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    Ok(Some(meta))
}

/// File numbers of `dir`'s entries named `NNNNNN<suffix>`, ascending.
fn list_numbered(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Removes tables the manifest does not list, logs it no longer needs and
/// old manifests (left by a crash between writing and recording them).
fn remove_strays(
    dir: &Path,
    fs: &dyn FileSystem,
    state: &ManifestState,
    log_number: u64,
    manifest_number: u64,
) {
    let live: std::collections::HashSet<u64> =
        state.levels.iter().flatten().map(|m| m.number).collect();
    if let Ok(tables) = list_numbered(dir, ".sst") {
        for n in tables.into_iter().filter(|n| !live.contains(n)) {
            let _ = fs.remove_file(&dir.join(table_name(n)));
        }
    }
    if let Ok(logs) = list_numbered(dir, ".log") {
        for n in logs.into_iter().filter(|&n| n < log_number) {
            let _ = fs.remove_file(&dir.join(segment_name(n)));
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale_manifest = name
                .strip_prefix("MANIFEST-")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n != manifest_number);
            if stale_manifest || name == "CURRENT.tmp" {
                let _ = fs.remove_file(&entry.path());
            }
        }
    }
    let _ = fs.sync_dir(dir);
}
