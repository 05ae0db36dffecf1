//! Reopen, torn tails, corruption, limits and options.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use kv_core::StorageEngine;
use kv_lsm::{Durability, Error, LsmEngine, RecoveryMode};

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

fn write_keys(engine: &LsmEngine, range: std::ops::Range<u32>) {
    for i in range {
        engine
            .put(format!("k{i:06}").as_bytes(), &i.to_le_bytes())
            .unwrap();
    }
}

fn count(engine: &LsmEngine) -> usize {
    engine
        .scan(Bound::Unbounded, Bound::Unbounded)
        .unwrap()
        .count()
}

/// A flush is cut off by a crash (paced flushes take seconds, so a crash
/// often finds one under way): its table was never recorded in the
/// manifest, the log that holds its writes was kept. The reopened engine
/// removes the half-written table and serves every write from the log.
#[test]
fn a_table_left_half_written_by_a_crash_is_removed_and_the_log_serves_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = crate::small(dir.path()).open().unwrap();
        write_keys(&engine, 0..500);
        engine.flush().unwrap();
        write_keys(&engine, 500..1000);
    }
    let recorded = files(dir.path(), ".sst");
    // Half a table, numbered after every file the engine made.
    let stray = dir.path().join("999999.sst");
    fs::write(&stray, vec![0xab; 5000]).unwrap();
    let engine = crate::small(dir.path()).open().unwrap();
    assert!(!stray.exists(), "the half-written table is removed");
    let after = files(dir.path(), ".sst");
    assert!(
        recorded.iter().all(|t| after.contains(t)),
        "the recorded tables stay: {recorded:?} against {after:?}"
    );
    for i in 0..1000u32 {
        assert_eq!(
            engine.get(format!("k{i:06}").as_bytes()).unwrap(),
            Some(i.to_le_bytes().to_vec()),
            "k{i:06}"
        );
    }
}

#[test]
fn writes_survive_reopen_with_and_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = crate::small(dir.path()).open().unwrap();
        write_keys(&engine, 0..3000);
        engine.flush().unwrap();
        write_keys(&engine, 3000..3500);
        engine.delete(b"k000007").unwrap();
    }
    let engine = crate::small(dir.path()).open().unwrap();
    assert_eq!(count(&engine), 3499);
    assert_eq!(
        engine.get(b"k003499").unwrap(),
        Some(3499u32.to_le_bytes().to_vec())
    );
    assert_eq!(engine.get(b"k000007").unwrap(), None);
    // Sequence numbers continue past what was recovered.
    let before = engine.last_sequence();
    engine.put(b"later", b"x").unwrap();
    assert!(engine.last_sequence() > before);
}

#[test]
fn a_second_instance_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = LsmEngine::builder(dir.path()).open().unwrap();
    assert!(matches!(
        LsmEngine::builder(dir.path()).open(),
        Err(Error::Locked(_))
    ));
}

#[test]
fn torn_log_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LsmEngine::builder(dir.path())
            .durability(Durability::Always)
            .open()
            .unwrap();
        write_keys(&engine, 0..100);
    }
    let log = files(dir.path(), ".log").pop().unwrap();
    // Segments are preallocated: the records end at the last non-zero byte.
    let bytes = fs::read(&log).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    // Cut the last record in half.
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(end - 20)
        .unwrap();
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    assert_eq!(count(&engine), 99, "the torn record is gone, the rest kept");
    drop(engine);
    // Recovered data was flushed; the reopened engine is consistent.
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    assert_eq!(count(&engine), 99);
}

#[test]
fn flipped_byte_in_the_log_is_an_error_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LsmEngine::builder(dir.path()).open().unwrap();
        write_keys(&engine, 0..100);
    }
    let log = files(dir.path(), ".log").pop().unwrap();
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .unwrap();
    // Inside the tenth record (records are 8-byte aligned, about 48 bytes).
    file.seek(SeekFrom::Start(480)).unwrap();
    file.write_all(&[0xAB]).unwrap();
    drop(file);
    match LsmEngine::builder(dir.path()).open() {
        Err(Error::LogCorruption {
            segment, offset, ..
        }) => {
            assert_eq!(segment, log);
            assert!(offset <= 480 && offset > 400, "offset {offset}");
        }
        other => panic!("expected log corruption, got {other:?}"),
    }
    // The operator's explicit choice: keep what precedes the damage.
    let engine = LsmEngine::builder(dir.path())
        .recovery(RecoveryMode::TruncateAtCorruption)
        .open()
        .unwrap();
    let kept = count(&engine);
    assert!((5..100).contains(&kept), "kept {kept}");
    assert!(engine.get(b"k000000").unwrap().is_some());
    assert!(engine.get(b"k000099").unwrap().is_none());
}

#[test]
fn flipped_byte_in_a_table_block_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LsmEngine::builder(dir.path()).open().unwrap();
        write_keys(&engine, 0..2000);
        engine.flush().unwrap();
    }
    let table = files(dir.path(), ".sst").pop().unwrap();
    let mut bytes = fs::read(&table).unwrap();
    bytes[100] ^= 0x01; // inside the first data block
    fs::write(&table, &bytes).unwrap();
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    let err = engine.get(b"k000001").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("checksum") && message.contains(".sst"),
        "{message}"
    );
    // Keys in other blocks still read.
    assert!(engine.get(b"k001999").unwrap().is_some());
    let scan_err = engine
        .scan(Bound::Unbounded, Bound::Unbounded)
        .map(|it| it.filter(Result::is_err).count());
    assert!(
        matches!(scan_err, Err(_) | Ok(1)),
        "a scan reports the damage"
    );
}

#[test]
fn damaged_table_footer_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LsmEngine::builder(dir.path()).open().unwrap();
        write_keys(&engine, 0..100);
        engine.flush().unwrap();
    }
    let table = files(dir.path(), ".sst").pop().unwrap();
    let mut bytes = fs::read(&table).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0xff;
    fs::write(&table, &bytes).unwrap();
    let err = LsmEngine::builder(dir.path()).open().unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    assert!(err.to_string().contains("footer"), "{err}");
}

#[test]
fn flipped_byte_in_the_manifest_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = crate::small(dir.path()).open().unwrap();
        write_keys(&engine, 0..3000);
        engine.flush().unwrap();
    }
    let manifest = files(dir.path(), "")
        .into_iter()
        .find(|p| p.to_string_lossy().contains("MANIFEST-"))
        .unwrap();
    let mut bytes = fs::read(&manifest).unwrap();
    bytes[20] ^= 0x10;
    fs::write(&manifest, &bytes).unwrap();
    let err = LsmEngine::builder(dir.path()).open().unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    assert!(err.to_string().contains("MANIFEST"), "{err}");
}

#[test]
fn oversize_writes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LsmEngine::builder(dir.path())
        .max_key_bytes(16)
        .max_value_bytes(64)
        .open()
        .unwrap();
    let seq = engine.last_sequence();
    let err = engine.write_batch({
        let mut b = kv_core::WriteBatch::new();
        b.put(b"ok", b"fine").put(vec![b'k'; 17], b"x");
        b
    });
    assert!(matches!(
        err,
        Err(Error::TooLarge {
            what: "key",
            len: 17,
            limit: 16
        })
    ));
    assert!(matches!(
        engine.put(b"k", &[0; 65]),
        Err(kv_core::StorageError::InvalidInput(_))
    ));
    assert_eq!(
        engine.get(b"ok").unwrap(),
        None,
        "the batch's valid part was not applied"
    );
    assert_eq!(engine.last_sequence(), seq);
}

#[test]
fn invalid_options_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(kv_lsm::LsmEngineBuilder, &str)> = vec![
        (
            LsmEngine::builder(dir.path()).memtable_bytes(10),
            "memtable_bytes",
        ),
        (LsmEngine::builder(dir.path()).block_bytes(1), "block_bytes"),
        (LsmEngine::builder(dir.path()).level_ratio(1), "level_ratio"),
        (
            LsmEngine::builder(dir.path()).l0_compaction_trigger(0),
            "l0_compaction_trigger",
        ),
        (
            LsmEngine::builder(dir.path())
                .l0_stop_writes_trigger(2)
                .l0_compaction_trigger(4),
            "l0_stop_writes_trigger",
        ),
        (
            LsmEngine::builder(dir.path())
                .durability(Durability::Interval(std::time::Duration::ZERO)),
            "durability",
        ),
        (
            LsmEngine::builder(dir.path()).bloom_bits_per_key(100),
            "bloom_bits_per_key",
        ),
        (
            LsmEngine::builder(dir.path()).max_key_bytes(0),
            "max_key_bytes",
        ),
    ];
    for (builder, option) in cases {
        match builder.open() {
            Err(Error::InvalidOption { option: got, .. }) => assert_eq!(got, option),
            other => panic!("{option}: expected InvalidOption, got {other:?}"),
        }
    }
    assert!(files(dir.path(), "").is_empty(), "nothing was created");
}

#[test]
fn log_segments_are_removed_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crate::small(dir.path()).open().unwrap();
    write_keys(&engine, 0..20_000);
    engine.flush().unwrap();
    // The live segment, plus at most two kept for reuse.
    let logs = files(dir.path(), ".log").len();
    assert!(logs <= 3, "{logs} segments left");
    assert!(engine.stats().flushes >= 5);
}

/// Bytes a file takes on disk (allocated blocks, preallocation included).
fn on_disk(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn log_segments_take_about_what_they_hold_and_one_is_kept_for_reuse() {
    let dir = tempfile::tempdir().unwrap();
    // A 4 MiB memtable reserves the log 256 KiB at a time.
    let step = 256 << 10;
    let engine = LsmEngine::builder(dir.path())
        .memtable_bytes(4 << 20)
        .recycle_log_segments(1)
        .open()
        .unwrap();
    let value = vec![7u8; 1000];
    for i in 0..1_500u32 {
        engine.put(format!("k{i:06}").as_bytes(), &value).unwrap();
    }
    engine.flush().unwrap();
    let logs = files(dir.path(), ".log");
    let live = logs.last().unwrap();
    // 1.5 MB written, then flushed: the live segment is new and holds at
    // most one step; before the flush, the old one held what was written
    // and at most one step more.
    assert!(on_disk(live) <= step + 4096, "{}", on_disk(live));
    for i in 1_500..6_000u32 {
        engine.put(format!("k{i:06}").as_bytes(), &value).unwrap();
    }
    // Memtables filled and flushed: the live segment (which may be a
    // reused one, keeping its old size) and one kept for reuse, each about
    // one memtable's worth of records at most (they were reserved twice a
    // memtable up front before).
    engine.flush().unwrap();
    let logs = files(dir.path(), ".log");
    assert!(logs.len() <= 2, "{logs:?}");
    let per_segment = (4 << 20) * 11 / 10 + step;
    for log in &logs {
        assert!(
            on_disk(log) <= per_segment,
            "{}: {}",
            log.display(),
            on_disk(log)
        );
    }
    drop(engine);
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    assert_eq!(count(&engine), 6_000, "nothing lost in reused segments");
}

#[test]
fn a_block_damaged_after_it_was_read_is_caught_on_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    write_keys(&engine, 0..2000);
    engine.flush().unwrap();
    assert!(
        engine.get(b"k000001").unwrap().is_some(),
        "read once, whole"
    );
    // The disk changes under the open engine (bit rot), in place: blocks
    // are checked on every read, not once.
    let table = files(dir.path(), ".sst").pop().unwrap();
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&table)
        .unwrap();
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(100)).unwrap();
    std::io::Read::read_exact(&mut file, &mut byte).unwrap();
    file.seek(SeekFrom::Start(100)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
    file.sync_all().unwrap();
    let message = engine.get(b"k000001").unwrap_err().to_string();
    assert!(
        message.contains("checksum") && message.contains(".sst"),
        "{message}"
    );
}

#[test]
fn without_recycling_only_the_live_log_segment_stays() {
    let dir = tempfile::tempdir().unwrap();
    let step = 256 << 10;
    let engine = LsmEngine::builder(dir.path())
        .memtable_bytes(4 << 20)
        .open()
        .unwrap();
    let value = vec![7u8; 1000];
    for i in 0..6_000u32 {
        engine.put(format!("k{i:06}").as_bytes(), &value).unwrap();
    }
    engine.flush().unwrap();
    let logs = files(dir.path(), ".log");
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(on_disk(&logs[0]) <= step + 4096, "{}", on_disk(&logs[0]));
    assert!(
        LsmEngine::builder(dir.path())
            .recycle_log_segments(17)
            .open()
            .is_err(),
        "a bound on kept segments"
    );
}

#[test]
fn a_spare_segment_file_is_ready_after_a_flush_and_gone_after_a_close_or_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crate::small(dir.path()).open().unwrap();
    assert!(
        files(dir.path(), ".spare").is_empty(),
        "none before a switch"
    );
    write_keys(&engine, 0..2_000);
    engine.flush().unwrap();
    // The flush made the next segment's file ready.
    let first = files(dir.path(), ".spare");
    assert_eq!(first.len(), 1);
    write_keys(&engine, 2_000..4_000);
    engine.flush().unwrap();
    // The switches renamed it into a segment; a new one is ready.
    let second = files(dir.path(), ".spare");
    assert_eq!(second.len(), 1);
    assert_ne!(first, second);
    drop(engine);
    assert!(files(dir.path(), ".spare").is_empty(), "a close removes it");
    // One left by a crash (or copied with a backup) is removed at open;
    // a name that only looks like one is not the engine's to remove.
    fs::write(dir.path().join("000999.spare"), [0u8; 4096]).unwrap();
    fs::write(dir.path().join("notes.spare"), b"mine").unwrap();
    let engine = crate::small(dir.path()).open().unwrap();
    assert_eq!(count(&engine), 4_000);
    assert_eq!(
        files(dir.path(), ".spare"),
        vec![dir.path().join("notes.spare")]
    );
}
