//! Nodes on loopback talking real gRPC: in one process, and as real
//! `kvd` processes.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod process;

use kv_core::NodeId;
use kv_lsm::Durability;
use kv_server::proto::kv_client::KvClient;
use kv_server::proto::{DeleteRequest, GetRequest, PutRequest};
use kv_server::{NodeConfig, RunningNode, start};
use tokio::net::TcpListener;
use tonic::transport::Channel;

async fn cluster(size: u64, dir: &std::path::Path) -> Vec<RunningNode> {
    let mut listeners = Vec::new();
    for _ in 0..size {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: Vec<(NodeId, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (NodeId(i as u64 + 1), l.local_addr().unwrap().to_string()))
        .collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = NodeConfig {
            id: NodeId(i as u64 + 1),
            members: members.clone(),
            data_dir: dir.join(format!("n{}", i + 1)),
            coordinator: kv_coordinator::Config::default(),
            durability: Durability::Always,
            vnodes: 64,
            memtable_bytes: 1 << 20,
        };
        nodes.push(start(config, listener).await.unwrap());
    }
    nodes
}

async fn client(node: &RunningNode) -> KvClient<Channel> {
    KvClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap()
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
        let via = &mut clients[i as usize % 3];
        via.put(PutRequest {
            key: key.clone(),
            value: i.to_le_bytes().to_vec(),
            context: vec![],
            w: 0,
        })
        .await
        .unwrap();
        for c in clients.iter_mut() {
            let got = c
                .get(GetRequest {
                    key: key.clone(),
                    r: 0,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.values, vec![i.to_le_bytes().to_vec()], "key {i}");
        }
    }
    // Concurrent writes with one context give siblings; the merged context
    // resolves them; a delete removes the key.
    let key = b"cart".to_vec();
    let c = &mut clients[0];
    c.put(PutRequest {
        key: key.clone(),
        value: b"v0".to_vec(),
        context: vec![],
        w: 0,
    })
    .await
    .unwrap();
    let read = c
        .get(GetRequest {
            key: key.clone(),
            r: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for v in [b"alice".to_vec(), b"bob".to_vec()] {
        c.put(PutRequest {
            key: key.clone(),
            value: v,
            context: read.context.clone(),
            w: 0,
        })
        .await
        .unwrap();
    }
    let both = clients[1]
        .get(GetRequest {
            key: key.clone(),
            r: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(both.values.len(), 2);
    clients[2]
        .put(PutRequest {
            key: key.clone(),
            value: b"merged".to_vec(),
            context: both.context,
            w: 0,
        })
        .await
        .unwrap();
    let merged = clients[0]
        .get(GetRequest {
            key: key.clone(),
            r: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.values, vec![b"merged".to_vec()]);
    clients[1]
        .delete(DeleteRequest {
            key: key.clone(),
            context: merged.context,
            w: 0,
        })
        .await
        .unwrap();
    assert!(
        clients[2]
            .get(GetRequest { key, r: 0 })
            .await
            .unwrap()
            .into_inner()
            .values
            .is_empty()
    );
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
        },
        PutRequest {
            key: vec![b'k'; 70 << 10],
            value: b"v".to_vec(),
            context: vec![],
            w: 0,
        },
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            context: vec![0xff, 0xee],
            w: 0,
        },
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            context: vec![],
            w: 7,
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
    // Still serving.
    c.put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        context: vec![],
        w: 0,
    })
    .await
    .unwrap();
    let got = c
        .get(GetRequest {
            key: b"k".to_vec(),
            r: 0,
        })
        .await
        .unwrap()
        .into_inner();
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
    let nodes = cluster(3, dir.path()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap();
    let http = kv_server::http::serve(nodes[0].coordinator().clone(), listener);
    let mut c = client(&nodes[0]).await;
    c.put(PutRequest {
        key: b"m".to_vec(),
        value: b"v".to_vec(),
        context: vec![],
        w: 0,
    })
    .await
    .unwrap();
    c.get(GetRequest {
        key: b"m".to_vec(),
        r: 0,
    })
    .await
    .unwrap();
    let _ = c
        .put(PutRequest {
            key: vec![],
            value: b"v".to_vec(),
            context: vec![],
            w: 0,
        })
        .await;
    let metrics = http_get(http_addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain; version=0.0.4"));
    assert!(
        metrics.contains("kv_requests_total{op=\"put\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("kv_request_errors_total{op=\"put\"} 1"));
    assert!(metrics.contains("kv_request_duration_seconds_count{op=\"get\"} 1"));
    assert!(metrics.contains("kv_members{state=\"alive\"} 3"));
    assert!(metrics.contains("kv_lsm_log_syncs_total"));
    let status = http_get(http_addr, "/").await;
    assert!(status.contains("<h1>kv node n1</h1>"), "{status}");
    assert!(status.contains("(this node)"));
    http.abort();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
