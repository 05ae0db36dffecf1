//! Cross-layer: what a coordinator does per write before any I/O. Hash the
//! key, find its replicas, make a new version at the coordinator from the
//! client's context, and encode the sibling set for storage.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kv::clock::{DvvSet, VectorClock};
use kv::core::{NodeId, Partitioner};
use kv::ring::ConsistentHashRing;

fn bench_write_path(c: &mut Criterion) {
    let ring = ConsistentHashRing::builder()
        .nodes((1..=10).map(NodeId))
        .build()
        .unwrap();
    let keys: Vec<Vec<u8>> = (0..1024u32)
        .map(|i| format!("user:{i:08}").into_bytes())
        .collect();
    // Stored state: a key written at two replicas and resolved once.
    let mut stored: DvvSet<Vec<u8>> = DvvSet::new();
    stored
        .update(&VectorClock::new(), NodeId(1), vec![7; 100], 0)
        .unwrap();
    stored
        .update(&VectorClock::new(), NodeId(2), vec![8; 100], 0)
        .unwrap();
    let context = stored.context().clone();
    let stored_bytes = stored.to_bytes();
    let mut i = 0;
    c.bench_function("write_path/place_version_encode", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let replicas = ring.preference_list(black_box(&keys[i]), 3).unwrap();
            let mut state = DvvSet::<Vec<u8>>::from_bytes(black_box(&stored_bytes)).unwrap();
            state
                .update(black_box(&context), replicas[0], vec![9; 100], 0)
                .unwrap();
            state.to_bytes()
        })
    });
}

criterion_group!(benches, bench_write_path);
criterion_main!(benches);
