//! Ring changes in one process: a node joins while writes go on and serves
//! its ranges at once; old owners hand off what they no longer replicate;
//! a node leaves and nothing is lost; concurrent ring changes never
//! install one epoch twice; remove and replace refuse what makes no sense.

use kv_core::{NodeId, Partitioner};
use kv_server::RunningNode;
use kv_server::cluster::ClusterError;
use kv_server::proto::{ChangeReply, GetRequest};
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

/// Starts node `id` outside the ring, knowing node `seed`'s address.
async fn outsider(id: u64, seed: &RunningNode, dir: &std::path::Path) -> RunningNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = kv_server::NodeConfig {
        seeds: vec![seed.addr.to_string()],
        ..node_config(NodeId(id), dir)
    };
    kv_server::start(config, listener).await.unwrap()
}

/// Runs `change` until it succeeds (a lost race releases its promises a
/// moment later); fails after 40 tries.
async fn until_done<F, Fut>(what: &str, mut change: F) -> ChangeReply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<ChangeReply, ClusterError>>,
{
    for _ in 0..40 {
        match change().await {
            Ok(reply) => return reply,
            Err(ClusterError::Conflict(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what} kept conflicting");
}

/// Of two changes started together on the same ring, at most one installs
/// the next epoch; the other is refused before it moves anything, and the
/// message names the change that holds the epoch.
fn at_most_one_won(
    a: &Result<ChangeReply, ClusterError>,
    b: &Result<ChangeReply, ClusterError>,
    epoch: u64,
) -> usize {
    for r in [a, b] {
        match r {
            Ok(reply) => assert_eq!(reply.epoch, epoch),
            Err(ClusterError::Conflict(message)) => {
                assert!(message.contains("retry"), "{message}")
            }
            Err(e) => panic!("a change failed otherwise: {e}"),
        }
    }
    let won = usize::from(a.is_ok()) + usize::from(b.is_ok());
    let show = |r: &Result<ChangeReply, ClusterError>| match r {
        Ok(_) => "installed".to_string(),
        Err(e) => format!("refused ({e})"),
    };
    println!("epoch {epoch}: {} / {}", show(a), show(b));
    assert!(won <= 1, "two changes installed epoch {epoch}");
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_leaves_and_removes_never_install_one_epoch_twice() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let mut c = client(&nodes[0]).await;
    for i in 0..200u32 {
        put(&mut c, &key(i), &i.to_le_bytes(), b"").await;
    }
    let n4 = outsider(4, &nodes[0], dir.path()).await;
    let n5 = outsider(5, &nodes[0], dir.path()).await;
    // Two joins at once.
    let (a, b) = tokio::join!(n4.cluster().join(), n5.cluster().join());
    at_most_one_won(&a, &b, 2);
    if a.is_err() {
        until_done("join of 4", || n4.cluster().join()).await;
    }
    if b.is_err() {
        until_done("join of 5", || n5.cluster().join()).await;
    }
    let mut epoch = 3;
    assert_eq!(n5.cluster().epoch().max(n4.cluster().epoch()), epoch);

    // Node 5 dies for good; nodes 1 and 2 both remove it at once.
    n5.shutdown().await.unwrap();
    let (a, b) = tokio::join!(
        nodes[0].cluster().remove(NodeId(5)),
        nodes[1].cluster().remove(NodeId(5))
    );
    if at_most_one_won(&a, &b, epoch + 1) == 0 {
        until_done("removal of 5", || nodes[0].cluster().remove(NodeId(5))).await;
    }
    epoch += 1;
    // At once: node 4 leaves, node 6 joins.
    let n6 = outsider(6, &nodes[0], dir.path()).await;
    let (a, b) = tokio::join!(n4.cluster().leave(), n6.cluster().join());
    at_most_one_won(&a, &b, epoch + 1);
    if a.is_err() {
        until_done("leave of 4", || n4.cluster().leave()).await;
    }
    if b.is_err() {
        until_done("join of 6", || n6.cluster().join()).await;
    }
    epoch += 2;
    assert_eq!(epoch, 6, "five changes, five new epochs");
    // Every node holds the same ring, at epoch 6.
    for n in nodes.iter().chain([&n6]) {
        let mut state = n.cluster().ring_state();
        for _ in 0..100 {
            if state.epoch == epoch {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            state = n.cluster().ring_state();
        }
        assert_eq!(state, nodes[0].cluster().ring_state(), "node {}", n.id);
        let ids: Vec<u64> = state.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 6]);
    }
    // Nothing was lost on the way.
    let mut c = client(&nodes[2]).await;
    for i in 0..200u32 {
        let got = c.get(GetRequest { key: key(i), r: 3 }).await.unwrap();
        assert_eq!(got.into_inner().values, vec![i.to_le_bytes().to_vec()]);
    }
    n4.shutdown().await.unwrap();
    n6.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_and_replace_refuse_what_makes_no_sense() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let code_and = |e: ClusterError| {
        let s = tonic::Status::from(e);
        (s.code(), s.message().to_string())
    };
    let (code, message) = code_and(nodes[0].cluster().remove(NodeId(1)).await.unwrap_err());
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("leave"), "{message}");
    let (code, message) = code_and(nodes[0].cluster().remove(NodeId(9)).await.unwrap_err());
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("owns no ranges"), "{message}");
    // A node that answers is not gone.
    let (code, message) = code_and(nodes[0].cluster().remove(NodeId(2)).await.unwrap_err());
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("still answers"), "{message}");
    let n4 = outsider(4, &nodes[0], dir.path()).await;
    let (code, message) = code_and(n4.cluster().replace(NodeId(3)).await.unwrap_err());
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("still answers"), "{message}");
    let (code, message) = code_and(n4.cluster().replace(NodeId(9)).await.unwrap_err());
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(message.contains("nothing to replace"), "{message}");
    let (code, _) = code_and(nodes[1].cluster().replace(NodeId(3)).await.unwrap_err());
    assert_eq!(
        code,
        tonic::Code::FailedPrecondition,
        "a member replaces nobody"
    );
    for n in &nodes {
        assert_eq!(n.cluster().epoch(), 1, "nothing changed");
    }
    n4.shutdown().await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_announce_their_versions_and_one_too_far_is_refused_clearly() {
    use kv_server::proto::RingQuery;
    use kv_server::version::{FORMAT_VERSION, WIRE_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    // Every member's versions reach the others with its gossip.
    let mut seen = false;
    for _ in 0..100 {
        let status = nodes[0].cluster().status().unwrap();
        seen = status.members.len() == 3
            && status
                .members
                .iter()
                .all(|m| (m.wire_version, m.format_version) == (WIRE_VERSION, FORMAT_VERSION));
        if seen {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "{:?}", nodes[0].cluster().status().unwrap().members);
    let call = |agent: &'static str| {
        let addr = nodes[0].addr;
        async move {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .user_agent(agent)
                .unwrap();
            let mut client = kv_server::proto::internal_client::InternalClient::new(
                endpoint.connect().await.unwrap(),
            );
            client.get_ring(RingQuery { known_epoch: 0 }).await
        }
    };
    // A release two ahead: refused, saying why and what to do.
    let refused = call("kv-node/9.0.0 wire/4 format/4").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("wire version 4")
            && refused.message().contains("one release at a time"),
        "{refused}"
    );
    // The release before (silent about versions) and the next are served.
    assert!(call("tonic/0.14").await.is_ok());
    assert!(call("kv-node/0.2.0 wire/3 format/2").await.is_ok());
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
