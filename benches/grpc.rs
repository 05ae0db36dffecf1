//! PUT and GET through the whole stack on loopback: the client SDK, tonic,
//! the coordinator, replication to the other replicas, and the LSM engine
//! (durability `Never`, so the figure is the software path, not fsync).
//! One node, and three nodes with N=3, W=2, R=2.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kv_server::client::{Client, ClientConfig};
use kv_server::{NodeConfig, RunningNode};
use tokio::runtime::Runtime;

async fn cluster(size: u64, dir: &std::path::Path) -> Vec<RunningNode> {
    let n = size.min(3) as usize;
    kv_server::start_local(size, dir, |config| {
        NodeConfig {
            durability: kv::lsm::Durability::Never,
            coordinator: kv_coordinator::Config {
                n,
                w: n.min(2),
                r: n.min(2),
                ..kv_coordinator::Config::default()
            },
            ..config
        }
        .with_gossip_interval(Duration::from_millis(500))
    })
    .await
    .unwrap()
}

fn bench_grpc(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    for size in [1u64, 3] {
        let dir = tempfile::tempdir().unwrap();
        let nodes = rt.block_on(cluster(size, dir.path()));
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let client = rt.block_on(async { Client::new(&addrs, ClientConfig::default()).unwrap() });
        let value = vec![b'v'; 100];
        let mut i = 0u64;
        c.bench_function(&format!("grpc/put_100b/{size}_node"), |b| {
            b.iter(|| {
                i += 1;
                let key = format!("bench:{:08}", i % 100_000).into_bytes();
                rt.block_on(client.put(&key, value.clone(), None)).unwrap();
            })
        });
        rt.block_on(client.put(b"bench:hot", value.clone(), None))
            .unwrap();
        c.bench_function(&format!("grpc/get_100b/{size}_node"), |b| {
            b.iter(|| black_box(rt.block_on(client.get(b"bench:hot")).unwrap()))
        });
        for node in nodes {
            rt.block_on(node.shutdown()).unwrap();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = bench_grpc
}
criterion_main!(benches);
