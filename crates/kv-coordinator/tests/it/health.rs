//! A node whose storage refuses writes (a full disk, a failed sync) steps
//! aside: it coordinates nothing, its peers' writes meet W without it, and
//! once its storage is back it gets what it missed.

use kv_coordinator::Config;
use kv_core::{NodeId, StorageEngine};

use super::Cluster;

#[tokio::test(start_paused = true)]
async fn a_node_whose_storage_fails_steps_aside_and_writes_go_on() {
    let c = Cluster::new(5, Config::default());
    let sick = NodeId(2);
    let (sick_data, _) = c.disks[1].clone();
    sick_data.refuse_writes(Some("no space left on device".into()));
    let keys: Vec<Vec<u8>> = (0..120).map(|i| format!("h:{i}").into_bytes()).collect();
    let mut coordinated_by_sick = 0;
    for (i, key) in keys.iter().enumerate() {
        if c.replicas(key)[0] == sick {
            coordinated_by_sick += 1;
        }
        // Through the sick node itself, and through a healthy one.
        let via = if i % 2 == 0 { sick } else { NodeId(4) };
        let written = c
            .node(via)
            .put(key, format!("v{i}").as_bytes(), &[], None)
            .await
            .unwrap_or_else(|e| panic!("write {i} through {via} failed: {e}"));
        assert_ne!(written.dot.actor.node(), sick, "the sick node coordinated");
    }
    assert!(
        coordinated_by_sick > 0,
        "some keys are the sick node's to coordinate"
    );
    assert!(
        keys.iter().all(|k| sick_data.get(k).unwrap().is_none()),
        "nothing reached the sick node's storage"
    );
    // Every value reads back, through any node, the sick one included.
    for (i, key) in keys.iter().enumerate() {
        let via = NodeId(1 + (i as u64 % 5));
        let got = c.node(via).get(key, Some(2)).await.unwrap();
        assert_eq!(got.values, vec![format!("v{i}").into_bytes()], "key {i}");
    }
    // The disk is freed: hints bring the node what it missed.
    sick_data.refuse_writes(None);
    let mut delivered = 0;
    for node in &c.nodes {
        delivered += node.deliver_hints(10_000).await.unwrap();
    }
    assert!(delivered > 0);
    let missed = keys
        .iter()
        .filter(|k| c.replicas(k).contains(&sick) && sick_data.get(k).unwrap().is_none())
        .count();
    assert_eq!(missed, 0, "every key the sick node replicates reached it");
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_does_not_answer_is_replaced_by_a_hinted_fallback_within_the_request() {
    use kv_coordinator::Metrics;
    let c = Cluster::new(5, Config::default());
    let key = b"hedged";
    let replicas = c.replicas(key);
    let coordinator = c.coordinator(key);
    // A replica that is alive as far as anyone knows but never answers
    // (a paused process): W=3 needs a third node.
    let paused = replicas[2];
    c.network.set_paused(paused, true);
    let started = tokio::time::Instant::now();
    let written = coordinator.put(key, b"v", &[], Some(3)).await;
    assert!(written.is_ok(), "{written:?}");
    assert!(
        started.elapsed() < coordinator.config().request_timeout,
        "met W before the request timed out"
    );
    assert_eq!(
        Metrics::get(&coordinator.metrics().replica_writes_hedged),
        1
    );
    // The fallback keeps the write for the paused replica, and delivers it
    // once the replica answers again.
    c.network.set_paused(paused, false);
    let mut delivered = 0;
    for node in &c.nodes {
        delivered += node.deliver_hints(100).await.unwrap();
    }
    assert_eq!(delivered, 1);
    let state = c.node(paused).replica().state(key).unwrap();
    assert_eq!(state.values().flatten().count(), 1);
}

#[test]
fn a_replica_batch_into_a_poisoned_engine_fails_as_poisoned_not_as_a_passing_io_error() {
    use std::sync::Arc;

    use kv_coordinator::{Error, ErrorKind, Replica, ReplicaSettings};
    use kv_core::StorageError;
    use kv_testkit::MemEngine;

    let data = Arc::new(MemEngine::new());
    let ring = Arc::new(
        kv_ring::ConsistentHashRing::builder()
            .nodes([NodeId(1)])
            .build()
            .unwrap(),
    );
    let replica = Replica::new(
        NodeId(1),
        data.clone(),
        Arc::new(MemEngine::new()),
        &ReplicaSettings::default(),
        ring,
    )
    .unwrap();
    let (state, _) = replica
        .coordinate(
            b"a",
            Some(b"1".to_vec()),
            &kv_clock::VectorClock::default(),
            10,
            &kv_clock::PrunePolicy::default(),
        )
        .unwrap();
    data.refuse_writes(Some("no space left on device".into()));
    let items = vec![
        (b"a".to_vec(), state.to_bytes(), None),
        (b"b".to_vec(), state.to_bytes(), None),
    ];
    let results = replica.receive_many(&items);
    assert_eq!(results.len(), 2);
    for result in results {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Storage(StorageError::Poisoned(ref m)) if m.contains("no space")),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::LocalStorage);
        assert!(err.is_retryable(), "another node may take the write");
    }
}
