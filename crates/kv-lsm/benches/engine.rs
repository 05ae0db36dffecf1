//! Engine operations: put, get (hit in a large memtable, hit and miss in
//! tables), scan.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::ops::Bound;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kv_core::StorageEngine;
use kv_lsm::{Durability, LsmEngine};

const KEYS: u64 = 100_000;

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn filled(dir: &std::path::Path) -> LsmEngine {
    let engine = LsmEngine::builder(dir)
        .durability(Durability::Never)
        .open()
        .unwrap();
    for i in 0..KEYS {
        engine.put(&key(i), &[7u8; 100]).unwrap();
    }
    engine.flush().unwrap();
    engine.wait_for_compactions().unwrap();
    engine
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("lsm");
    {
        let dir = tempfile::tempdir().unwrap();
        let engine = LsmEngine::builder(dir.path())
            .durability(Durability::Never)
            .open()
            .unwrap();
        let mut i = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function("put_100b_no_sync", |b| {
            b.iter(|| {
                i += 1;
                engine.put(&key(i), &[1u8; 100]).unwrap();
            })
        });
    }
    {
        // A node's usual read: its key among the recent writes still in a
        // large memtable (300,000 entries, about 50 MB), not in a table.
        const RESIDENT: u64 = 300_000;
        let dir = tempfile::tempdir().unwrap();
        let engine = LsmEngine::builder(dir.path())
            .durability(Durability::Never)
            .open()
            .unwrap();
        for i in 0..RESIDENT {
            engine.put(&key(i), &[7u8; 100]).unwrap();
        }
        assert_eq!(engine.stats().flushes, 0, "all in the memtable");
        let mut i = 0u64;
        group.bench_function("get_hit_memtable", |b| {
            b.iter(|| {
                i = (i + 7919) % RESIDENT;
                black_box(engine.get(&key(i)).unwrap())
            })
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = filled(dir.path());
    let mut i = 0u64;
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(engine.get(&key(i)).unwrap())
        })
    });
    group.bench_function("get_miss", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(engine.get(&key(i + KEYS)).unwrap())
        })
    });
    group.throughput(Throughput::Elements(1000));
    group.bench_function("scan_1000", |b| {
        b.iter_batched(
            || {
                i = (i + 7919) % KEYS;
                key(i)
            },
            |start| {
                engine
                    .scan(Bound::Included(&start), Bound::Unbounded)
                    .unwrap()
                    .take(1000)
                    .count()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
