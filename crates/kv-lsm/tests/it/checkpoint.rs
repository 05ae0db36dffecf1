//! Checkpoints of a running engine: a consistent prefix of its history,
//! independent of the engine afterwards, refused where they would mix
//! with other files.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kv_lsm::{Durability, Error, LsmEngine, StorageEngine};

use crate::small;

fn key(writer: u64, i: u64) -> Vec<u8> {
    format!("w{writer}:{i:08}").into_bytes()
}

#[test]
fn a_checkpoint_taken_under_writes_holds_a_prefix_of_every_writers_history() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(
        small(&dir.path().join("live"))
            .durability(Durability::Interval(std::time::Duration::from_millis(5)))
            .open()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (engine, stop, acked) = (engine.clone(), stop.clone(), acked[w as usize].clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    engine.put(&key(w, i), &[w as u8; 200]).unwrap();
                    i += 1;
                    acked.store(i, Ordering::Release);
                }
            })
        })
        .collect();
    // Enough writes for tables at several levels, frozen memtables and logs.
    while acked.iter().map(|a| a.load(Ordering::Acquire)).sum::<u64>() < 30_000 {
        std::thread::yield_now();
    }
    let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let snap = dir.path().join("snap");
    let made = engine.checkpoint(&snap).unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(made.tables > 0 && made.log_segments > 0, "{made:?}");
    assert_eq!(made.linked, made.tables, "same file system: hard links");
    // The live engine goes on and compacts away the tables it linked.
    engine.put(b"after", b"x").unwrap();
    engine.compact_all().unwrap();
    drop(engine);

    let copy = LsmEngine::builder(&snap).open().unwrap();
    assert_eq!(
        copy.get(b"after").unwrap(),
        None,
        "a later write is not in it"
    );
    for (w, &acked_before) in before.iter().enumerate() {
        let w = w as u64;
        // Every write acknowledged before the checkpoint...
        for i in 0..acked_before {
            assert_eq!(
                copy.get(&key(w, i)).unwrap().as_deref(),
                Some(&[w as u8; 200][..]),
                "writer {w} write {i} (of {acked_before} acknowledged before)"
            );
        }
        // ...and, of those racing with it, a prefix: no write without
        // every earlier one.
        let mut held = acked_before;
        while copy.get(&key(w, held)).unwrap().is_some() {
            held += 1;
        }
        let next: Vec<_> = copy
            .scan(
                std::ops::Bound::Excluded(key(w, held).as_slice()),
                std::ops::Bound::Excluded(format!("w{w}:~").as_bytes()),
            )
            .unwrap()
            .collect();
        assert!(next.is_empty(), "writer {w}: a gap after write {held}");
    }
    // The copy is an engine of its own: it takes writes.
    copy.put(b"in the copy", b"y").unwrap();
    copy.close().unwrap();
}

#[test]
fn a_checkpoint_goes_only_to_a_new_or_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let engine = small(&live).open().unwrap();
    engine.put(b"k", b"v").unwrap();
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("something"), b"mine").unwrap();
    let refused = engine.checkpoint(&taken).unwrap_err();
    assert!(matches!(refused, Error::InvalidOption { .. }), "{refused}");
    assert!(refused.to_string().contains("not empty"), "{refused}");
    assert_eq!(std::fs::read(taken.join("something")).unwrap(), b"mine");
    assert!(engine.checkpoint(&live).is_err(), "not into itself");
    // An empty directory is fine, and the copy opens with the write.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    engine.checkpoint(&empty).unwrap();
    drop(engine);
    let copy = LsmEngine::builder(&empty).open().unwrap();
    assert_eq!(copy.get(b"k").unwrap(), Some(b"v".to_vec()));
}
