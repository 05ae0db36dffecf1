//! Opening an engine: the manifest, the tables it lists, the commit-log
//! segments replayed into the memtable, strays from a crash removed.

use super::*;

impl Inner {
    pub(super) fn open(dir: PathBuf, opts: Options) -> Result<Inner> {
        let fs = opts.fs.clone();
        kv_core::files::create_private_dir(&dir)
            .map_err(|e| Error::io("create directory", &dir, e))?;
        let lock = lock_dir(&dir)?;
        let (mut state, old_manifest) = match manifest::recover(&dir, fs.as_ref())? {
            Some((state, number)) => (state, Some(number)),
            None => (ManifestState::empty(), None),
        };

        let mut version = open_tables(&dir, &state, &fs)?;

        // Replay the logs the manifest still needs.
        let Replayed {
            added,
            last_seq,
            mut next_file,
        } = replay_logs(&dir, &fs, &opts, &state)?;

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
            let table = Table::open(&path, meta.number)?;
            version.levels[0].push(TableHandle::new(table, fs.clone()));
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
        prepare_segment(&mut writer, &opts);
        let manifest = Manifest::create(&dir, fs.clone(), manifest_number, &state, old_manifest)?;
        remove_strays(&dir, fs.as_ref(), &state, log_number, manifest_number);

        Ok(Inner {
            dir,
            fs,
            _lock: lock,
            queue: Mutex::new(Queue::default()),
            log: Mutex::new(LogState { writer, last_seq }),
            deferred: Mutex::new(deferred::Waiting::default()),
            deferred_cond: Condvar::new(),
            synced: std::sync::Mutex::default(),
            synced_cond: std::sync::Condvar::new(),
            visible_seq: AtomicU64::new(last_seq),
            sv: RwLock::new(Arc::new(SuperVersion {
                mem: Arc::new(Memtable::new(log_number, opts.memtable_bytes)),
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
            hurry: AtomicUsize::new(0),
            compacting: Mutex::new(()),
            ready: Mutex::new(Vec::new()),
            closing: Mutex::new(None),
            counters: Counters::default(),
            opts,
        })
    }
}

/// File numbers of `dir`'s entries named `NNNNNN<suffix>`, ascending.
pub(super) fn list_numbered(dir: &Path, suffix: &str) -> Result<Vec<u64>> {
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

/// Removes tables the manifest does not list, logs it no longer needs, old
/// manifests (left by a crash between writing and recording them) and
/// spare segment files.
pub(super) fn remove_strays(
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
            let spare = name
                .strip_suffix(".spare")
                .is_some_and(|n| n.parse::<u64>().is_ok());
            if stale_manifest || spare || name == "CURRENT.tmp" {
                let _ = fs.remove_file(&entry.path());
            }
        }
    }
    let _ = fs.sync_dir(dir);
}

/// Takes the directory's `LOCK` file: one engine per directory.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let lock_path = dir.join("LOCK");
    let lock = kv_core::files::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("open", &lock_path, e))?;
    // A lock can be held for a moment by no engine at all: a child process
    // forked elsewhere in this program holds a copy of every descriptor
    // until it execs (they close on exec). So a busy lock is asked again
    // for up to half a second before the directory counts as taken.
    let mut tries = 0;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if tries < LOCK_TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
    }
}

/// Times a busy `LOCK` is asked again, 10 ms apart.
const LOCK_TRIES: u32 = 50;

/// Opens the tables the manifest lists, checking each one's size.
fn open_tables(dir: &Path, state: &ManifestState, fs: &Arc<dyn FileSystem>) -> Result<Version> {
    let mut version = Version::empty();
    for (level, metas) in state.levels.iter().enumerate() {
        for meta in metas {
            let path = dir.join(table_name(meta.number));
            let table = Table::open(&path, meta.number)?;
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
            version.levels[level].push(TableHandle::new(table, fs.clone()));
        }
    }
    version.normalize();
    Ok(version)
}

/// What replaying the commit log left: the level-0 tables it wrote, the
/// last sequence number seen, the next free file number.
struct Replayed {
    added: Vec<crate::table::TableMeta>,
    last_seq: u64,
    next_file: u64,
}

/// Replays the commit-log segments the manifest still needs into level-0
/// tables: a torn tail of the last segment holding records is cut off;
/// damage before it fails a strict open, or, when recovery may skip, ends
/// the replay there (the later segments are dropped).
///
/// The last segment *holding records*, not the last file: a memtable
/// switch names the next segment before the old one is synced through its
/// terminator, and nothing is written to the new one until it is (see
/// `log::Prerequisite`). A crash between the two leaves a new segment of
/// zeros (or of a recycled file's earlier life) after an old one that may
/// end torn; once any record of a segment is on disk, the one before it is
/// whole, so a torn segment followed by records is damage.
fn replay_logs(
    dir: &Path,
    fs: &Arc<dyn FileSystem>,
    opts: &Options,
    state: &ManifestState,
) -> Result<Replayed> {
    let mut logs = list_numbered(dir, ".log")?;
    logs.retain(|&n| n >= state.log_number);
    let mut next_file = state.next_file.max(logs.last().map_or(0, |n| n + 1));
    let mut mem = Memtable::new(0, opts.memtable_bytes);
    let mut last_seq = state.last_seq;
    let mut added = Vec::new();
    let read = |number: u64| {
        let path = dir.join(segment_name(number));
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read commit log", &path, e))?;
        let contents = scan_segment(&bytes, number);
        Ok::<_, Error>((path, bytes, contents))
    };
    // The last segment holding anything; the one found is read once.
    let mut last_written = 0;
    let mut found = None;
    for (i, &number) in logs.iter().enumerate().rev() {
        let segment = read(number)?;
        let blank = segment.2.records.is_empty() && segment.2.end == SegmentEnd::Clean;
        if !blank {
            last_written = i;
            found = Some(segment);
            break;
        }
    }
    let mut discard_from = None;
    for (i, &number) in logs.iter().enumerate() {
        if discard_from.is_some() {
            break;
        }
        let (path, bytes, contents) = match found.take_if(|_| i == last_written) {
            Some(segment) => segment,
            None => read(number)?,
        };
        let is_last = i >= last_written;
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
            let ops = decode_batch(&bytes[record.clone()]).map_err(|e| Error::LogCorruption {
                segment: path.clone(),
                offset: record.start as u64,
                reason: format!("checksummed batch does not decode: {e}"),
            })?;
            for op in ops {
                mem.insert(op.key, op.seq, op.value);
                last_seq = last_seq.max(op.seq);
            }
            if mem.approximate_bytes() >= opts.memtable_bytes {
                let meta = write_l0(dir, fs, opts, &mem, next_file, |_| Ok(()))?;
                next_file += 1;
                added.extend(meta);
                mem = Memtable::new(0, opts.memtable_bytes);
            }
        }
        if let Some(len) = cut {
            fs.truncate(&path, len)
                .map_err(|e| Error::io("truncate commit log", &path, e))?;
        }
    }
    if !mem.is_empty() {
        added.extend(write_l0(dir, fs, opts, &mem, next_file, |_| Ok(()))?);
        next_file += 1;
    }
    Ok(Replayed {
        added,
        last_seq,
        next_file,
    })
}
