//! Nodes talking real gRPC: in one process on loopback, as real `kvd`
//! processes, and on turmoil's simulated network.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

mod batch;
// Named to sort early: libtest starts tests in name order, and the two
// simulations (tens of seconds each) then run beside each other first
// instead of last, alone, while a core idles.
mod cluster_sim;
mod expiry;
mod listing;
mod membership;
mod monitoring;
mod operations;
mod process;
mod sdk;
mod security;
mod tracing;
mod watch;

use kv_core::NodeId;
use kv_lsm::Durability;
use kv_server::proto::internal_client::InternalClient;
use kv_server::proto::kv_client::KvClient;
use kv_server::proto::{
    DeleteRequest, FetchRequest, GetReply, GetRequest, GossipRequest, MerkleRequest, PutRequest,
    ReplicateBatchRequest, ReplicateRequest, RingState,
};
use kv_server::{NodeConfig, RunningNode};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Test settings: small memtable and ring, fast gossip.
fn test_settings(config: NodeConfig) -> NodeConfig {
    NodeConfig {
        durability: Durability::Always,
        vnodes: 64,
        memtable_bytes: 1 << 20,
        ..config
    }
    .with_gossip_interval(std::time::Duration::from_millis(100))
}

/// A node outside the initial cluster, with the test settings.
fn node_config(id: NodeId, dir: &std::path::Path) -> NodeConfig {
    test_settings(NodeConfig::new(id, dir.join(format!("n{}", id.0))))
}

async fn cluster(size: u64, dir: &std::path::Path) -> Vec<RunningNode> {
    kv_server::start_local(size, dir, test_settings)
        .await
        .unwrap()
}

async fn client(node: &RunningNode) -> KvClient<Channel> {
    KvClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap()
}

/// A put at the default quorum; returns the new context.
async fn put(c: &mut KvClient<Channel>, key: &[u8], value: &[u8], context: &[u8]) -> Vec<u8> {
    c.put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        context: context.to_vec(),
        w: 0,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .context
}

/// A get at the default quorum.
async fn get(c: &mut KvClient<Channel>, key: &[u8]) -> GetReply {
    c.get(GetRequest {
        key: key.to_vec(),
        r: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_through_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(client(n).await);
    }
    for i in 0..30u32 {
        let key = format!("key:{i}").into_bytes();
        put(&mut clients[i as usize % 3], &key, &i.to_le_bytes(), b"").await;
        for c in clients.iter_mut() {
            let got = get(c, &key).await;
            assert_eq!(got.values, vec![i.to_le_bytes().to_vec()], "key {i}");
        }
    }
    // Concurrent writes with one context give siblings; the merged context
    // resolves them; a delete removes the key.
    let key = b"cart";
    put(&mut clients[0], key, b"v0", b"").await;
    let read = get(&mut clients[0], key).await;
    for v in [&b"alice"[..], b"bob"] {
        put(&mut clients[0], key, v, &read.context).await;
    }
    let both = get(&mut clients[1], key).await;
    assert_eq!(both.values.len(), 2);
    put(&mut clients[2], key, b"merged", &both.context).await;
    let merged = get(&mut clients[0], key).await;
    assert_eq!(merged.values, vec![b"merged".to_vec()]);
    clients[1]
        .delete(DeleteRequest {
            key: key.to_vec(),
            context: merged.context,
            w: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(get(&mut clients[2], key).await.values.is_empty());
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let mut c = client(&nodes[0]).await;
    let cases = [
        PutRequest {
            key: vec![],
            value: b"v".to_vec(),
            context: vec![],
            w: 0,
            ..Default::default()
        },
        PutRequest {
            key: vec![b'k'; 70 << 10],
            value: b"v".to_vec(),
            context: vec![],
            w: 0,
            ..Default::default()
        },
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            context: vec![0xff, 0xee],
            w: 0,
            ..Default::default()
        },
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            context: vec![],
            w: 7,
            ..Default::default()
        },
        PutRequest {
            key: b"k".to_vec(),
            value: vec![0; (16 << 20) + 1],
            context: vec![],
            w: 0,
            ..Default::default()
        },
    ];
    for case in cases {
        let status = c.put(case).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            status.message()
        );
        assert!(!status.message().is_empty());
    }
    let status = c.get(GetRequest { key: vec![], r: 0 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Garbage between nodes, and a node the ring does not know.
    let mut peer = InternalClient::connect(format!("http://{}", nodes[0].addr))
        .await
        .unwrap();
    // A garbage state in a replica-write batch: that item fails, with a
    // reason.
    let batch = ReplicateBatchRequest {
        items: vec![ReplicateRequest {
            key: b"garbage".to_vec(),
            state: vec![0xde, 0xad],
            hint_for: None,
        }],
    };
    let reply = peer
        .replicate_stream(futures_util::stream::iter([batch]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("one reply per request");
    assert_eq!(reply.errors.len(), 1);
    assert!(!reply.errors[0].is_empty(), "a garbage state is refused");
    let refused = [
        peer.merkle_exchange(MerkleRequest {
            from: 99,
            request: vec![1, 2, 3],
        })
        .await
        .map(|_| ()),
        peer.gossip(GossipRequest {
            message: vec![0xff; 9],
        })
        .await
        .map(|_| ()),
        peer.install_ring(RingState {
            epoch: 99,
            vnodes: 0,
            members: vec![],
        })
        .await
        .map(|_| ()),
        peer.fetch_range(FetchRequest::default()).await.map(|_| ()),
    ];
    for (i, result) in refused.into_iter().enumerate() {
        let status = result.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "case {i}: {status}"
        );
    }
    assert_eq!(nodes[0].cluster().epoch(), 1, "a bad ring is not installed");
    // Still serving.
    put(&mut c, b"k", b"v", b"").await;
    let got = get(&mut c, b"k").await;
    assert_eq!(got.values, vec![b"v".to_vec()]);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A plain HTTP GET (no client library needed).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, dir.path()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    let http = kv_server::http::serve(
        nodes[0].coordinator().clone(),
        nodes[0].cluster().clone(),
        listener,
        kv_server::http::HttpSettings {
            sample_every: std::time::Duration::from_millis(100),
            ..kv_server::http::HttpSettings::default()
        },
    );
    let mut c = client(&nodes[0]).await;
    put(&mut c, b"m", b"v", b"").await;
    get(&mut c, b"m").await;
    let _ = c
        .put(PutRequest {
            key: vec![],
            value: b"v".to_vec(),
            context: vec![],
            w: 0,
            ..Default::default()
        })
        .await;
    // Gossip reports every member alive soon after start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        let metrics = http_get(http_addr, "/metrics").await;
        if metrics.contains("kv_members{state=\"alive\"} 3") {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain; version=0.0.4"));
    assert!(
        metrics.contains("kv_requests_total{op=\"put\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("kv_request_errors_total{op=\"put\"} 1"));
    assert!(metrics.contains("kv_request_duration_seconds_count{op=\"get\"} 1"));
    assert!(metrics.contains("kv_ring_epoch 1"), "{metrics}");
    assert!(metrics.contains("kv_ring_members 3"));
    assert!(metrics.contains("kv_lsm_log_syncs_total"));
    // A fresh engine owes no compaction.
    assert!(
        metrics.contains("kv_lsm_compaction_debt_bytes 0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kv_anti_entropy_last_complete_timestamp_seconds{"),
        "no exchange yet: {metrics}"
    );
    // One exchange with node 2: its time, buckets and repairs per peer.
    nodes[0]
        .coordinator()
        .anti_entropy_with(NodeId(2), 64)
        .await
        .unwrap();
    let metrics = http_get(http_addr, "/metrics").await;
    assert!(
        metrics.contains("kv_anti_entropy_last_complete_timestamp_seconds{peer=\"2\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kv_anti_entropy_divergent_buckets{peer=\"2\"} 0"));
    assert!(metrics.contains("kv_anti_entropy_exchange_failing{peer=\"2\"} 0"));
    let status = http_get(http_addr, "/").await;
    assert!(status.contains("<h1>kv node n1</h1>"), "{status}");
    assert!(status.contains("(this node)"));
    let section = status
        .split("<h2>Anti-entropy</h2>")
        .nth(1)
        .unwrap_or_default();
    let row = section
        .split("<tr><td>n2</td><td>")
        .nth(1)
        .unwrap_or_default();
    assert!(
        row.split("</td>")
            .next()
            .unwrap_or_default()
            .ends_with(" s ago"),
        "{status}"
    );
    // The status page's data: members, requests, and the last minutes'
    // rates, sampled every 100 ms here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // The sampler may have started before the two puts above, so the
    // first interval can already be busy: count the puts made here.
    let mut more_puts = 0;
    let json = loop {
        let response = http_get(http_addr, "/status.json").await;
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let busy = json["activity"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["put"]["per_sec"].as_f64() > Some(0.0)));
        if busy {
            assert!(response.contains("application/json"), "{response}");
            break json;
        }
        // Requests after the first sample make a busy interval.
        let _ = get(&mut c, b"m").await;
        put(&mut c, b"m2", b"v", b"").await;
        more_puts += 1;
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(json["node"], 1);
    assert_eq!(json["healthy"], true);
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["state"] == "alive"), "{json}");
    assert_eq!(json["requests"]["put"]["total"], 2 + more_puts, "{json}");
    assert_eq!(json["requests"]["put"]["errors"], 1);
    assert!(
        json["storage"]["disk_size_bytes"].as_u64() > Some(0),
        "{json}"
    );
    assert_eq!(json["storage"]["compaction_debt_bytes"], 0, "{json}");
    // No warnings, unless the machine's disk is itself nearly full (the
    // page warns below a fifth left): then that one alone.
    let available = json["storage"]["disk_available_bytes"].as_f64().unwrap();
    let size = json["storage"]["disk_size_bytes"].as_f64().unwrap();
    let disk_low = available < 0.2 * size;
    let warnings: Vec<&str> = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    if disk_low {
        assert_eq!(warnings.len(), 1, "{json}");
        assert!(warnings[0].starts_with("The data disk has "), "{json}");
    } else {
        assert!(warnings.is_empty(), "{json}");
    }
    let busy = json["activity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["put"]["per_sec"].as_f64() > Some(0.0))
        .unwrap();
    assert!(busy["put"]["p99_us"].as_u64() > Some(0), "{busy}");
    // The page draws them: a line for puts, and no warnings.
    let page = http_get(http_addr, "/").await;
    assert!(
        page.contains("<h2>Recent activity</h2>") && page.contains("<polyline"),
        "{page}"
    );
    assert_eq!(page.contains("No warnings."), !disk_low, "{page}");
    assert!(page.contains("http-equiv=\"refresh\""));
    assert!(page.contains("compaction debt 0 KiB"), "{page}");
    // A node that goes down shows as a warning once gossip says so: first
    // suspected, then down; with 3 nodes for 3 replicas no node is left to
    // hold hints for it, and the warning says so.
    let down = nodes.pop().unwrap();
    down.shutdown().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page = http_get(http_addr, "/").await;
        if page.contains("Node 3 (") && page.contains("is down as gossip sees it") {
            assert!(
                page.contains("with 3 nodes for 3 replicas no node is left to hold hints"),
                "{page}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    http.abort();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Hints held for a node that is down are counted per target on the
/// status page of the node that holds them, and in its JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_counts_hints_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(4, dir.path()).await;
    let mut pages = Vec::new();
    for n in &nodes {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = kv_server::http::serve(
            n.coordinator().clone(),
            n.cluster().clone(),
            listener,
            kv_server::http::HttpSettings::default(),
        );
        pages.push((addr, task));
    }
    let mut c = client(&nodes[0]).await;
    nodes.pop().unwrap().shutdown().await.unwrap();
    // Writes for node 4's keys go to fallbacks, with hints for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut i = 0;
    let holder = 'found: loop {
        for _ in 0..20 {
            // Until gossip says node 4 is down, a write forwarded to it
            // fails: those are not what this counts.
            let _ = c
                .put(PutRequest {
                    key: format!("h{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await;
            i += 1;
        }
        for (addr, _) in &pages[..3] {
            let response = http_get(*addr, "/status.json").await;
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let for_four = json["hints"]["per_target"]
                .as_array()
                .and_then(|t| t.iter().find(|e| e["node"] == 4))
                .and_then(|e| e["pending"].as_u64());
            if for_four > Some(0) {
                assert_eq!(for_four, json["hints"]["pending"].as_u64(), "{json}");
                break 'found *addr;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no hints for node 4 after {i} writes"
        );
    };
    let page = http_get(holder, "/").await;
    assert!(page.contains("held for n4: "), "{page}");
    for (_, task) in pages {
        task.abort();
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Nodes that send replica writes and reads over framed connections: every
/// write at W=3 and read at R=3 needs both peers over them (there is no
/// fallback to gRPC), and a hand-made framed connection gets the node's
/// hello back, then an error frame for a request that does not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_talk_over_framed_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let nodes = kv_server::start_local(3, dir.path(), |config| NodeConfig {
        internode_frames: true,
        ..test_settings(config)
    })
    .await
    .unwrap();
    let mut c = client(&nodes[0]).await;
    for i in 0..50u32 {
        let key = format!("framed:{i}").into_bytes();
        c.put(PutRequest {
            key: key.clone(),
            value: i.to_le_bytes().to_vec(),
            w: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("write {i} at W=3: {e}"));
        let got = c.get(GetRequest { key, r: 3 }).await.unwrap().into_inner();
        assert_eq!(got.values, vec![i.to_le_bytes().to_vec()]);
    }
    let (mut raw, answer) = framed_hello(nodes[1].addr).await;
    assert_eq!(answer.map(|f| f.kind), Some(kv_server::frames::Kind::Hello));
    let mut buf = vec![0u8; 64];
    let garbage = kv_server::frames::Frame {
        kind: kv_server::frames::Kind::Replicate,
        payload: vec![0xff; 9],
    };
    raw.write_all(&garbage.encode()).await.unwrap();
    let n = raw.read(&mut buf).await.unwrap();
    let (answer, _) = kv_server::frames::Frame::decode(&buf[..n])
        .unwrap()
        .unwrap();
    assert_eq!(answer.kind, kv_server::frames::Kind::Error);
    // gRPC on the same port is unaffected.
    assert_eq!(
        get(&mut client(&nodes[1]).await, b"framed:0")
            .await
            .values
            .len(),
        1
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A rolling upgrade: node 1 serves no framed connections (as a release
/// before them), nodes 2 and 3 send frames. Their framed connections to
/// node 1 are refused at the hello, and they fall back to node 1's gRPC
/// streams: writes at W=3 through node 2 still reach all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_frames_is_reached_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: Vec<(NodeId, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (NodeId(i as u64 + 1), l.local_addr().unwrap().to_string()))
        .collect();
    let mut starts = Vec::new();
    for ((id, _), listener) in members.clone().into_iter().zip(listeners) {
        let config = NodeConfig {
            members: members.clone(),
            internode_frames: id != NodeId(1),
            ..node_config(id, dir.path())
        };
        starts.push(tokio::spawn(async move {
            if id == NodeId(1) {
                // gRPC only: the listener is not split by first bytes.
                let addr = listener.local_addr().unwrap();
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                kv_server::start_on(config, addr, incoming, kv_server::tcp_connect()).await
            } else {
                kv_server::start(config, listener).await
            }
        }));
    }
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(s.await.unwrap().unwrap());
    }
    let mut c = client(&nodes[1]).await;
    for i in 0..20u32 {
        let key = format!("upgrade:{i}").into_bytes();
        c.put(PutRequest {
            key: key.clone(),
            value: b"v".to_vec(),
            w: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("write {i} at W=3: {e}"));
        let got = c.get(GetRequest { key, r: 3 }).await.unwrap().into_inner();
        assert_eq!(got.values, vec![b"v".to_vec()]);
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Opens a framed connection to `addr` in plaintext and sends a hello;
/// the connection and the first frame that came back, if any came within
/// 10 s and decoded.
pub(crate) async fn framed_hello(
    addr: std::net::SocketAddr,
) -> (tokio::net::TcpStream, Option<kv_server::frames::Frame>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&kv_server::frames::MAGIC).await.unwrap();
    raw.write_all(&kv_server::frames::Frame::hello(9).encode())
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), raw.read(&mut buf)).await;
    let answer = match read {
        Ok(Ok(n)) => kv_server::frames::Frame::decode(&buf[..n])
            .ok()
            .flatten()
            .map(|(f, _)| f),
        _ => None,
    };
    (raw, answer)
}
