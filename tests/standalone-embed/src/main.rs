//! Embeds `kv-lsm` as any program would: writes, reads, scans, reopens.
//! Exits non-zero if anything acknowledged is missing after the reopen.

use std::ops::Bound;
use std::process::ExitCode;

use kv_lsm::{Durability, LsmEngine, StorageEngine, WriteBatch};

fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let engine = LsmEngine::builder(dir)
        .durability(Durability::Always)
        .open()?;
    let mut batch = WriteBatch::new();
    for i in 0..1_000u32 {
        batch.put(format!("key:{i:04}").into_bytes(), i.to_le_bytes().to_vec());
    }
    engine.write(batch)?;
    engine.delete(b"key:0500")?;
    engine.flush()?;
    engine.put(b"key:1000", b"after the flush")?;
    engine.close()?;

    let engine = LsmEngine::builder(dir).open()?;
    let count = engine.scan(Bound::Unbounded, Bound::Unbounded)?.count();
    let value = engine.get(b"key:0042")?;
    let deleted = engine.get(b"key:0500")?;
    let last = engine.get(b"key:1000")?;
    println!("standalone-embed: {count} keys after reopen");
    if count != 1_000
        || value != Some(42u32.to_le_bytes().to_vec())
        || deleted.is_some()
        || last.as_deref() != Some(b"after the flush".as_slice())
    {
        return Err("the reopened engine lost acknowledged data".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let dir = std::env::temp_dir().join(format!("kv-standalone-embed-{}", std::process::id()));
    let result = run(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("standalone-embed: {e}");
            ExitCode::FAILURE
        }
    }
}
