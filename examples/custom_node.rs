//! A node composed from the crates with two layers swapped through their
//! traits, served over gRPC and used through the client SDK.
//!
//! - storage: `BTreeEngine`, written below (a `BTreeMap` behind a lock),
//!   instead of `kv-lsm`; it implements `kv_core::StorageEngine` and first
//!   passes the `kv-testkit` conformance suite;
//! - transport: the in-process `SimNetwork` of `kv-coordinator` instead of
//!   gRPC between nodes (four replicas in one process);
//! - unchanged: the ring (`kv-ring`), the replica and coordinator
//!   (`kv-coordinator`: dotted version vectors, quorums, hints, read
//!   repair), and the client API (`kv_server::serve_client_api`).
//!
//! ```text
//! cargo run --release --example custom_node
//! ```
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use kv_coordinator::sim::{SimNetwork, SimTransport};
use kv_coordinator::{ClientHandler, Config, Coordinator, Replica, ReplicaSettings};
use kv_core::{NodeId, Partitioner, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch};
use kv_ring::ConsistentHashRing;
use kv_server::client::{Client, ClientConfig};
use parking_lot::RwLock;

/// A user-written engine: every key in one ordered map. Not durable: a
/// restart loses everything, which suits caches and tests.
#[derive(Debug, Default)]
struct BTreeEngine {
    map: RwLock<Contents>,
}

/// The pairs, and the sequence number of the last write.
type Contents = (BTreeMap<Vec<u8>, Vec<u8>>, u64);

/// A conformance case: its name and the check.
type Case = (&'static str, fn(&BTreeEngine));

impl StorageEngine for BTreeEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map.read().0.get(key).cloned())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut guard = self.map.write();
        let (map, seq) = &mut *guard;
        for op in batch.ops() {
            *seq += 1;
            match op {
                kv_core::BatchOp::Put { key, value } => {
                    map.insert(key.clone(), value.clone());
                }
                kv_core::BatchOp::Delete { key } => {
                    map.remove(key);
                }
            }
        }
        Ok(())
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<ScanIter<'_>, StorageError> {
        // A snapshot: later writes are not seen by this scan.
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = self
            .map
            .read()
            .0
            .iter()
            .filter(|(k, _)| {
                let k = k.as_slice();
                let after = match start {
                    Bound::Included(s) => k >= s,
                    Bound::Excluded(s) => k > s,
                    Bound::Unbounded => true,
                };
                let before = match end {
                    Bound::Included(e) => k <= e,
                    Bound::Excluded(e) => k < e,
                    Bound::Unbounded => true,
                };
                after && before
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Box::new(pairs.into_iter().map(Ok)))
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn last_sequence(&self) -> SeqNo {
        SeqNo(self.map.read().1)
    }

    fn inline_reads(&self) -> bool {
        true
    }
}

/// Runs the conformance suite's cases on fresh engines.
fn conformance() {
    use kv_testkit::conformance as c;
    let cases: [Case; 9] = [
        ("put_get_delete", c::put_get_delete),
        (
            "empty_values_and_binary_keys",
            c::empty_values_and_binary_keys,
        ),
        (
            "batch_is_atomic_and_last_op_wins",
            c::batch_is_atomic_and_last_op_wins,
        ),
        (
            "scan_respects_bounds_and_order",
            c::scan_respects_bounds_and_order,
        ),
        (
            "scan_is_a_point_in_time_view",
            c::scan_is_a_point_in_time_view,
        ),
        ("sequence_numbers_advance", c::sequence_numbers_advance),
        ("flush_keeps_everything", c::flush_keeps_everything),
        (
            "matches_a_model_over_many_keys",
            c::matches_a_model_over_many_keys,
        ),
        ("concurrent_writers_lose_nothing", |e| {
            c::concurrent_writers_lose_nothing(e)
        }),
    ];
    for (name, case) in cases {
        case(&BTreeEngine::default());
        println!("  ok  {name}");
    }
}

type Node = Coordinator<Arc<BTreeEngine>, SimTransport<Arc<BTreeEngine>>, ConsistentHashRing>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("== the storage-engine conformance suite on BTreeEngine");
    conformance();

    println!("== four nodes in one process: BTreeEngine, in-process network, N=3 W=2 R=2");
    let ids: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let ring = Arc::new(ConsistentHashRing::builder().nodes(ids.clone()).build()?);
    let network = SimNetwork::new(7);
    let config = Config::default();
    let settings = ReplicaSettings::default();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    let mut engines = Vec::new();
    for &id in &ids {
        let engine = Arc::new(BTreeEngine::default());
        let replica = Arc::new(Replica::new(
            id,
            engine.clone(),
            Arc::new(BTreeEngine::default()),
            &settings,
            ring.clone(),
        )?);
        network.attach(replica.clone());
        let node = Arc::new(Coordinator::new(
            config.clone(),
            replica,
            Arc::new(SimTransport::new(id, network.clone())),
            ring.clone(),
            network.clone(),
        )?);
        // Requests for keys node `id` does not replicate are forwarded to
        // their coordinator through the network.
        let handler: Arc<dyn ClientHandler> = node.clone();
        network.attach_handler(id, Arc::downgrade(&handler));
        nodes.push(node);
        engines.push(engine);
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kv_server::serve_client_api(
        nodes[0].clone(),
        listener,
        1024,
        async move {
            let _ = stopped.await;
        },
    ));
    println!("  node 1 serves the client API on {addr}");

    let client = Client::new(
        [addr.to_string()],
        ClientConfig {
            route_by_key: false,
            ..ClientConfig::default()
        },
    )?;
    let key = b"cart:alice";
    let replicas = ring.preference_list(key, 3)?;
    println!("  cart:alice lives on {replicas:?}");

    println!("== through the SDK: a write, two concurrent writes, a resolving write");
    let first = client.put(key, b"apples".to_vec(), None).await?;
    let read = client.get(key).await?;
    println!("  get -> {:?}", utf8(&read.values));
    client
        .put(key, b"apples+pears".to_vec(), Some(&read.context))
        .await?;
    client
        .put(key, b"apples+plums".to_vec(), Some(&read.context))
        .await?;
    let siblings = client.get(key).await?;
    println!(
        "  two writers from the same read -> siblings {:?}",
        utf8(&siblings.values)
    );
    let merged = client
        .put(key, b"apples+pears+plums".to_vec(), Some(&siblings.context))
        .await?;
    let resolved = client.get(key).await?;
    println!(
        "  written with the siblings' context -> {:?}",
        utf8(&resolved.values)
    );
    println!(
        "  first write's version {:?}, last {:?}",
        first.version, merged.version
    );

    println!("== what each node's own engine holds for cart:alice");
    // Every replica acknowledges eventually (W=2 returns after two).
    for _ in 0..100 {
        let held = replicas
            .iter()
            .filter(|r| stored(&nodes[(r.0 - 1) as usize], key) == resolved.values)
            .count();
        if held == replicas.len() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut everywhere = true;
    for (node, engine) in nodes.iter().zip(&engines) {
        let values = stored(node, key);
        let replica = replicas.contains(&node.replica().id());
        println!(
            "  node {}: {} keys in its engine, cart:alice = {:?}{}",
            node.replica().id().0,
            engine.map.read().0.len(),
            utf8(&values),
            if replica { "" } else { " (not a replica)" }
        );
        everywhere &= !replica || values == resolved.values;
    }

    println!("== a delete through the SDK");
    client.delete(key, &resolved.context).await?;
    let gone = client.get(key).await?;
    println!(
        "  get -> {:?} (a tombstone until collected)",
        utf8(&gone.values)
    );

    let _ = stop.send(());
    server.await??;
    if siblings.values.len() != 2
        || resolved.values.len() != 1
        || !everywhere
        || !gone.values.is_empty()
    {
        return Err("the composed node did not behave as the store promises".into());
    }
    Ok(())
}

fn stored(node: &Node, key: &[u8]) -> Vec<Vec<u8>> {
    node.replica()
        .state(key)
        .map(|s| s.values().flatten().cloned().collect())
        .unwrap_or_default()
}

fn utf8(values: &[Vec<u8>]) -> Vec<String> {
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}
