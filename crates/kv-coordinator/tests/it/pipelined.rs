//! Coordinated writes while the engine syncs: a batch of writes is made
//! and announced before its sync, so the next batch is made while the
//! first one syncs, and each write is acknowledged only after its own.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use kv_coordinator::sim::{SimNetwork, SimTransport};
use kv_coordinator::{ClientHandler, Config, Coordinator, Replica, ReplicaSettings};
use kv_core::{
    Durable, DurableSignal, NodeId, ScanIter, SeqNo, StorageEngine, StorageError, WriteBatch,
};
use kv_ring::ConsistentHashRing;
use kv_testkit::MemEngine;
use parking_lot::Mutex;

/// An engine whose deferred writes wait for the test to release their
/// sync, as `kv-lsm` under `always` waits for its syncer: `get_latest`
/// sees them at once, `get` once released.
#[derive(Default)]
struct HeldSyncs {
    /// Every write, synced or not.
    latest: MemEngine,
    /// What readers see: synced writes.
    synced: MemEngine,
    waiting: Mutex<Vec<(WriteBatch, DurableSignal)>>,
}

impl HeldSyncs {
    fn waiting(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Ends every waiting sync with `result` (a failed one makes nothing
    /// visible).
    fn release(&self, result: Result<(), StorageError>) {
        for (batch, signal) in self.waiting.lock().drain(..) {
            if result.is_ok() {
                self.synced.write(batch).unwrap();
            }
            signal.complete(result.clone());
        }
    }
}

impl StorageEngine for HeldSyncs {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.synced.get(key)
    }

    fn get_latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.latest.get(key)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.latest.write(batch.clone())?;
        self.synced.write(batch)
    }

    fn write_deferred(&self, batch: WriteBatch) -> Result<Durable, StorageError> {
        self.latest.write(batch.clone())?;
        let (durable, signal) = Durable::pending();
        self.waiting.lock().push((batch, signal));
        Ok(durable)
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<ScanIter<'_>, StorageError> {
        self.synced.scan(start, end)
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn last_sequence(&self) -> SeqNo {
        self.synced.last_sequence()
    }

    fn inline_reads(&self) -> bool {
        true
    }

    fn inline_writes(&self) -> bool {
        true
    }
}

type Engine = Arc<HeldSyncs>;

fn one_node(data: Engine) -> Arc<Coordinator<Engine, SimTransport<Engine>, ConsistentHashRing>> {
    let network = SimNetwork::new(7);
    let ring = Arc::new(
        ConsistentHashRing::builder()
            .vnodes(8)
            .nodes([NodeId(1)])
            .build()
            .unwrap(),
    );
    let config = Config {
        n: 1,
        w: 1,
        r: 1,
        ..Config::default()
    };
    let settings = ReplicaSettings {
        n: 1,
        ..ReplicaSettings::default()
    };
    let replica = Arc::new(
        Replica::new(
            NodeId(1),
            data,
            Arc::new(HeldSyncs::default()),
            &settings,
            ring.clone(),
        )
        .unwrap(),
    );
    network.attach(replica.clone());
    let transport = Arc::new(SimTransport::new(NodeId(1), network.clone()));
    let node =
        Arc::new(Coordinator::new(config, replica, transport, ring, network.clone()).unwrap());
    let handler: Arc<dyn ClientHandler> = node.clone();
    network.attach_handler(NodeId(1), Arc::downgrade(&handler));
    node
}

/// Lets spawned tasks run (simulated time) until `done` holds, at most a
/// simulated second.
async fn until(done: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    done()
}

#[tokio::test(start_paused = true)]
async fn the_next_write_is_made_while_the_last_one_syncs_and_each_waits_for_its_own() {
    let engine = Arc::new(HeldSyncs::default());
    let node = one_node(engine.clone());
    let put = |key: &'static [u8]| {
        let node = node.clone();
        tokio::spawn(async move { node.put(key, b"v", &[], None).await })
    };
    let first = put(b"a");
    assert!(
        until(|| engine.waiting() == 1).await,
        "the first write is made"
    );
    // Its sync is held: the second write is made all the same (it used to
    // queue behind the first batch's sync), and neither is acknowledged.
    let second = put(b"b");
    assert!(
        until(|| engine.waiting() == 2).await,
        "the second write is made while the first one syncs"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert_eq!(node.get(b"a", None).await.unwrap().values.len(), 0);
    engine.release(Ok(()));
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(
        node.get(b"b", None).await.unwrap().values,
        vec![b"v".to_vec()]
    );
    // A failed sync fails the write it held.
    let third = put(b"c");
    assert!(until(|| engine.waiting() == 1).await);
    engine.release(Err(StorageError::Io("fsync failed".into())));
    let err = third.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("fsync failed"), "{err}");
    assert_eq!(node.get(b"c", None).await.unwrap().values.len(), 0);
}
