//! The coordinator on an in-process cluster with fault injection, in
//! paused (simulated) tokio time.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::sim::{SimNetwork, SimTransport};
use kv_coordinator::{
    ClientHandler, Config, Coordinator, Error, RepairReport, Replica, ReplicaSettings,
};
use kv_core::{NodeId, Partitioner, StorageEngine};
use kv_ring::ConsistentHashRing;
use kv_testkit::MemEngine;

mod dots;
mod expiry;
mod health;
mod listing;
mod pipelined;
mod retries;
mod watch;

type Engine = Arc<MemEngine>;
type Node = Coordinator<Engine, SimTransport<Engine>, ConsistentHashRing>;

struct Cluster {
    config: Config,
    network: Arc<SimNetwork<Engine>>,
    ring: Arc<ConsistentHashRing>,
    /// Each node's data and hint engines, kept across restarts.
    disks: Vec<(Engine, Engine)>,
    nodes: Vec<Arc<Node>>,
    /// The epoch the next start takes (every start takes a fresh one, as
    /// a real node does).
    next_epoch: std::sync::atomic::AtomicU32,
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
        let disks: Vec<(Engine, Engine)> = (0..size)
            .map(|_| (Arc::new(MemEngine::new()), Arc::new(MemEngine::new())))
            .collect();
        let mut cluster = Cluster {
            config,
            network,
            ring,
            disks,
            nodes: Vec::new(),
            next_epoch: std::sync::atomic::AtomicU32::new(1),
        };
        cluster.nodes = (1..=size).map(|id| cluster.start(NodeId(id))).collect();
        cluster
    }

    /// Starts node `id` on its disks (again, after a restart).
    fn start(&self, id: NodeId) -> Arc<Node> {
        let (data, hints) = self.disks[(id.0 - 1) as usize].clone();
        let settings = ReplicaSettings {
            n: self.config.n,
            hints: kv_coordinator::HintLimits {
                count: self.config.max_hints,
                bytes: self.config.max_hint_bytes,
            },
            merkle_leaves: 256,
            epoch: self
                .next_epoch
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            max_state_bytes: self.config.max_state_bytes,
        };
        let replica =
            Arc::new(Replica::new(id, data, hints, &settings, self.ring.clone()).unwrap());
        self.network.attach(replica.clone());
        let transport = Arc::new(SimTransport::new(id, self.network.clone()));
        let node = Arc::new(
            Coordinator::new(
                self.config.clone(),
                replica,
                transport,
                self.ring.clone(),
                self.network.clone(),
            )
            .unwrap(),
        );
        let handler: Arc<dyn ClientHandler> = node.clone();
        self.network.attach_handler(id, Arc::downgrade(&handler));
        node
    }

    /// Restarts node `id`: everything in memory is lost, its disks stay.
    fn restart(&mut self, id: NodeId) {
        let node = self.start(id);
        self.nodes[(id.0 - 1) as usize] = node;
    }

    /// Runs anti-entropy rounds on every node until one pushes nothing
    /// (at most five), failing the test on any exchange error.
    async fn converge(&self, seed: u64) {
        for round in 0.. {
            let mut changed = 0;
            for node in &self.nodes {
                let (report, errors) = node.anti_entropy_round(64).await;
                assert!(errors.is_empty(), "seed {seed}: {errors:?}");
                changed += report.keys_pushed;
            }
            if changed == 0 {
                return;
            }
            assert!(round < 5, "seed {seed}: anti-entropy did not converge");
        }
    }

    /// The state every replica of `key` holds, asserting they agree.
    fn agreed_state(&self, key: &[u8], what: &str) -> kv_coordinator::Siblings {
        let mut states = self
            .replicas(key)
            .into_iter()
            .map(|r| self.node(r).replica().state(key).unwrap());
        let first = states.next().unwrap_or_default();
        for other in states {
            assert!(
                other == first,
                "{what}: replicas of {:?} differ",
                String::from_utf8_lossy(key)
            );
        }
        first
    }

    /// Asserts that every replica of each of `keys` holds the same state.
    fn assert_agree(&self, keys: &[Vec<u8>], what: &str) {
        for key in keys {
            self.agreed_state(key, what);
        }
    }

    /// Node `id`'s disks are replaced by empty ones and it restarts.
    fn wipe(&mut self, id: NodeId) {
        self.restore(id, MemEngine::new(), MemEngine::new());
    }

    /// Node `id` restarts on `data` and `hints` (a restored backup).
    fn restore(&mut self, id: NodeId, data: MemEngine, hints: MemEngine) {
        self.disks[(id.0 - 1) as usize] = (Arc::new(data), Arc::new(hints));
        self.restart(id);
    }

    /// The first replica of `key` that is up.
    fn healthy_coordinator(&self, key: &[u8]) -> &Node {
        let id = self
            .replicas(key)
            .into_iter()
            .find(|&r| !self.network.is_down(r))
            .unwrap();
        self.node(id)
    }

    fn hints_pending(&self) -> usize {
        self.nodes.iter().map(|n| n.replica().hints().len()).sum()
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
    // W=3 with one replica down and no node to fall back on (a cluster
    // of exactly N nodes) fails, and says how and where.
    let small = Cluster::new(3, Config::default());
    small
        .node(small.replicas(key)[0])
        .put(key, b"alice", b"", None)
        .await
        .unwrap();
    let down = small.replicas(key)[2];
    small.network.set_down(down, true);
    match small
        .node(small.replicas(key)[0])
        .put(key, b"bob", b"", Some(3))
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
    // With a node to fall back on, the sloppy quorum reaches W=3.
    let down = c.replicas(key)[2];
    c.network.set_down(down, true);
    c.coordinator(key)
        .put(key, b"bob", &got.context, Some(3))
        .await
        .unwrap();
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
    assert!(
        Coordinator::new(
            Config {
                w: 4,
                ..Config::default()
            },
            c.node(NodeId(1)).replica().clone(),
            Arc::new(SimTransport::new(NodeId(1), c.network.clone())),
            c.ring.clone(),
            c.network.clone(),
        )
        .is_err()
    );
    let _ = c.node(NodeId(1)).replica().engine().last_sequence();
}

/// While node 3 is down, one key grows there (a write it took on its
/// own) so that merging that key's hint would pass the state size limit:
/// node 3 refuses that hint as invalid. The hint stays held, and it does
/// not stop the owner's other hints, which sort after it, from arriving.
#[tokio::test(start_paused = true)]
async fn a_hint_the_owner_refuses_stays_and_does_not_block_the_rest() {
    let c = Cluster::new(
        5,
        Config {
            max_key_bytes: 100,
            max_value_bytes: 600,
            max_state_bytes: 1_000,
            ..Config::default()
        },
    );
    let down = NodeId(3);
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("key:{i:04}").into_bytes())
        .filter(|k| c.replicas(k).contains(&down))
        .take(200)
        .collect();
    // The key whose hint every holder sends first to node 3.
    let refused = keys.iter().min().unwrap().clone();
    c.network.set_down(down, true);
    for key in &keys {
        let value = if *key == refused {
            vec![b'h'; 550]
        } else {
            b"v".to_vec()
        };
        c.healthy_coordinator(key)
            .put(key, &value, b"", None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.hints_pending(), 200);
    c.node(down)
        .replica()
        .coordinate(
            &refused,
            Some(vec![b'o'; 550]),
            &kv_clock::VectorClock::new(),
            10,
            &kv_clock::PrunePolicy::default(),
        )
        .unwrap();
    c.network.set_down(down, false);
    let mut delivered = 0;
    for node in &c.nodes {
        delivered += node.deliver_hints(10_000).await.unwrap();
    }
    assert_eq!(delivered, 199, "every hint but the refused one");
    assert_eq!(c.hints_pending(), 1, "the refused hint is kept, not lost");
    for key in keys.iter().filter(|k| **k != refused) {
        assert_eq!(c.stored(down, key), vec![b"v".to_vec()]);
    }
}

#[tokio::test(start_paused = true)]
async fn sloppy_quorum_and_durable_hinted_handoff() {
    let mut c = Cluster::new(5, Config::default());
    let down = NodeId(3);
    // 5,000 keys that node 3 replicates.
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("key:{i}").into_bytes())
        .filter(|k| c.replicas(k).contains(&down))
        .take(5_000)
        .collect();
    c.network.set_down(down, true);
    for (i, key) in keys.iter().enumerate() {
        let value = format!("v{i}");
        c.healthy_coordinator(key)
            .put(key, value.as_bytes(), b"", None)
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        c.hints_pending(),
        5_000,
        "one hint per write that missed node 3"
    );
    let stored: u64 = c.nodes.iter().map(|n| n.replica().hints().stored()).sum();
    assert_eq!(stored, 5_000);
    // The fallback holding the most hints restarts before delivering them.
    let fallback = c
        .nodes
        .iter()
        .max_by_key(|n| n.replica().hints().len())
        .unwrap()
        .replica()
        .id();
    let before = c.node(fallback).replica().hints().len();
    assert!(before > 0);
    c.restart(fallback);
    assert_eq!(
        c.node(fallback).replica().hints().len(),
        before,
        "hints survive a restart"
    );
    // Nothing is delivered while the owner is down.
    assert_eq!(c.nodes[0].deliver_hints(10_000).await.unwrap(), 0);
    c.network.set_down(down, false);
    let mut delivered = 0;
    for node in &c.nodes {
        delivered += node.deliver_hints(10_000).await.unwrap();
    }
    println!(
        "hinted handoff: 5000 writes with a replica down, {delivered} of 5000 hints delivered"
    );
    assert_eq!(delivered, 5_000);
    assert_eq!(c.hints_pending(), 0, "every hint store is empty");
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            c.stored(down, key),
            vec![format!("v{i}").into_bytes()],
            "key {i} on the recovered node"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn strict_quorum_keeps_no_hints() {
    let config = Config {
        sloppy_quorum: false,
        ..Config::default()
    };
    let c = Cluster::new(5, config);
    let key = b"strict";
    let down = c.replicas(key)[1];
    c.network.set_down(down, true);
    assert!(matches!(
        c.healthy_coordinator(key)
            .put(key, b"v", b"", Some(3))
            .await,
        Err(Error::WriteQuorum {
            acked: 2,
            needed: 3,
            ..
        })
    ));
    c.healthy_coordinator(key)
        .put(key, b"v", b"", Some(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.hints_pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn hints_for_a_node_that_left_the_ring_go_to_the_current_replicas() {
    let c = Cluster::new(5, Config::default());
    let key = b"orphan";
    let replicas = c.replicas(key);
    let holder = (1..=5).map(NodeId).find(|n| !replicas.contains(n)).unwrap();
    // A hint for node 99, which is not (or no longer) in the ring.
    let mut state = kv_coordinator::Siblings::new();
    state
        .update(
            &kv_clock::VectorClock::new(),
            NodeId(99),
            Some(b"kept".to_vec()),
            0,
        )
        .unwrap();
    c.node(holder)
        .replica()
        .hints()
        .add(NodeId(99), key, &state, kv_core::unix_secs())
        .unwrap();
    assert_eq!(c.hints_pending(), 1);
    // One replica is down: the hint stays until all of them took it.
    c.network.set_down(replicas[2], true);
    assert_eq!(c.node(holder).deliver_hints(100).await.unwrap(), 0);
    assert_eq!(c.hints_pending(), 1);
    c.network.set_down(replicas[2], false);
    assert_eq!(c.node(holder).deliver_hints(100).await.unwrap(), 1);
    assert_eq!(c.hints_pending(), 0);
    for r in replicas {
        let held = c.node(r).replica().state(key).unwrap();
        assert!(
            held.values().any(|v| v.as_deref() == Some(&b"kept"[..])),
            "replica {r}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_replica_gets_a_hinted_fallback_within_the_request() {
    // The membership view says the replica is alive, but it cannot be
    // reached: the write still succeeds with W=3 through a fallback.
    let c = Cluster::new(5, Config::default());
    let key = b"flaky";
    let replicas = c.replicas(key);
    let coordinator = c.node(replicas[0]);
    c.network.set_cut(replicas[0], replicas[2], true);
    coordinator.put(key, b"v", b"", Some(3)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(c.hints_pending(), 1);
    c.network.set_cut(replicas[0], replicas[2], false);
    let delivered: usize = {
        let mut n = 0;
        for node in &c.nodes {
            n += node.deliver_hints(100).await.unwrap();
        }
        n
    };
    assert_eq!(delivered, 1);
    assert_eq!(c.stored(replicas[2], key), vec![b"v".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn anti_entropy_alone_converges_replicas_after_a_partition() {
    let config = Config {
        sloppy_quorum: false,
        ..Config::default()
    };
    let c = Cluster::new(5, config);
    let side_a = [NodeId(1), NodeId(2)];
    let side_b = [NodeId(3), NodeId(4), NodeId(5)];
    for a in side_a {
        for b in side_b {
            c.network.set_cut(a, b, true);
        }
    }
    // W=1 writes on both sides of the partition to the same keys.
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("item:{i}").into_bytes()).collect();
    let mut both_sides = 0;
    for key in &keys {
        let replicas = c.replicas(key);
        let on_a = replicas.iter().find(|r| side_a.contains(r));
        let on_b = replicas.iter().find(|r| side_b.contains(r));
        if let Some(&a) = on_a {
            c.node(a).put(key, b"from-a", b"", Some(1)).await.unwrap();
        }
        if let Some(&b) = on_b {
            c.node(b).put(key, b"from-b", b"", Some(1)).await.unwrap();
        }
        if on_a.is_some() && on_b.is_some() {
            both_sides += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let diverged = keys
        .iter()
        .filter(|k| {
            let states: Vec<_> = c
                .replicas(k)
                .iter()
                .map(|&r| c.node(r).replica().state(k).unwrap())
                .collect();
            states.windows(2).any(|w| w[0] != w[1])
        })
        .count();
    assert!(
        diverged > 100,
        "the partition made replicas diverge ({diverged} keys)"
    );
    // Heal; no client reads, only anti-entropy rounds.
    for a in side_a {
        for b in side_b {
            c.network.set_cut(a, b, false);
        }
    }
    let started = tokio::time::Instant::now();
    let mut total = RepairReport::default();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut round = RepairReport::default();
        for node in &c.nodes {
            let (report, errors) = node.anti_entropy_round(64).await;
            assert!(errors.is_empty(), "{errors:?}");
            round += report;
        }
        total += round;
        if round.keys_pulled == 0 && round.keys_pushed == 0 {
            break;
        }
        assert!(rounds < 5, "anti-entropy did not converge");
    }
    println!(
        "anti-entropy: {diverged} diverged keys, {rounds} rounds, {} buckets, {} keys pulled, {} pushed, {} exchange bytes, {:?} simulated",
        total.buckets,
        total.keys_pulled,
        total.keys_pushed,
        total.exchange_bytes,
        started.elapsed()
    );
    c.assert_agree(&keys, "after anti-entropy");
    // Keys written on both sides keep both writes as siblings.
    let with_siblings = keys
        .iter()
        .filter(|k| c.node(c.replicas(k)[0]).replica().state(k).unwrap().len() == 2)
        .count();
    assert_eq!(with_siblings, both_sides);
}

/// A seeded generator: each call draws a number below its argument.
fn seeded(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed;
    move |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    }
}

/// Per key: every value written, with the dot that created it.
type Written = Vec<(Vec<u8>, (kv_core::ActorId, u64))>;

/// Every key's replicas are identical and hold exactly the written values
/// that no issued context covered.
fn check_history(
    c: &Cluster,
    keys: &[Vec<u8>],
    contexts: &std::collections::BTreeMap<Vec<u8>, Vec<kv_clock::VectorClock>>,
    written: &std::collections::BTreeMap<Vec<u8>, Written>,
    seed: u64,
    stage: &str,
) {
    use std::collections::BTreeSet;
    for key in keys {
        let state = c.agreed_state(key, &format!("seed {seed}, {stage}"));
        let present: BTreeSet<Vec<u8>> = state.values().flatten().cloned().collect();
        let issued = contexts.get(key).cloned().unwrap_or_default();
        let expected: BTreeSet<Vec<u8>> = written
            .get(key)
            .into_iter()
            .flatten()
            .filter(|(_, (actor, counter))| !issued.iter().any(|ctx| ctx.covers(*actor, *counter)))
            .map(|(v, _)| v.clone())
            .collect();
        assert_eq!(
            present,
            expected,
            "seed {seed}, {stage}: key {:?}",
            String::from_utf8_lossy(key)
        );
    }
}

/// Random operations under random faults, then a check of the whole
/// history: after healing, delivering hints and anti-entropy, every key's
/// replicas are equal and hold exactly the values written and not
/// superseded by a write (or delete) whose context covered them. That is:
/// no acknowledged write lost, no phantom value, no resurrected delete.
async fn random_history(seed: u64, ops: usize) {
    use std::collections::BTreeMap;

    use kv_clock::VectorClock;

    let config = Config {
        max_siblings: 10_000,
        ..Config::default()
    };
    let c = Cluster::new(5, config);
    let mut next = seeded(seed);
    let keys: Vec<Vec<u8>> = (0..24).map(|i| format!("h:{i}").into_bytes()).collect();
    // Per key: every value written, with the dot that created it.
    let mut written: BTreeMap<Vec<u8>, Written> = BTreeMap::new();
    // Per key: the contexts writes were issued with.
    let mut contexts: BTreeMap<Vec<u8>, Vec<VectorClock>> = BTreeMap::new();
    let mut last_read: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let (mut acked, mut failed) = (0, 0);
    for op in 0..ops {
        // Faults change now and then.
        if op % 40 == 0 {
            for id in 1..=5 {
                c.network.set_down(NodeId(id), next(6) == 0);
            }
            for a in 1..=5u64 {
                for b in a + 1..=5 {
                    c.network.set_cut(NodeId(a), NodeId(b), next(8) == 0);
                }
            }
            c.network
                .set_drop_rate(if next(3) == 0 { 0.1 } else { 0.0 });
        }
        let key = keys[next(keys.len() as u64) as usize].clone();
        let Some(coordinator) = c
            .replicas(&key)
            .into_iter()
            .find(|&r| !c.network.is_down(r))
        else {
            continue;
        };
        let node = c.node(coordinator);
        match next(10) {
            0..=2 => {
                if let Ok(got) = node.get(&key, Some(1 + next(2) as usize)).await {
                    last_read.insert(key.clone(), got.context);
                }
            }
            kind => {
                let context = if kind == 3 {
                    Vec::new()
                } else {
                    last_read.get(&key).cloned().unwrap_or_default()
                };
                let w = Some(1 + next(3) as usize);
                let delete = kind == 9;
                let value = format!("v{op}").into_bytes();
                let result = if delete {
                    node.delete(&key, &context, w).await
                } else {
                    node.put(&key, &value, &context, w).await
                };
                match result {
                    Ok(_) => acked += 1,
                    Err(Error::WriteQuorum { .. }) => failed += 1,
                    Err(e) => panic!("seed {seed} op {op}: unexpected error {e}"),
                }
                // The write is stored at its coordinator either way.
                let ctx = if context.is_empty() {
                    VectorClock::new()
                } else {
                    VectorClock::from_bytes(&context).unwrap()
                };
                contexts.entry(key.clone()).or_default().push(ctx);
                if !delete {
                    let state = node.replica().state(&key).unwrap();
                    let dot = state
                        .siblings()
                        .iter()
                        .find(|s| s.value.as_deref() == Some(value.as_slice()))
                        .map(|s| (s.dot.actor, s.dot.counter))
                        .unwrap_or_else(|| {
                            panic!("seed {seed} op {op}: write not stored at its coordinator")
                        });
                    written.entry(key.clone()).or_default().push((value, dot));
                }
            }
        }
        if op % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Heal, deliver hints, run anti-entropy until nothing changes.
    for id in 1..=5 {
        c.network.set_down(NodeId(id), false);
        for b in id + 1..=5 {
            c.network.set_cut(NodeId(id), NodeId(b), false);
        }
    }
    c.network.set_drop_rate(0.0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for node in &c.nodes {
        node.deliver_hints(100_000).await.unwrap();
    }
    c.converge(seed).await;
    check_history(&c, &keys, &contexts, &written, seed, "after healing");
    // Collect every tombstone past its grace period, then run repair
    // again: no delete may come undone and no value may change.
    let later = kv_core::unix_secs() + 2 * Config::default().tombstone_grace.as_secs();
    let mut collected = 0;
    for node in &c.nodes {
        collected += node.collect_tombstones(later).await.unwrap().1;
    }
    for node in &c.nodes {
        let (_, errors) = node.anti_entropy_round(64).await;
        assert!(errors.is_empty(), "seed {seed}: {errors:?}");
        node.deliver_hints(100_000).await.unwrap();
    }
    check_history(&c, &keys, &contexts, &written, seed, "after collection");
    println!(
        "history check: seed {seed}, {ops} operations, {acked} writes acknowledged, {failed} failed their quorum, every key verified, {collected} tombstones collected and nothing resurrected"
    );
}

#[tokio::test(start_paused = true)]
async fn random_operations_under_random_faults_keep_the_history() {
    for seed in [1, 2, 3] {
        random_history(seed, 1_500).await;
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_what_happened() {
    use kv_coordinator::Metrics;
    let c = Cluster::new(5, Config::default());
    let key = b"counted";
    let replicas = c.replicas(key);
    let node = c.node(replicas[0]);
    node.put(key, b"a", b"", None).await.unwrap();
    node.put(key, b"b", b"", None).await.unwrap(); // a concurrent sibling
    let got = node.get(key, None).await.unwrap();
    assert_eq!(got.values.len(), 2);
    assert!(node.put(b"", b"x", b"", None).await.is_err());
    // A stale replica, repaired by a read.
    c.network.set_down(replicas[2], true);
    node.put(key, b"c", &got.context, None).await.unwrap();
    c.network.set_down(replicas[2], false);
    node.get(key, Some(3)).await.unwrap();
    let m = node.metrics();
    assert_eq!(Metrics::get(&m.put.requests), 4);
    assert_eq!(Metrics::get(&m.put.errors), 1);
    assert_eq!(Metrics::get(&m.get.requests), 2);
    assert_eq!(Metrics::get(&m.siblings_returned), 3);
    assert_eq!(Metrics::get(&m.reads_with_siblings), 1);
    assert!(Metrics::get(&m.read_repairs) >= 1);
    let (_, _, observed) = m.put.latency.snapshot();
    assert_eq!(observed, 4);
    // Quorum failures are counted.
    let small = Cluster::new(3, Config::default());
    let n = small.node(small.replicas(key)[0]);
    small.network.set_down(small.replicas(key)[1], true);
    small.network.set_down(small.replicas(key)[2], true);
    assert!(n.put(key, b"v", b"", None).await.is_err());
    assert_eq!(Metrics::get(&n.metrics().quorum_failures), 1);
}

#[tokio::test(start_paused = true)]
async fn requests_are_forwarded_to_the_first_healthy_replica() {
    let c = Cluster::new(5, Config::default());
    let key = b"routed";
    let replicas = c.replicas(key);
    let outsider = (1..=5)
        .map(NodeId)
        .find(|id| !replicas.contains(id))
        .unwrap();
    // Through a node that does not replicate the key.
    c.node(outsider).put(key, b"v1", b"", None).await.unwrap();
    assert_eq!(
        c.stored(replicas[0], key),
        vec![b"v1".to_vec()],
        "coordinated by the first replica"
    );
    let got = c.node(outsider).get(key, None).await.unwrap();
    assert_eq!(got.values, vec![b"v1".to_vec()]);
    // Through the second replica: still coordinated by the first, so a
    // write with the context read supersedes instead of making a sibling.
    c.node(replicas[1])
        .put(key, b"v2", &got.context, None)
        .await
        .unwrap();
    assert_eq!(
        c.node(outsider).get(key, None).await.unwrap().values,
        vec![b"v2".to_vec()]
    );
    let first_state = c.node(replicas[0]).replica().state(key).unwrap();
    assert!(
        first_state
            .siblings()
            .iter()
            .all(|s| s.dot.actor.node() == replicas[0]),
        "every dot made by the coordinator"
    );
    // With the first replica down, the next healthy one coordinates.
    c.network.set_down(replicas[0], true);
    c.node(outsider).put(key, b"v3", b"", None).await.unwrap();
    let second = c.node(replicas[1]).replica().state(key).unwrap();
    assert!(
        second
            .siblings()
            .iter()
            .any(|s| s.dot.actor.node() == replicas[1] && s.value.as_deref() == Some(&b"v3"[..]))
    );
    c.network.set_down(replicas[0], false);
    // Invalid requests fail at the coordinator and say so.
    match c.node(outsider).put(key, b"v", b"", Some(9)).await {
        Err(Error::Forwarded {
            node,
            invalid: true,
            ..
        }) => assert_eq!(node, replicas[0]),
        other => panic!("expected a forwarded invalid request, got {other:?}"),
    }
    // One hop: a forwarded request that reaches a non-replica is refused,
    // not forwarded again; that is a routing failure (the sender's ring
    // differs), not bad input, so a client may retry elsewhere.
    let reply = c
        .node(outsider)
        .coordinate(kv_core::ClientOp::Get {
            key: key.to_vec(),
            r: None,
        })
        .await;
    match reply {
        kv_core::ClientReply::Failed {
            invalid: false,
            message,
            ..
        } => assert!(message.contains("not a replica"), "{message}"),
        other => panic!("expected a routing failure, got {other:?}"),
    }
    // With every replica believed down, a non-replica still tries the
    // first one (liveness may be stale) and reports it unreachable, never
    // "invalid".
    for &r in &replicas {
        c.network.set_down(r, true);
    }
    match c.node(outsider).put(key, b"v4", b"", None).await {
        Err(Error::Forwarded {
            node,
            invalid: false,
            ..
        }) => assert_eq!(node, replicas[0]),
        other => panic!("expected an unreachable coordinator, got {other:?}"),
    }
}

trait PutContext {
    async fn coordinate_put(&self, key: &[u8], value: &[u8], context: &[u8]) -> Vec<u8>;
}

impl PutContext for Node {
    /// Writes here (as this node's own coordination) and returns the new
    /// context.
    async fn coordinate_put(&self, key: &[u8], value: &[u8], context: &[u8]) -> Vec<u8> {
        match self
            .coordinate(kv_core::ClientOp::Put {
                key: key.to_vec(),
                value: Some(value.to_vec()),
                context: context.to_vec(),
                w: None,
                write: None,
                expires: None,
            })
            .await
        {
            kv_core::ClientReply::Written { context, .. } => context,
            other => panic!("write failed: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn tombstones_are_collected_only_once_every_replica_holds_them() {
    let c = Cluster::new(5, Config::default());
    let key = b"tomb";
    let replicas = c.replicas(key);
    let coordinator = c.node(replicas[0]);
    // The value reaches every replica; the delete misses one of them.
    coordinator.put(key, b"v", b"", Some(3)).await.unwrap();
    let read = coordinator.get(key, None).await.unwrap();
    c.network.set_down(replicas[2], true);
    coordinator.delete(key, &read.context, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.network.set_down(replicas[2], false);
    assert_eq!(
        c.stored(replicas[2], key),
        vec![b"v".to_vec()],
        "the stale replica still has the value"
    );
    let now = kv_core::unix_secs();
    let after_grace = now + 2 * Config::default().tombstone_grace.as_secs();
    // Within the grace period: never.
    assert_eq!(coordinator.collect_tombstones(now).await.unwrap(), (1, 0));
    // After it, but one replica lacks the tombstone: not yet.
    assert_eq!(
        coordinator.collect_tombstones(after_grace).await.unwrap(),
        (1, 0)
    );
    // Reads and hints bring the tombstone everywhere; the value never
    // comes back through them.
    assert!(
        coordinator
            .get(key, Some(3))
            .await
            .unwrap()
            .values
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    for node in &c.nodes {
        node.deliver_hints(100).await.unwrap();
    }
    assert!(
        c.stored(replicas[2], key).is_empty(),
        "the stale replica now holds the tombstone"
    );
    assert_eq!(c.hints_pending(), 0);
    // Now every replica holds it: collected everywhere.
    assert_eq!(
        coordinator.collect_tombstones(after_grace).await.unwrap(),
        (1, 1)
    );
    for &r in &replicas {
        assert!(
            c.node(r).replica().engine().get(key).unwrap().is_none(),
            "collected on {r}"
        );
    }
    // Nothing resurrects the key: anti-entropy, reads, hint delivery.
    for node in &c.nodes {
        let (_, errors) = node.anti_entropy_round(64).await;
        assert!(errors.is_empty());
        node.deliver_hints(100).await.unwrap();
    }
    assert!(
        coordinator
            .get(key, Some(3))
            .await
            .unwrap()
            .values
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    for &r in &replicas {
        assert!(c.stored(r, key).is_empty(), "{r} holds no value");
    }
}

#[tokio::test(start_paused = true)]
async fn blocking_read_repair_fixes_before_the_reply() {
    let config = Config {
        read_repair_blocking: true,
        ..Config::default()
    };
    let c = Cluster::new(5, config);
    let key = b"blocking";
    let stale = c.replicas(key)[2];
    c.network.set_down(stale, true);
    c.coordinator(key)
        .put(key, b"fresh", b"", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.network.set_down(stale, false);
    c.coordinator(key).get(key, Some(3)).await.unwrap();
    // No waiting: the repair happened before the answer.
    assert_eq!(c.stored(stale, key), vec![b"fresh".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn clock_pruning_is_applied_and_counted() {
    let config = Config {
        prune: kv_clock::PrunePolicy {
            small: 1,
            big: 1,
            young: Duration::ZERO,
            old: Duration::ZERO,
        },
        ..Config::default()
    };
    let c = Cluster::new(5, config);
    let key = b"pruned";
    let replicas = c.replicas(key);
    // Writes coordinated by two replicas, each resolving the last.
    let mut context = Vec::new();
    for round in 0..4 {
        let node = c.node(replicas[round % 2]);
        context = node.coordinate_put(key, b"v", &context).await;
    }
    let pruned: u64 = replicas
        .iter()
        .map(|&r| c.node(r).replica().clock_entries_pruned())
        .sum();
    assert!(pruned > 0, "old entries were pruned");
    // The coordinator's own entry is never pruned: its counters only grow.
    let state = c.node(replicas[1]).replica().state(key).unwrap();
    assert!(state.context().get(c.node(replicas[1]).replica().actor()) >= 2);
}

/// Settings whose maintenance timer does something within seconds of
/// simulated time: hints every 200 ms, anti-entropy every second.
fn fast_maintenance() -> Config {
    Config {
        anti_entropy_interval: Duration::from_secs(1),
        maintenance_interval: Duration::from_millis(200),
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn maintenance_delivers_hints_and_repairs_without_clients() {
    let c = Cluster::new(5, fast_maintenance());
    let tasks: Vec<_> = c.nodes.iter().map(|n| n.spawn_maintenance()).collect();
    let down = NodeId(2);
    c.network.set_down(down, true);
    let keys: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("m:{i}").into_bytes())
        .filter(|k| c.replicas(k).contains(&down))
        .collect();
    for key in &keys {
        c.healthy_coordinator(key)
            .put(key, b"v", b"", None)
            .await
            .unwrap();
    }
    c.network.set_down(down, false);
    // Simulated time passes; the maintenance tasks do the rest.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(c.hints_pending(), 0, "hints delivered by maintenance");
    for key in &keys {
        assert_eq!(c.stored(down, key), vec![b"v".to_vec()]);
    }
    for t in tasks {
        t.abort();
    }
}

/// While an operator's repair of a node runs, exchanges it did not start
/// are declined (the peers' and its own background ones): the repair
/// reconciles with every peer, and a second exchange beside it would move
/// the same keys again. Afterwards background anti-entropy resumes.
#[tokio::test(start_paused = true)]
async fn an_operator_repair_runs_alone() {
    let c = Cluster::new(3, fast_maintenance());
    let wiped = NodeId(3);
    c.network.set_down(wiped, true);
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("r:{i}").into_bytes()).collect();
    for key in &keys {
        c.healthy_coordinator(key)
            .put(key, b"v", b"", None)
            .await
            .unwrap();
    }
    c.network.set_down(wiped, false);
    let missing = |c: &Cluster| {
        keys.iter()
            .filter(|k| c.stored(wiped, k).is_empty())
            .count()
    };
    assert_eq!(missing(&c), keys.len());

    let running = c.node(wiped).replica().begin_repair();
    let tasks: Vec<_> = c.nodes.iter().map(|n| n.spawn_maintenance()).collect();
    // A peer's exchange is declined, with the reason.
    let err = c
        .node(NodeId(1))
        .anti_entropy_with(wiped, 64)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("operator repair"), "{err}");
    let peers = c.node(NodeId(1)).anti_entropy_peers();
    assert!(
        peers[&wiped]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("operator repair"))
    );
    // Ten background intervals pass: nothing moves to the repairing node.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(missing(&c), keys.len(), "background exchanges paused");
    assert!(
        c.node(wiped).anti_entropy_peers().is_empty(),
        "its own never started"
    );
    // The repair itself exchanges with its peers.
    let report = c
        .node(wiped)
        .anti_entropy_with(NodeId(1), 64)
        .await
        .unwrap();
    assert_eq!(report.keys_changed, keys.len());
    assert_eq!(missing(&c), 0);

    // Done: the peers' exchanges with it are answered again.
    drop(running);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let peers = c.node(NodeId(2)).anti_entropy_peers();
    assert!(peers[&wiped].last_complete_unix.is_some(), "{peers:?}");
    assert_eq!(peers[&wiped].last_error, None);
    for t in tasks {
        t.abort();
    }
}

/// Node 1's replica of a three-node ring, on `engine`.
fn replica_of_node_1(engine: Arc<MemEngine>) -> Replica<Arc<MemEngine>> {
    let ring: Arc<dyn Partitioner + Send + Sync> = Arc::new(
        ConsistentHashRing::builder()
            .vnodes(8)
            .nodes((1..=3).map(NodeId))
            .build()
            .unwrap(),
    );
    Replica::new(
        NodeId(1),
        engine,
        Arc::new(MemEngine::new()),
        &kv_coordinator::ReplicaSettings::default(),
        ring,
    )
    .unwrap()
}

#[test]
fn receiving_many_states_equals_receiving_them_one_by_one() {
    let make = || replica_of_node_1(Arc::new(MemEngine::new()));
    let (one_by_one, batched) = (make(), make());
    let mut items = Vec::new();
    for i in 0..40u32 {
        let key = format!("k{}", i % 13).into_bytes();
        let mut state = kv_coordinator::Siblings::new();
        state
            .update(
                &kv_clock::VectorClock::new(),
                NodeId(u64::from(i % 3) + 1),
                Some(i.to_le_bytes().to_vec()),
                0,
            )
            .unwrap();
        // Every fifth state is a hint for node 9, every seventh garbage.
        let hint = (i % 5 == 0).then_some(NodeId(9));
        let bytes = if i % 7 == 0 {
            vec![0xff, 0x00]
        } else {
            state.to_bytes()
        };
        items.push((key, bytes, hint));
    }
    let singles: Vec<bool> = items
        .iter()
        .map(|(k, s, h)| one_by_one.receive(k, s, *h).is_ok())
        .collect();
    let many: Vec<bool> = batched
        .receive_many(&items)
        .iter()
        .map(Result::is_ok)
        .collect();
    assert_eq!(singles, many);
    assert!(many.iter().any(|ok| !ok), "garbage is refused per item");
    assert_eq!(
        one_by_one.scan_states().unwrap(),
        batched.scan_states().unwrap()
    );
    assert_eq!(one_by_one.hints().len(), batched.hints().len());
    assert!(!batched.hints().is_empty());
    // The anti-entropy trees agree too.
    for peer in [NodeId(2), NodeId(3)] {
        let a = one_by_one.with_tree(peer, |t| t.root());
        let b = batched.with_tree(peer, |t| t.root());
        assert_eq!(a, b, "tree for {peer}");
    }
}

#[test]
fn coordinating_many_writes_equals_coordinating_them_one_by_one() {
    let engine = Arc::new(MemEngine::new());
    let make = replica_of_node_1;
    let (one_by_one, batched) = (make(Arc::new(MemEngine::new())), make(engine.clone()));
    let prune = kv_clock::PrunePolicy::default();
    // Keys repeat within the batch. Deletes, and every third write,
    // carry a context that covers every earlier write of their key (the
    // i-th write gets dot counter i + 1: one node-wide sequence); the rest
    // are blind and become siblings.
    let mut updates = Vec::new();
    for i in 0..30u32 {
        let key = format!("k{}", i % 7).into_bytes();
        let value = (i % 4 != 0).then(|| i.to_le_bytes().to_vec());
        let earlier = u64::from(i);
        let context = if value.is_none() || i % 3 == 0 {
            kv_clock::VectorClock::from_counters([(NodeId(1), earlier)])
        } else {
            kv_clock::VectorClock::new()
        };
        updates.push(kv_coordinator::Update {
            key,
            value,
            context,
            write: None,
            expires: None,
        });
    }
    let singles: Vec<_> = updates
        .iter()
        .map(|u| {
            one_by_one
                .coordinate(&u.key, u.value.clone(), &u.context, 10, &prune)
                .unwrap()
        })
        .collect();
    let many: Vec<_> = batched
        .coordinate_many(updates, 10, &prune)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for ((s_state, s_dot), (m_state, m_dot)) in singles.iter().zip(&many) {
        assert_eq!(s_dot, m_dot);
        assert_eq!(s_state, m_state);
    }
    let states = |r: &Replica<Arc<MemEngine>>| -> Vec<(Vec<u8>, kv_coordinator::Siblings)> {
        r.scan_states()
            .unwrap()
            .into_iter()
            .map(|(k, b)| (k, kv_coordinator::Siblings::from_bytes(&b).unwrap()))
            .collect()
    };
    assert_eq!(states(&one_by_one), states(&batched));
    // The tombstone candidates are exactly the keys holding only deletes,
    // in both, and again after a restart on the same engine.
    let expected: Vec<Vec<u8>> = states(&batched)
        .into_iter()
        .filter(|(_, s)| !s.is_empty() && s.values().all(Option::is_none))
        .map(|(k, _)| k)
        .collect();
    assert!(expected.contains(&b"k0".to_vec()), "{expected:?}");
    assert_eq!(one_by_one.tombstone_keys(), expected);
    assert_eq!(batched.tombstone_keys(), expected);
    drop(batched);
    assert_eq!(make(engine).tombstone_keys(), expected);
}

#[test]
fn an_exchange_asked_by_a_stranger_allocates_no_tree() {
    let engine = Arc::new(MemEngine::new());
    let replica = replica_of_node_1(engine);
    let kept = replica.trees_kept();
    // A well-formed first round of an exchange, from ids that share no
    // key with node 1.
    let mut exchange = kv_merkle::Exchange::new(replica.merkle_leaves(), 8).unwrap();
    let empty = kv_merkle::MerkleTree::new(replica.merkle_leaves()).unwrap();
    let kv_merkle::Step::Send(compare) = exchange.poll(&empty).unwrap() else {
        panic!("an exchange starts by sending");
    };
    let request = kv_merkle::Message::Compare(compare).encode();
    for stranger in 1_000..1_100 {
        replica.answer_exchange(NodeId(stranger), &request).unwrap();
    }
    assert_eq!(replica.trees_kept(), kept, "no tree per made-up id");
}

#[tokio::test(start_paused = true)]
async fn replicas_get_a_write_while_its_coordinator_still_stores_it() {
    let c = Cluster::new(3, Config::default());
    let key = b"overlap";
    let replicas = c.replicas(key);
    let (disk, _) = c.disks[(replicas[0].0 - 1) as usize].clone();
    // The coordinator's disk stalls. (Time stands still meanwhile: a
    // blocking write keeps the paused clock from advancing, so the test
    // yields to the other tasks instead of sleeping.)
    disk.hold_writes(true);
    // Released however the test ends: a held write would keep the runtime
    // from shutting down after a failed assertion.
    struct Release(Engine);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.hold_writes(false);
        }
    }
    let _release = Release(disk.clone());
    let put = c.node(replicas[0]).put(key, b"v", b"", None);
    tokio::pin!(put);
    let mut yields = 0;
    // The others store the new version meanwhile: the two waits overlap.
    while replicas[1..].iter().any(|&r| c.stored(r, key).is_empty()) {
        assert!(yields < 10_000, "the replicas never got the write");
        tokio::select! {
            biased;
            result = &mut put => panic!("answered before its coordinator stored it: {result:?}"),
            () = tokio::task::yield_now() => yields += 1,
        }
    }
    // The answer waits for the coordinator's own copy.
    for _ in 0..1_000 {
        tokio::select! {
            biased;
            result = &mut put => panic!("answered before its coordinator stored it: {result:?}"),
            () = tokio::task::yield_now() => {}
        }
    }
    assert!(
        disk.get(key).unwrap().is_none(),
        "the coordinator's write waits"
    );
    disk.hold_writes(false);
    put.await.unwrap();
    assert_eq!(c.stored(replicas[0], key), vec![b"v".to_vec()]);
}

/// A replica that lost its disk is made whole by anti-entropy in both
/// directions (a peer pushes to it; it pulls from a peer), in many small
/// pages, none above its byte budget but for a single state, and the
/// outcome is kept per peer.
#[tokio::test(start_paused = true)]
async fn a_wiped_replica_is_repaired_page_by_page_in_both_directions() {
    let config = Config {
        anti_entropy_page_bytes: 4 << 10,
        anti_entropy_page_scan: 64,
        repair_keys_per_sec: 0,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config);
    let keys: Vec<Vec<u8>> = (0..600)
        .map(|i| format!("page:{i:04}").into_bytes())
        .collect();
    for key in &keys {
        c.coordinator(key)
            .put(key, &[7u8; 100], b"", Some(3))
            .await
            .unwrap();
    }
    let wiped = NodeId(3);
    c.wipe(wiped);
    let held = |c: &Cluster| {
        keys.iter()
            .filter(|k| !c.node(wiped).replica().state(k).unwrap().is_empty())
            .count()
    };
    assert_eq!(held(&c), 0);
    // Node 1 pushes what it shares with node 3.
    let mut pages = 0;
    let mut last = RepairReport::default();
    let report = c
        .node(NodeId(1))
        .anti_entropy_observed(wiped, 64, |r| {
            pages += 1;
            assert!(r.keys_pushed >= last.keys_pushed, "totals only grow");
            last = *r;
        })
        .await
        .unwrap();
    assert!(report.keys_pushed >= 500, "{report:?}");
    assert_eq!(report.keys_pulled, 0, "the wiped node had nothing to give");
    // ~80 KB of states; the pushing side reads its own states in pages of
    // four times the peer's budget (16 KiB): several pages, not one call.
    assert!(pages > 4, "{pages} pages");
    let seen = c.node(NodeId(1)).anti_entropy_peers()[&wiped].clone();
    assert!(seen.last_complete_unix.is_some() && seen.last_error.is_none());
    assert_eq!(seen.keys_repaired, report.keys_pushed as u64);
    assert!(seen.divergent_buckets > 0);
    // Every key of the cluster is replicated on all three nodes (N=3), so
    // node 3 is whole again already; wipe it once more and let it pull.
    assert_eq!(held(&c), keys.len());
    c.wipe(wiped);
    let report = c
        .node(wiped)
        .anti_entropy_with(NodeId(2), 64)
        .await
        .unwrap();
    assert_eq!(report.keys_changed, keys.len(), "{report:?}");
    assert_eq!(report.keys_pushed, 0, "{report:?}");
    assert_eq!(held(&c), keys.len());
    c.assert_agree(&keys, "after paged repair");
    // A second exchange finds nothing to do.
    let again = c
        .node(wiped)
        .anti_entropy_with(NodeId(2), 64)
        .await
        .unwrap();
    assert_eq!((again.buckets, again.keys_pulled), (0, 0), "{again:?}");
}

/// Repair is paced: moving 2,000 keys at 1,000 keys/s takes about two
/// seconds of (simulated) time, not none.
#[tokio::test(start_paused = true)]
async fn repair_keeps_to_its_pace() {
    let config = Config {
        anti_entropy_page_bytes: 8 << 10,
        repair_keys_per_sec: 1_000,
        ..Config::default()
    };
    let mut c = Cluster::new(3, config);
    let keys: Vec<Vec<u8>> = (0..2_000)
        .map(|i| format!("pace:{i:04}").into_bytes())
        .collect();
    for key in &keys {
        c.coordinator(key)
            .put(key, b"v", b"", Some(3))
            .await
            .unwrap();
    }
    c.wipe(NodeId(2));
    let started = tokio::time::Instant::now();
    let report = c
        .node(NodeId(2))
        .anti_entropy_with(NodeId(1), 64)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.keys_changed, keys.len());
    assert!(
        took >= Duration::from_millis(1_500) && took <= Duration::from_millis(2_500),
        "2,000 keys at 1,000/s took {took:?}"
    );
}
