//! Clock operations at 3 and 10 actors: compare, merge, encode, decode.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kv_clock::{DvvSet, VectorClock};
use kv_core::NodeId;

/// Two concurrent clocks over `actors` actors with realistic counters.
fn clocks(actors: u64) -> (VectorClock, VectorClock) {
    let now = 1_790_000_000;
    let mut a = VectorClock::new();
    let mut b = VectorClock::new();
    for actor in 0..actors {
        a.observe(NodeId(actor + 1), 1_000 + actor * 37, now);
        b.observe(NodeId(actor + 1), 1_000 + (actors - actor) * 37, now + 1);
    }
    (a, b)
}

fn bench_clock(c: &mut Criterion) {
    let mut group = c.benchmark_group("vector_clock");
    for actors in [3u64, 10] {
        let (a, b) = clocks(actors);
        group.bench_with_input(BenchmarkId::new("compare", actors), &actors, |bench, _| {
            bench.iter(|| black_box(&a).compare(black_box(&b)))
        });
        group.bench_with_input(BenchmarkId::new("merge", actors), &actors, |bench, _| {
            bench.iter(|| black_box(&a).merged(black_box(&b)))
        });
        let mut buf = Vec::with_capacity(128);
        group.bench_with_input(BenchmarkId::new("encode", actors), &actors, |bench, _| {
            bench.iter(|| {
                buf.clear();
                black_box(&a).encode_into(&mut buf, true);
                buf.len()
            })
        });
        let bytes = a.to_bytes();
        group.bench_with_input(BenchmarkId::new("decode", actors), &actors, |bench, _| {
            bench.iter(|| VectorClock::from_bytes(black_box(&bytes)).unwrap())
        });
    }
    group.finish();
}

fn bench_dvv(c: &mut Criterion) {
    let mut group = c.benchmark_group("dvv_set");
    for actors in [3u64, 10] {
        // A key written once by each actor, replicated everywhere, then
        // resolved: one sibling under a context of `actors` entries.
        let mut key: DvvSet<Vec<u8>> = DvvSet::new();
        for actor in 0..actors {
            key.update(&VectorClock::new(), NodeId(actor + 1), vec![0; 100], 0)
                .unwrap();
        }
        let ctx = key.context().clone();
        let mut peer = key.clone();
        peer.update(&ctx, NodeId(1), vec![1; 100], 0).unwrap();
        group.bench_with_input(BenchmarkId::new("update", actors), &actors, |bench, _| {
            bench.iter(|| {
                let mut k = key.clone();
                k.update(black_box(&ctx), NodeId(1), vec![2; 100], 0)
                    .unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("sync", actors), &actors, |bench, _| {
            bench.iter(|| black_box(&key).synced(black_box(&peer)))
        });
        let bytes = peer.to_bytes();
        group.bench_with_input(BenchmarkId::new("decode", actors), &actors, |bench, _| {
            bench.iter(|| DvvSet::<Vec<u8>>::from_bytes(black_box(&bytes)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_clock, bench_dvv);
criterion_main!(benches);
