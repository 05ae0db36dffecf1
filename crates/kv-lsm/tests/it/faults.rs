//! Fault injection at the file layer: a failed fsync poisons the engine.

use std::sync::Arc;

use kv_core::{StorageEngine, StorageError};
use kv_lsm::{Durability, Error, FaultFs, LsmEngine};

/// An engine in `dir` on a fault-injecting file layer (`None`: the default
/// durability), and the layer.
fn on_faulty_fs(dir: &std::path::Path, durability: Option<Durability>) -> (FaultFs, LsmEngine) {
    let fs = FaultFs::new();
    let mut builder = LsmEngine::builder(dir).fs(Arc::new(fs.clone()));
    if let Some(durability) = durability {
        builder = builder.durability(durability);
    }
    (fs, builder.open().unwrap())
}

/// A batch of one put.
fn one_put(key: &[u8], value: &[u8]) -> kv_core::WriteBatch {
    let mut batch = kv_core::WriteBatch::new();
    batch.put(key.to_vec(), value.to_vec());
    batch
}

/// An engine under `Always` on a faulty file system, holding `before` = `1`
/// from a deferred write that was acknowledged (and is readable).
fn with_a_deferred_write_acknowledged(dir: &std::path::Path) -> (FaultFs, LsmEngine) {
    let (fs, engine) = on_faulty_fs(dir, Some(Durability::Always));
    engine
        .write_deferred(one_put(b"before", b"1"))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(engine.get(b"before").unwrap(), Some(b"1".to_vec()));
    (fs, engine)
}

#[test]
fn failed_log_fsync_poisons_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = on_faulty_fs(dir.path(), Some(Durability::Always));
    engine.put(b"before", b"1").unwrap();
    fs.fail_syncs_after(0);
    let err = engine.put(b"during", b"2").unwrap_err();
    assert!(matches!(err, StorageError::Poisoned(_)), "{err}");
    // Healing the disk does not un-poison: what reached it is unknown.
    fs.heal();
    let again = engine.put(b"after", b"3").unwrap_err();
    assert!(matches!(again, StorageError::Poisoned(_)), "{again}");
    assert!(
        again.to_string().contains("injected fsync failure"),
        "{again}"
    );
    assert!(!again.is_retryable());
    // Reads still work.
    assert_eq!(engine.get(b"before").unwrap(), Some(b"1".to_vec()));
    drop(engine);
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    assert_eq!(engine.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        engine.get(b"after").unwrap(),
        None,
        "refused writes left no trace"
    );
    engine.put(b"after", b"3").unwrap();
}

#[test]
fn failed_table_fsync_during_flush_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = on_faulty_fs(dir.path(), Some(Durability::Never));
    for i in 0..1000u32 {
        engine.put(&i.to_be_bytes(), b"value").unwrap();
    }
    // The switch syncs nothing itself (`Never`); the flush syncs a spare
    // segment file first, then the table, which fails.
    fs.fail_syncs_after(1);
    let err = engine.flush_all().unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert!(matches!(
        engine.put(b"x", b"y"),
        Err(StorageError::Poisoned(_))
    ));
    fs.heal();
    drop(engine);
    // Nothing was lost: the log still holds what the table did not.
    let engine = LsmEngine::builder(dir.path()).open().unwrap();
    for i in 0..1000u32 {
        assert_eq!(
            engine.get(&i.to_be_bytes()).unwrap(),
            Some(b"value".to_vec()),
            "key {i}"
        );
    }
}

#[test]
fn failed_write_poisons() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = on_faulty_fs(dir.path(), None);
    fs.fail_writes(true);
    assert!(engine.put(b"k", b"v").is_err());
    fs.fail_writes(false);
    assert!(matches!(
        engine.put(b"k", b"v"),
        Err(StorageError::Poisoned(_))
    ));
}

#[test]
fn failed_periodic_log_fsync_poisons() {
    // Under `Interval` the sync runs on its own handle, outside the log
    // lock; its failure must still poison the engine.
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = on_faulty_fs(
        dir.path(),
        Some(Durability::Interval(std::time::Duration::from_millis(5))),
    );
    engine.put(b"before", b"1").unwrap();
    fs.fail_syncs_after(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        // Acknowledged until the background sync has failed.
        match engine.put(b"during", b"2") {
            Ok(()) => assert!(
                std::time::Instant::now() < deadline,
                "the periodic sync never ran"
            ),
            Err(e) => break e,
        }
        std::thread::yield_now();
    };
    assert!(matches!(err, StorageError::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    assert_eq!(engine.get(b"before").unwrap(), Some(b"1".to_vec()));
}

/// A deferred write (`Always`) whose record the syncer cannot write to the
/// log resolves with the error, is never visible, and poisons the engine.
#[test]
fn a_deferred_write_whose_log_write_fails_is_never_acknowledged_nor_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = with_a_deferred_write_acknowledged(dir.path());
    fs.fail_writes(true);
    let err = engine
        .write_deferred(one_put(b"during", b"2"))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, StorageError::Poisoned(_)), "{err}");
    assert_eq!(engine.get(b"during").unwrap(), None, "never acknowledged");
    assert_eq!(engine.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert!(engine.health().is_err());
    fs.fail_writes(false);
    drop(engine);
    // Reopened, the store holds what was acknowledged and nothing else.
    let engine = LsmEngine::builder(dir.path())
        .durability(Durability::Always)
        .open()
        .unwrap();
    assert_eq!(engine.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(engine.get(b"during").unwrap(), None);
}

/// A deferred write (`Always`) whose sync fails resolves with the error,
/// stays invisible to readers (it was never acknowledged), and poisons the
/// engine; a writer's `get_latest` saw it meanwhile, as its
/// read-modify-write must.
#[test]
fn a_deferred_write_whose_sync_fails_is_never_acknowledged_nor_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (fs, engine) = with_a_deferred_write_acknowledged(dir.path());
    fs.fail_syncs_after(0);
    let durable = engine.write_deferred(one_put(b"during", b"2")).unwrap();
    assert_eq!(engine.get_latest(b"during").unwrap(), Some(b"2".to_vec()));
    let err = durable.wait().unwrap_err();
    assert!(matches!(err, StorageError::Poisoned(_)), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    assert_eq!(engine.get(b"during").unwrap(), None, "never acknowledged");
    assert!(matches!(
        engine.health().unwrap_err(),
        StorageError::Poisoned(_)
    ));
    fs.heal();
    assert!(matches!(
        engine.write_deferred(one_put(b"after", b"3")).unwrap_err(),
        StorageError::Poisoned(_)
    ));
}
