//! The storage engine on its own, as a program embeds it: open with the
//! builder, write a batch atomically, read, scan a range, delete, close,
//! reopen, and show that everything acknowledged survived. No async
//! runtime, no network: only `kv-lsm` and the `kv-core` trait it
//! implements.
//!
//! ```text
//! cargo run --release --example embed_lsm [DIR]
//! ```
//!
//! Without `DIR` it works in a fresh temporary directory and removes it.
#![allow(clippy::print_stdout)]

use std::ops::Bound;

use kv_core::{StorageEngine, WriteBatch};
use kv_lsm::{Durability, LsmEngine};

fn show(pairs: &[(Vec<u8>, Vec<u8>)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(value: Option<Vec<u8>>) -> String {
    value.map_or_else(
        || "(absent)".to_string(),
        |v| format!("{:?}", String::from_utf8_lossy(&v)),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => temp.path().join("engine"),
    };

    println!(
        "== open {} (durability Always: a write returns after its fsync)",
        dir.display()
    );
    let engine = LsmEngine::builder(&dir)
        .durability(Durability::Always)
        .memtable_bytes(1 << 20)
        .open()?;

    println!("== one atomic batch: three fruits, and a delete of one never written");
    let mut batch = WriteBatch::new();
    batch
        .put(b"fruit:apple", b"red")
        .put(b"fruit:banana", b"yellow")
        .put(b"fruit:cherry", b"dark red")
        .delete(b"fruit:durian");
    engine.write(batch)?;
    println!(
        "  get fruit:banana -> {}",
        text(engine.get(b"fruit:banana")?)
    );

    println!("== 5,000 more keys one by one (each its own commit and fsync), then a flush");
    for i in 0..5_000u32 {
        engine.put(
            format!("order:{i:05}").as_bytes(),
            format!("{} items", i % 7).as_bytes(),
        )?;
    }
    engine.flush()?;
    let stats = engine.stats();
    println!(
        "  tables per level {:?}, {} flushes, {} commit groups, {} log syncs",
        stats.tables_per_level, stats.flushes, stats.write_groups, stats.log_syncs
    );

    println!("== scan [fruit:a, fruit:c): a consistent snapshot, keys in order");
    let fruit: Vec<_> = engine
        .scan(Bound::Included(b"fruit:a"), Bound::Excluded(b"fruit:c"))?
        .collect::<Result<_, _>>()?;
    println!("  {}", show(&fruit));

    println!("== delete fruit:apple and order:00042");
    engine.delete(b"fruit:apple")?;
    engine.delete(b"order:00042")?;
    println!("  get fruit:apple -> {}", text(engine.get(b"fruit:apple")?));

    println!("== close, then reopen the same directory");
    engine.close()?;
    let engine = LsmEngine::builder(&dir).open()?;
    let fruit: Vec<_> = engine
        .scan(Bound::Included(b"fruit:"), Bound::Excluded(b"fruit;"))?
        .collect::<Result<_, _>>()?;
    let orders = engine
        .scan(Bound::Included(b"order:"), Bound::Excluded(b"order;"))?
        .count();
    println!("  fruit: {}", show(&fruit));
    println!("  orders: {orders} (5,000 written, one deleted)");
    println!(
        "  order:00042 -> {}, order:04999 -> {}",
        text(engine.get(b"order:00042")?),
        text(engine.get(b"order:04999")?)
    );
    let survived = fruit.len() == 2 && orders == 4_999 && engine.get(b"order:00042")?.is_none();
    engine.close()?;
    if !survived {
        return Err("the reopened engine does not hold what was acknowledged".into());
    }
    println!("== everything acknowledged survived the reopen");
    Ok(())
}
