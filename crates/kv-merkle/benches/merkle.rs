//! Tree updates, building from a million entries, and exchanges with
//! 0.1%, 1% and 10% of a million keys differing.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kv_merkle::{DEFAULT_LEAVES, MerkleTree, exchange_in_memory};

const KEYS: u32 = 1_000_000;

fn tree_with(differing: u32) -> MerkleTree {
    let mut t = MerkleTree::new(DEFAULT_LEAVES).unwrap();
    let stride = KEYS / differing.max(1);
    for k in 0..KEYS {
        let differs = differing > 0 && k % stride == 0 && k / stride < differing;
        t.insert(&k.to_be_bytes(), if differs { 2 } else { 1 });
    }
    t
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle");
    let mut tree = tree_with(0);
    let mut k = 0u32;
    group.bench_function("update", |b| {
        b.iter(|| {
            k = k.wrapping_add(7919) % KEYS;
            tree.update(black_box(&k.to_be_bytes()), 1, 1);
        })
    });
    group.sample_size(10);
    group.bench_function("build_1m", |b| b.iter(|| tree_with(0).root()));
    let base = tree_with(0);
    for (label, differing) in [
        ("0.1%", KEYS / 1000),
        ("1%", KEYS / 100),
        ("10%", KEYS / 10),
    ] {
        let other = tree_with(differing);
        let (buckets, bytes) = exchange_in_memory(&base, &other, 1024).unwrap();
        println!(
            "exchange {label}: {differing} keys differ, {} buckets, {bytes} bytes",
            buckets.len()
        );
        group.bench_with_input(BenchmarkId::new("exchange", label), &other, |b, other| {
            b.iter(|| exchange_in_memory(&base, other, 1024).unwrap().1)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
