//! Ring changes in one process: a node joins while writes go on and serves
//! its ranges at once; old owners hand off what they no longer replicate;
//! a node leaves and nothing is lost.

use kv_core::{NodeId, Partitioner};
use kv_server::RunningNode;
use kv_server::proto::GetRequest;
use tokio::net::TcpListener;

use crate::{client, cluster, node_config, put};

fn key(i: u32) -> Vec<u8> {
    format!("member:{i:04}").into_bytes()
}

/// Whether `node` holds `value` for `key` in its own store.
fn holds(node: &RunningNode, key: &[u8], value: &[u8]) -> bool {
    node.coordinator()
        .replica()
        .state(key)
        .unwrap()
        .values()
        .any(|v| v.as_deref() == Some(value))
}

/// Every key a node stores is one it replicates under its ring.
fn holds_only_its_own(node: &RunningNode) -> bool {
    let replica = node.coordinator().replica();
    replica
        .scan_states()
        .unwrap()
        .iter()
        .all(|(k, _)| replica.replicates(k))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_its_ranges_and_another_leaves_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, dir.path()).await;
    let mut c = client(&nodes[0]).await;
    for i in 0..300u32 {
        put(&mut c, &key(i), &i.to_le_bytes(), b"").await;
    }

    // Node 4 knows only a seed; the ring comes from it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = kv_server::NodeConfig {
        seeds: vec![nodes[0].addr.to_string()],
        ..node_config(NodeId(4), dir.path())
    };
    let joiner = kv_server::start(config, listener).await.unwrap();
    assert_eq!(joiner.cluster().epoch(), 0);

    // Writes go on through node 2 while node 4 joins.
    let mut writer_client = client(&nodes[1]).await;
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 300..500u32 {
            let reply = writer_client
                .put(kv_server::proto::PutRequest {
                    key: key(i),
                    value: i.to_le_bytes().to_vec(),
                    context: vec![],
                    w: 0,
                    ..Default::default()
                })
                .await;
            if reply.is_ok() {
                acked.push(i);
            }
        }
        acked
    });
    let reply = joiner.cluster().join().await.unwrap();
    assert_eq!(reply.epoch, 2);
    assert!(reply.ranges > 0);
    assert!(
        reply.keys_streamed >= 150,
        "node 4 streams its share of 300 keys from every replica ({} keys)",
        reply.keys_streamed
    );
    let mut acked: Vec<u32> = (0..300).collect();
    acked.extend(writer.await.unwrap());
    assert!(acked.len() > 450, "writes kept succeeding during the join");

    // The new ring reached every node before join returned.
    nodes.push(joiner);
    for n in &nodes {
        assert_eq!(n.cluster().epoch(), 2, "node {}", n.id);
    }
    // Node 4 holds, in its own store, every key written before the join
    // that it now replicates: it can answer reads as an owner at once.
    let ring = nodes[3].coordinator().ring().current();
    let mut owned = 0;
    for i in 0..300u32 {
        if ring
            .preference_list(&key(i), 3)
            .unwrap()
            .contains(&NodeId(4))
        {
            owned += 1;
            assert!(holds(&nodes[3], &key(i), &i.to_le_bytes()), "key {i}");
        }
    }
    assert!(owned > 150, "node 4 replicates its share ({owned} of 300)");

    // Old owners hand off what they no longer replicate, then drop it.
    for n in &nodes {
        let report = n.cluster().handoff_pass().await.unwrap();
        assert_eq!(report.remaining, 0, "node {}", n.id);
    }
    let moved: u64 = nodes.iter().map(|n| n.cluster().handed_off()).sum();
    assert!(moved > 0, "a join leaves old owners with keys to hand off");
    for n in &nodes {
        assert!(holds_only_its_own(n), "node {}", n.id);
    }
    // Every acknowledged write is on all three of its replicas.
    for &i in &acked {
        for replica in ring.preference_list(&key(i), 3).unwrap() {
            let node = &nodes[replica.0 as usize - 1];
            assert!(
                holds(node, &key(i), &i.to_le_bytes()),
                "key {i} on node {replica}"
            );
        }
    }

    // Node 2 leaves: its ranges go to the others first.
    let leaver = nodes.remove(1);
    let reply = leaver.cluster().leave().await.unwrap();
    assert_eq!(reply.epoch, 3);
    assert!(*leaver.left().borrow());
    assert!(
        leaver
            .coordinator()
            .replica()
            .scan_states()
            .unwrap()
            .is_empty(),
        "a node that left holds nothing"
    );
    leaver.shutdown().await.unwrap();
    for n in &nodes {
        assert_eq!(n.cluster().epoch(), 3, "node {}", n.id);
    }
    let ring = nodes[0].coordinator().ring().current();
    assert!(!ring.nodes().contains(&NodeId(2)));
    for &i in &acked {
        for replica in ring.preference_list(&key(i), 3).unwrap() {
            let node = nodes.iter().find(|n| n.id == replica).unwrap();
            assert!(
                holds(node, &key(i), &i.to_le_bytes()),
                "key {i} on node {replica} after the leave"
            );
        }
    }
    // And clients read it all through any remaining node.
    let mut c = client(&nodes[2]).await;
    for &i in acked.iter().step_by(7) {
        let got = c.get(GetRequest { key: key(i), r: 3 }).await.unwrap();
        assert_eq!(got.into_inner().values, vec![i.to_le_bytes().to_vec()]);
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_changes_are_refused_when_they_make_no_sense() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(1, dir.path()).await;
    let refused = nodes[0].cluster().join().await.unwrap_err();
    assert!(
        matches!(
            refused,
            kv_server::cluster::ClusterError::AlreadyMember { .. }
        ),
        "{refused:?}"
    );
    let status = tonic::Status::from(refused);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("already owns"), "{status}");
    let status = tonic::Status::from(nodes[0].cluster().leave().await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("last node"), "{status}");
    assert_eq!(nodes[0].cluster().epoch(), 1);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
