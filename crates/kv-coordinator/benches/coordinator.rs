//! The coordinator in process: quorum writes and reads over three replicas
//! on `MemEngine`, joined by the in-process network (no sockets, no disk),
//! so the figures are the replication logic's own cost: versioning with
//! dotted version vectors, encoding, merging at each replica, Merkle
//! updates, quorum waits.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kv_coordinator::sim::{SimNetwork, SimTransport};
use kv_coordinator::{Config, Coordinator, Replica, ReplicaSettings, Update};
use kv_core::NodeId;
use kv_ring::ConsistentHashRing;
use kv_testkit::MemEngine;

type Engine = Arc<MemEngine>;
type Node = Coordinator<Engine, SimTransport<Engine>, ConsistentHashRing>;

fn cluster() -> Vec<Arc<Node>> {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let ring = Arc::new(
        ConsistentHashRing::builder()
            .nodes(ids.clone())
            .build()
            .unwrap(),
    );
    let network = SimNetwork::new(1);
    ids.iter()
        .map(|&id| {
            let replica = Arc::new(
                Replica::new(
                    id,
                    Arc::new(MemEngine::new()),
                    Arc::new(MemEngine::new()),
                    &ReplicaSettings::default(),
                    ring.clone(),
                )
                .unwrap(),
            );
            network.attach(replica.clone());
            Arc::new(
                Coordinator::new(
                    Config::default(),
                    replica,
                    Arc::new(SimTransport::new(id, network.clone())),
                    ring.clone(),
                    network.clone(),
                )
                .unwrap(),
            )
        })
        .collect()
}

fn bench_coordinator(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let nodes = cluster();
    let node = nodes[0].clone();
    // Keys node 1 coordinates (it is their first replica), so no request
    // is forwarded.
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i: u32| format!("user:{i:06}").into_bytes())
        .filter(|k| {
            use kv_core::Partitioner;
            node.ring().preference_list(k, 3).unwrap()[0] == NodeId(1)
        })
        .take(1024)
        .collect();
    runtime.block_on(async {
        for key in &keys {
            node.put(key, &[7u8; 100], &[], None).await.unwrap();
        }
    });
    let mut group = c.benchmark_group("coordinator");
    let mut i = 0usize;
    group.bench_function("put_100b_w2_of_3", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            runtime
                .block_on(node.put(black_box(&keys[i]), &[9u8; 100], &[], Some(2)))
                .unwrap()
        })
    });
    group.bench_function("get_r2_of_3", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            runtime
                .block_on(node.get(black_box(&keys[i]), Some(2)))
                .unwrap()
        })
    });
    let replica = node.replica().clone();
    let prune = kv_clock::PrunePolicy::default();
    group.bench_function("replica_coordinate_batch_of_64", |b| {
        b.iter(|| {
            let updates: Vec<Update> = (0..64)
                .map(|j| Update {
                    key: keys[(i + j) & 1023].clone(),
                    value: Some(vec![3u8; 100]),
                    context: kv_clock::VectorClock::new(),
                    write: None,
                    expires: None,
                })
                .collect();
            i = (i + 64) & 1023;
            replica.coordinate_many(updates, 10, &prune)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_coordinator);
criterion_main!(benches);
