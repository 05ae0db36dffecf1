//! Readers and writers on many threads, with flushes and compactions.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

use kv_core::StorageEngine;

const WRITERS: u32 = 4;
const PER_WRITER: u32 = 3000;

fn key(writer: u32, i: u32) -> Vec<u8> {
    format!("w{writer}-{i:06}").into_bytes()
}

fn value(writer: u32, i: u32) -> Vec<u8> {
    format!("{writer}:{i}").repeat(4).into_bytes()
}

#[test]
fn no_lost_or_phantom_keys_under_concurrent_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let engine = crate::small(dir.path()).open().unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let engine = &engine;
                s.spawn(move || {
                    for i in 0..PER_WRITER {
                        engine.put(&key(w, i), &value(w, i)).unwrap();
                    }
                })
            })
            .collect();
        // Readers: every scan is a point-in-time view in which each
        // writer's keys form a prefix 0..n (writes are sequential per
        // writer), every value is right, and nothing unknown appears.
        for _ in 0..2 {
            let (engine, done) = (&engine, &done);
            s.spawn(move || {
                let mut scans = 0;
                while !done.load(Ordering::SeqCst) && scans < 200 || scans < 3 {
                    let mut next = vec![0u32; WRITERS as usize];
                    for item in engine.scan(Bound::Unbounded, Bound::Unbounded).unwrap() {
                        let (k, v) = item.unwrap();
                        let text = String::from_utf8(k).unwrap();
                        let (w, i) = text[1..].split_once('-').unwrap();
                        let (w, i): (u32, u32) = (w.parse().unwrap(), i.parse().unwrap());
                        assert_eq!(
                            i, next[w as usize],
                            "writer {w}: key {i} out of order or a gap"
                        );
                        assert_eq!(v, value(w, i));
                        next[w as usize] += 1;
                    }
                    scans += 1;
                }
            });
        }
        let flusher = &engine;
        s.spawn(move || {
            for _ in 0..5 {
                flusher.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        // Let the readers finish once the writers have (or one failed).
        let results: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        done.store(true, Ordering::SeqCst);
        assert!(results.iter().all(Result::is_ok), "a writer failed");
    });
    engine.wait_for_compactions().unwrap();
    let stats = engine.stats();
    assert!(stats.compactions > 0 && stats.flushes > 0, "{stats:?}");
    for w in 0..WRITERS {
        for i in 0..PER_WRITER {
            assert_eq!(engine.get(&key(w, i)).unwrap(), Some(value(w, i)));
        }
    }
}

/// `inline_writes` tells an async caller when a deferred write cannot
/// wait: under every policy (under `Always` the sync is the syncer
/// thread's), but not once the memtable is nearly full (its switch syncs
/// the log and creates a segment).
#[test]
fn inline_writes_only_when_a_write_cannot_wait() {
    let dir = tempfile::tempdir().unwrap();
    let always = crate::small(&dir.path().join("always"))
        .durability(kv_lsm::Durability::Always)
        .open()
        .unwrap();
    assert!(always.inline_writes());

    // 64 KiB memtable (see `small`): fill it past seven eighths.
    let engine = crate::small(&dir.path().join("never")).open().unwrap();
    assert!(engine.inline_writes());
    let mut i = 0u32;
    while engine.stats().memtable_bytes < (64 << 10) / 8 * 7 {
        assert!(
            engine.inline_writes(),
            "refused at {} bytes",
            engine.stats().memtable_bytes
        );
        engine.put(&key(0, i), &[7u8; 200]).unwrap();
        i += 1;
    }
    assert!(!engine.inline_writes());
    // Once the memtable is switched and flushed, writes are inline again.
    engine.flush().unwrap();
    assert!(engine.inline_writes());
}

/// Deferred writes from many threads, interleaved with blocking writes
/// (which wait together for the log's synced position) in the same log:
/// every one acknowledged is visible at once and still there after a
/// reopen.
#[test]
fn deferred_and_blocking_writes_share_the_log_and_all_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        crate::small(dir.path())
            .durability(kv_lsm::Durability::Always)
            .open()
            .unwrap()
    };
    let engine = open();
    std::thread::scope(|s| {
        for writer in 0..WRITERS {
            let engine = &engine;
            s.spawn(move || {
                for i in 0..300 {
                    let mut batch = kv_core::WriteBatch::new();
                    batch.put(key(writer, i), value(writer, i));
                    if writer % 2 == 0 {
                        engine.write_deferred(batch).unwrap().wait().unwrap();
                    } else {
                        engine.write(batch).unwrap();
                    }
                    assert_eq!(engine.get(&key(writer, i)).unwrap(), Some(value(writer, i)));
                }
            });
        }
    });
    // Deferred writes queued together, then awaited.
    let pending: Vec<_> = (0..50)
        .map(|i| {
            let mut batch = kv_core::WriteBatch::new();
            batch.put(key(99, i), value(99, i));
            engine.write_deferred(batch).unwrap()
        })
        .collect();
    for durable in pending {
        durable.wait().unwrap();
    }
    drop(engine);
    let engine = open();
    for writer in 0..WRITERS {
        for i in 0..300 {
            assert_eq!(engine.get(&key(writer, i)).unwrap(), Some(value(writer, i)));
        }
    }
    for i in 0..50 {
        assert_eq!(engine.get(&key(99, i)).unwrap(), Some(value(99, i)));
    }
}
