//! Preference lists at 100 nodes x 150 vnodes, and ring build times.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kv_core::{NodeId, Partitioner};
use kv_ring::{ConsistentHashRing, TokenStrategy};

fn ring(nodes: u64, strategy: TokenStrategy) -> ConsistentHashRing {
    ConsistentHashRing::builder()
        .strategy(strategy)
        .nodes((1..=nodes).map(NodeId))
        .build()
        .unwrap()
}

fn keys() -> Vec<Vec<u8>> {
    (0..4096u32)
        .map(|i| format!("user:{i:08}").into_bytes())
        .collect()
}

fn bench_preference_list(c: &mut Criterion) {
    let mut group = c.benchmark_group("preference_list");
    let keys = keys();
    for nodes in [10u64, 100] {
        let r = ring(nodes, TokenStrategy::Balanced);
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("n3", nodes), &nodes, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                r.preference_list(black_box(&keys[i]), 3).unwrap()
            })
        });
    }
    let r = ring(100, TokenStrategy::Balanced);
    let mut i = 0;
    group.bench_function("token_only", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            r.token(black_box(&keys[i]))
        })
    });
    group.finish();
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_build");
    group.sample_size(10);
    for nodes in [10u64, 100] {
        group.bench_with_input(BenchmarkId::new("balanced", nodes), &nodes, |b, &n| {
            b.iter(|| ring(n, TokenStrategy::Balanced))
        });
        group.bench_with_input(BenchmarkId::new("hashed", nodes), &nodes, |b, &n| {
            b.iter(|| ring(n, TokenStrategy::Hashed))
        });
    }
    let base = ring(100, TokenStrategy::Balanced);
    group.bench_function("join_101st", |b| {
        b.iter(|| base.with_node(NodeId(101).into()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_preference_list, bench_build);
criterion_main!(benches);
