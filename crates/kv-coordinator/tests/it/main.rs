//! The coordinator on an in-process cluster with fault injection, in
//! paused (simulated) tokio time.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::sim::{SimNetwork, SimTransport};
use kv_coordinator::{Config, Coordinator, Error, Replica};
use kv_core::{NodeId, Partitioner, StorageEngine};
use kv_ring::ConsistentHashRing;
use kv_testkit::MemEngine;

type Node = Coordinator<MemEngine, SimTransport<MemEngine>, ConsistentHashRing>;

struct Cluster {
    network: Arc<SimNetwork<MemEngine>>,
    ring: Arc<ConsistentHashRing>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn new(size: u64, config: Config) -> Self {
        let network = SimNetwork::new(42);
        let ring = Arc::new(
            ConsistentHashRing::builder()
                .vnodes(32)
                .nodes((1..=size).map(NodeId))
                .build()
                .unwrap(),
        );
        let nodes = (1..=size)
            .map(|id| {
                let replica = Arc::new(Replica::new(NodeId(id), MemEngine::new()));
                network.attach(replica.clone());
                let transport = Arc::new(SimTransport::new(NodeId(id), network.clone()));
                Coordinator::new(config.clone(), replica, transport, ring.clone()).unwrap()
            })
            .collect();
        Cluster {
            network,
            ring,
            nodes,
        }
    }

    fn replicas(&self, key: &[u8]) -> Vec<NodeId> {
        self.ring.preference_list(key, 3).unwrap()
    }

    /// The node that coordinates `key` (its first replica).
    fn coordinator(&self, key: &[u8]) -> &Node {
        self.node(self.replicas(key)[0])
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[(id.0 - 1) as usize]
    }

    /// What replica `id` holds for `key`, read directly.
    fn stored(&self, id: NodeId, key: &[u8]) -> Vec<Vec<u8>> {
        self.node(id)
            .replica()
            .state(key)
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn put_then_get_with_quorums() {
    let c = Cluster::new(5, Config::default());
    let key = b"user:1";
    let put = c
        .coordinator(key)
        .put(key, b"alice", b"", None)
        .await
        .unwrap();
    assert!(!put.context.is_empty());
    let got = c.coordinator(key).get(key, None).await.unwrap();
    assert_eq!(got.values, vec![b"alice".to_vec()]);
    // Every replica has it once replication settles.
    tokio::time::sleep(Duration::from_millis(10)).await;
    for r in c.replicas(key) {
        assert_eq!(c.stored(r, key), vec![b"alice".to_vec()], "replica {r}");
    }
    // W=3 with one replica down fails, and says how and where.
    let down = c.replicas(key)[2];
    c.network.set_down(down, true);
    match c
        .coordinator(key)
        .put(key, b"bob", &got.context, Some(3))
        .await
    {
        Err(Error::WriteQuorum {
            acked,
            needed,
            failed,
            timed_out,
        }) => {
            assert_eq!((acked, needed), (2, 3));
            assert_eq!(failed, vec![down]);
            assert!(timed_out.is_empty());
        }
        other => panic!("expected a quorum failure, got {other:?}"),
    }
    // W=2 still succeeds with one replica down; R=3 cannot.
    c.coordinator(key)
        .put(key, b"carol", &got.context, Some(2))
        .await
        .unwrap();
    assert!(matches!(
        c.coordinator(key).get(key, Some(3)).await,
        Err(Error::ReadQuorum {
            answered: 2,
            needed: 3,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn timeouts_bound_every_wait() {
    let c = Cluster::new(5, Config::default());
    let key = b"slow";
    c.network.set_delay(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    match c.coordinator(key).put(key, b"v", b"", None).await {
        Err(Error::WriteQuorum {
            acked: 1,
            needed: 2,
            failed,
            timed_out,
        }) => {
            assert!(failed.is_empty());
            assert_eq!(timed_out.len(), 2);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Config::default().request_timeout);
    // W=1 (legitimate, W + R <= N) needs only the coordinator.
    c.coordinator(key)
        .put(key, b"v", b"", Some(1))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn concurrent_writes_become_siblings_and_a_merged_context_resolves_them() {
    let c = Cluster::new(5, Config::default());
    let key = b"cart:9";
    let coordinator = c.coordinator(key);
    coordinator.put(key, b"v0", b"", None).await.unwrap();
    let read = coordinator.get(key, None).await.unwrap();
    // Two clients write with the same context through the same coordinator.
    coordinator
        .put(key, b"alice", &read.context, None)
        .await
        .unwrap();
    coordinator
        .put(key, b"bob", &read.context, None)
        .await
        .unwrap();
    let both = coordinator.get(key, None).await.unwrap();
    let mut values = both.values.clone();
    values.sort();
    assert_eq!(values, vec![b"alice".to_vec(), b"bob".to_vec()]);
    // A write carrying the merged context resolves them, on every replica.
    coordinator
        .put(key, b"alice+bob", &both.context, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for r in c.replicas(key) {
        assert_eq!(c.stored(r, key), vec![b"alice+bob".to_vec()], "replica {r}");
    }
    // A write without context on an existing key is a concurrent sibling.
    coordinator.put(key, b"blind", b"", None).await.unwrap();
    assert_eq!(coordinator.get(key, None).await.unwrap().values.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn read_repair_fixes_a_stale_replica() {
    let c = Cluster::new(5, Config::default());
    let key = b"doc:7";
    let stale = c.replicas(key)[2];
    c.network.set_down(stale, true);
    c.coordinator(key)
        .put(key, b"fresh", b"", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.network.set_down(stale, false);
    assert!(
        c.stored(stale, key).is_empty(),
        "missed the write while down"
    );
    // A read that hears from the stale replica repairs it after replying.
    let got = c.coordinator(key).get(key, Some(3)).await.unwrap();
    assert_eq!(got.values, vec![b"fresh".to_vec()]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        c.stored(stale, key),
        vec![b"fresh".to_vec()],
        "repaired by the read"
    );
}

#[tokio::test(start_paused = true)]
async fn deletes_are_tombstones_that_supersede_what_they_saw() {
    let c = Cluster::new(5, Config::default());
    let key = b"gone";
    let coordinator = c.coordinator(key);
    coordinator.put(key, b"v", b"", None).await.unwrap();
    let read = coordinator.get(key, None).await.unwrap();
    coordinator.delete(key, &read.context, None).await.unwrap();
    assert!(coordinator.get(key, None).await.unwrap().values.is_empty());
    tokio::time::sleep(Duration::from_millis(10)).await;
    for r in c.replicas(key) {
        let state = c.node(r).replica().state(key).unwrap();
        assert_eq!(
            state.values().collect::<Vec<_>>(),
            vec![&None],
            "replica {r} holds the tombstone"
        );
    }
    // A delete with a stale context keeps the concurrent write.
    coordinator.put(key, b"again", b"", None).await.unwrap();
    coordinator.delete(key, &read.context, None).await.unwrap();
    assert_eq!(
        coordinator.get(key, None).await.unwrap().values,
        vec![b"again".to_vec()]
    );
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_and_writes_nothing() {
    let config = Config {
        max_key_bytes: 16,
        max_value_bytes: 32,
        ..Config::default()
    };
    let c = Cluster::new(5, config);
    let key = b"k";
    let node = c.coordinator(key);
    let cases: Vec<(&str, kv_coordinator::Result<_>)> = vec![
        ("empty key", node.put(b"", b"v", b"", None).await),
        ("oversize key", node.put(&[b'k'; 17], b"v", b"", None).await),
        ("oversize value", node.put(key, &[0; 33], b"", None).await),
        ("w = 0", node.put(key, b"v", b"", Some(0)).await),
        ("w > n", node.put(key, b"v", b"", Some(4)).await),
        (
            "garbage context",
            node.put(key, b"v", b"\xff\xff\xff", None).await,
        ),
        ("empty key delete", node.delete(b"", b"", None).await),
    ];
    for (what, result) in cases {
        match result {
            Err(Error::InvalidInput(message)) => assert!(!message.is_empty(), "{what}"),
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        }
    }
    assert!(matches!(
        node.get(key, Some(0)).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        node.get(key, Some(9)).await,
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        node.get(b"", None).await,
        Err(Error::InvalidInput(_))
    ));
    for n in &c.nodes {
        assert!(
            n.replica().engine().is_empty(),
            "nothing written on {}",
            n.replica().id()
        );
    }
    // A node that does not replicate the key says which nodes do.
    let outsider = (1..=5)
        .map(NodeId)
        .find(|id| !c.replicas(key).contains(id))
        .unwrap();
    match c.node(outsider).put(key, b"v", b"", None).await {
        Err(Error::NotReplica(replicas)) => assert_eq!(replicas, c.replicas(key)),
        other => panic!("expected NotReplica, got {other:?}"),
    }
    assert!(
        Coordinator::new(
            Config {
                w: 4,
                ..Config::default()
            },
            c.node(NodeId(1)).replica().clone(),
            Arc::new(SimTransport::new(NodeId(1), c.network.clone())),
            c.ring.clone()
        )
        .is_err()
    );
    let _ = c.node(NodeId(1)).replica().engine().last_sequence();
}
