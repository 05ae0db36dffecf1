//! The client SDK against a real in-process cluster: contexts, siblings
//! resolved by a user function, read-modify-write, and retry on another
//! node when one is unavailable.

use kv_server::client::{BatchWrite, Client, ClientConfig, ClientError, Context};

use crate::cluster;

fn join_sorted(siblings: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = siblings.iter().map(Vec::as_slice).collect();
    parts.sort();
    parts.dedup();
    parts.join(&b'+')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_resolve_and_updates_chain() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = Client::new(&addrs, ClientConfig::default()).unwrap();

    assert!(client.get(b"absent").await.unwrap().values.is_empty());
    client.put(b"k", b"base".to_vec(), None).await.unwrap();
    let read = client.get(b"k").await.unwrap();
    assert_eq!(read.single(), Some(&b"base"[..]));
    // Two writers with the same context: siblings, not a lost update.
    client
        .put(b"k", b"alice".to_vec(), Some(&read.context))
        .await
        .unwrap();
    client
        .put(b"k", b"bob".to_vec(), Some(&read.context))
        .await
        .unwrap();
    let both = client.get(b"k").await.unwrap();
    assert_eq!(both.values.len(), 2);
    let merged = client.get_resolved(b"k", join_sorted).await.unwrap();
    assert_eq!(merged.as_deref(), Some(&b"alice+bob"[..]));
    assert_eq!(
        client.get(b"k").await.unwrap().values,
        vec![b"alice+bob".to_vec()],
        "the resolved value superseded both siblings"
    );

    // Read-modify-write with the context: a counter, each step sees the last.
    for _ in 0..10 {
        client
            .update(b"counter", join_sorted, |current| {
                let n: u32 = current
                    .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                    .unwrap_or(0);
                (n + 1).to_string().into_bytes()
            })
            .await
            .unwrap();
    }
    assert_eq!(
        client.get(b"counter").await.unwrap().values,
        vec![b"10".to_vec()]
    );

    // Delete with the context of a read.
    let read = client.get(b"counter").await.unwrap();
    client.delete(b"counter", &read.context).await.unwrap();
    assert!(client.get(b"counter").await.unwrap().values.is_empty());

    // Bad input is not retried elsewhere: it is the request that is wrong.
    let err = client.put(b"", b"v".to_vec(), None).await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_another_node_when_one_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(3, dir.path()).await;
    // An address where nothing listens, then a node that is stopped.
    let nothing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = nothing.local_addr().unwrap().to_string();
    drop(nothing);
    let stopped = nodes.remove(0);
    let stopped_addr = stopped.addr.to_string();
    stopped.shutdown().await.unwrap();
    let addrs = vec![
        dead.clone(),
        stopped_addr,
        nodes[0].addr.to_string(),
        nodes[1].addr.to_string(),
    ];
    let client = Client::new(
        &addrs,
        ClientConfig {
            attempts: 4,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Round robin starts each request at the next node: every request
    // meets the dead ones at some point and still succeeds.
    for i in 0..12u32 {
        let key = format!("retry:{i}").into_bytes();
        client
            .put(&key, i.to_le_bytes().to_vec(), None)
            .await
            .unwrap();
        let got = client.get(&key).await.unwrap();
        assert_eq!(got.values, vec![i.to_le_bytes().to_vec()]);
    }
    // A node that refuses connections never received the request: it is
    // skipped even with one attempt allowed (the request cannot be applied
    // twice), and the message of a refused connection says so.
    let once = Client::new(
        [dead.as_str(), addrs[2].as_str()],
        ClientConfig {
            attempts: 1,
            route_by_key: false,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    for i in 0..4u32 {
        let key = format!("once:{i}").into_bytes();
        once.put(&key, i.to_le_bytes().to_vec(), None)
            .await
            .unwrap_or_else(|e| panic!("put {i} with one attempt: {e}"));
    }
    // With only dead nodes, the error says how many were tried.
    let client = Client::new([dead.as_str()], ClientConfig::default()).unwrap();
    match client.get(b"x").await.unwrap_err() {
        ClientError::Unavailable { tried, message } => {
            assert_eq!(tried, 1);
            assert!(message.contains(&dead), "{message}");
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Client puts counted by every node's coordinator: a request forwarded to
/// the key's coordinator counts at both nodes.
fn puts_counted(nodes: &[kv_server::RunningNode]) -> u64 {
    nodes
        .iter()
        .map(|n| kv_coordinator::Metrics::get(&n.coordinator().metrics().put.requests))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_key_skips_the_forwarding_hop() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("route:{i}").into_bytes()).collect();

    let unrouted = Client::new(
        &addrs,
        ClientConfig {
            route_by_key: false,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    for k in &keys {
        unrouted.put(k, b"v".to_vec(), None).await.unwrap();
    }
    let forwarded = puts_counted(&nodes) - 60;
    assert!(
        forwarded > 20,
        "round robin forwards most puts ({forwarded})"
    );

    // No hedging: on a loaded machine a put slower than the hedge delay
    // would also be sent to a second node, which counts it too; this test
    // is about where the first attempt goes.
    let routed = Client::new(
        &addrs,
        ClientConfig {
            hedge_factor: 0,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    routed.put(b"warm", b"v".to_vec(), None).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !routed.routes_known() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ring was never fetched"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let before = puts_counted(&nodes);
    for k in &keys {
        routed.put(k, b"w".to_vec(), None).await.unwrap();
    }
    assert_eq!(
        puts_counted(&nodes) - before,
        60,
        "every put went straight to its coordinator"
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sent_to_a_node_that_never_answers_is_answered_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    // A node that takes connections and never answers (a paused process).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let live = nodes[0].addr.to_string();
    let writer = Client::new([live.as_str()], ClientConfig::default()).unwrap();
    let reader = Client::new(
        [silent_addr.as_str(), live.as_str()],
        ClientConfig {
            // One attempt and no routing: a read that starts at the silent
            // node must go on to the live one (hedged after a few read
            // latencies, or at the latest after its timeout); before, it
            // timed out and failed.
            attempts: 1,
            route_by_key: false,
            request_timeout: std::time::Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    for i in 0..6u32 {
        let key = format!("hedge:{i}").into_bytes();
        writer
            .put(&key, i.to_le_bytes().to_vec(), None)
            .await
            .unwrap();
        let got = reader
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!(got.values, vec![i.to_le_bytes().to_vec()]);
    }
    drop(silent);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// What a [`faulty_proxy`] does to the bytes it carries.
mod fault {
    /// Passes both ways.
    pub(super) const PASS: u8 = 0;
    /// Delivers what clients send but drops every byte of the answers: a
    /// coordinator that stores a write and whose answer never arrives (a
    /// broken return path, or a node killed right after storing).
    pub(super) const SWALLOW_ANSWERS: u8 = 1;
    /// Drops what clients send: the node never sees the request.
    pub(super) const DROP_REQUESTS: u8 = 2;
    /// Holds every chunk of the answers back for [`SLOW`] first.
    pub(super) const SLOW_ANSWERS: u8 = 3;
    /// How long a slow answer is held.
    pub(super) const SLOW: std::time::Duration = std::time::Duration::from_millis(300);
}

/// A TCP proxy to `target` that does to the bytes what `mode` (a
/// [`fault`] constant) says at the moment they pass.
async fn faulty_proxy(
    target: std::net::SocketAddr,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
) -> String {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
    async fn pipe(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
        answers: bool,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            match (mode.load(Ordering::SeqCst), answers) {
                (fault::SWALLOW_ANSWERS, true) | (fault::DROP_REQUESTS, false) => continue,
                (fault::SLOW_ANSWERS, true) => tokio::time::sleep(fault::SLOW).await,
                _ => {}
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, mode.clone(), false));
            tokio::spawn(pipe(server_read, client_write, mode.clone(), true));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_taken_by_another_node_and_stored_once() {
    use std::sync::atomic::{AtomicU8, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let swallow = std::sync::Arc::new(AtomicU8::new(fault::PASS));
    let proxy = faulty_proxy(nodes[0].addr, swallow.clone()).await;
    let client = Client::new(
        [proxy.as_str(), &nodes[1].addr.to_string()],
        ClientConfig {
            attempts: 2,
            route_by_key: false,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Two reads open both connections (requests start round robin), so
    // the write below starts at the proxy.
    client.get(b"warm").await.unwrap();
    client.get(b"warm").await.unwrap();
    swallow.store(fault::SWALLOW_ANSWERS, Ordering::SeqCst);
    // A key that the node behind the proxy coordinates (it stores the
    // first attempt itself rather than forwarding it).
    let owned_by_first = |k: &Vec<u8>| {
        use kv_core::Partitioner as _;
        nodes[0]
            .coordinator()
            .ring()
            .preference_list(k, 3)
            .is_ok_and(|r| r[0] == nodes[0].id)
    };
    let key = (0..)
        .map(|i| format!("lost-answer:{i}").into_bytes())
        .find(owned_by_first)
        .unwrap();
    let key = key.as_slice();
    let written = client.put(key, b"once".to_vec(), None).await.unwrap();
    // Node 1 stored the first attempt (its answer went nowhere) and
    // replicated it; the hedged second attempt, at node 2, found it or
    // stored a copy that became one with it.
    let reader = Client::new([nodes[2].addr.to_string()], ClientConfig::default()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let states: Vec<_> = nodes
            .iter()
            .map(|n| n.coordinator().replica().state(key).unwrap())
            .collect();
        let settled = states.iter().all(|s| s == &states[0] && s.len() == 1);
        if settled {
            let kept = &states[0].siblings()[0];
            assert_eq!(kept.value.as_deref(), Some(&b"once"[..]));
            assert!(
                states[0].context().covers(
                    kv_core::ActorId(written.version.actor),
                    written.version.counter
                ),
                "the acknowledged copy is covered"
            );
            assert!(
                states[0]
                    .context()
                    .entries()
                    .iter()
                    .any(|e| e.actor.node() == nodes[0].id),
                "the first attempt was stored by the node behind the proxy"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas did not settle on one version: {states:?}"
        );
        // Anti-entropy and the write's own replication bring the copies
        // together; reading repairs too.
        let _ = reader.get(key).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        reader.get(key).await.unwrap().values,
        vec![b"once".to_vec()]
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_hedge_was_lost_is_remembered_as_retried() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let first_mode = std::sync::Arc::new(AtomicU8::new(fault::PASS));
    let hedge_mode = std::sync::Arc::new(AtomicU8::new(fault::PASS));
    let first = faulty_proxy(nodes[0].addr, first_mode.clone()).await;
    let hedge = faulty_proxy(nodes[1].addr, hedge_mode.clone()).await;
    let client = Client::new(
        [first.as_str(), hedge.as_str()],
        ClientConfig {
            attempts: 2,
            route_by_key: false,
            request_timeout: Duration::from_secs(3),
            hedge_floor: Duration::from_millis(20),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Two reads open both connections; the write below starts at the
    // first proxy, whose answer comes too late, so the write is hedged to
    // the second, which loses it: the client cannot know whether that
    // node stored a copy (cut off from its peers, it would keep it).
    client.get(b"warm").await.unwrap();
    client.get(b"warm").await.unwrap();
    first_mode.store(fault::SLOW_ANSWERS, Ordering::SeqCst);
    hedge_mode.store(fault::DROP_REQUESTS, Ordering::SeqCst);
    let key = b"hedge-lost".as_slice();
    let written = client.put(key, b"once".to_vec(), None).await.unwrap();
    // (Only the first attempt can have been stored: the hedge never
    // reached its node.)
    // The first attempt's copy is marked as met by a retry on every
    // replica, so when it is overwritten the replicas remember the write
    // for the tombstone grace, not briefly: a stranded hedge copy cannot
    // come back as a sibling of the write that superseded it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<_> = nodes
            .iter()
            .map(|n| n.coordinator().replica().state(key).unwrap())
            .collect();
        let marked = states.iter().all(|s| {
            s.len() == 1
                && s.siblings()[0]
                    .write
                    .is_some_and(|w| w.id == written.write_id && w.retry)
        });
        if marked {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the acknowledged copy was not marked as retried everywhere: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_speaks_tls_with_a_token_and_routes_by_key() {
    use kv_core::NodeId;
    use kv_server::security::certs::CertsDir;
    use kv_server::security::{ClientCredentials, NodeTls, Role, Security, TokenTable};
    let dir = tempfile::tempdir().unwrap();
    let certs = CertsDir(dir.path().join("certs"));
    certs.init(1).unwrap();
    for id in 1..=3 {
        certs.issue_node(NodeId(id), &[], 1).unwrap();
    }
    let token = certs.add_token("app", Role::Write).unwrap();
    let tokens = TokenTable::from_toml(&std::fs::read_to_string(certs.tokens()).unwrap()).unwrap();
    let nodes = kv_server::start_local(3, dir.path(), |config| {
        let (cert, key) = certs.node(config.id);
        kv_server::NodeConfig {
            security: Security {
                tls: Some(NodeTls::load(&certs.ca_cert(), &cert, &key).unwrap()),
                tokens: tokens.clone(),
                ..Security::default()
            },
            ..config
        }
    })
    .await
    .unwrap();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let credentials = ClientCredentials::from_dir(&certs.0, None, Some(token)).unwrap();
    let client = Client::new(
        &addrs,
        ClientConfig {
            credentials: credentials.clone(),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    // Replication between the nodes runs over mutual TLS: a W=3 write
    // needs every replica.
    let client = client.with_quorums(Some(3), Some(3));
    for i in 0..20u32 {
        let key = format!("tls:{i}");
        client
            .put(key.as_bytes(), i.to_le_bytes().to_vec(), None)
            .await
            .unwrap();
        assert_eq!(
            client.get(key.as_bytes()).await.unwrap().values,
            vec![i.to_le_bytes().to_vec()]
        );
    }
    // The same client without the token is refused, not served.
    let anonymous = Client::new(
        &addrs,
        ClientConfig {
            credentials: ClientCredentials {
                token: None,
                ..credentials
            },
            attempts: 1,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    match anonymous.get(b"tls:1").await {
        Err(ClientError::Other { code, .. }) => assert_eq!(code, tonic::Code::Unauthenticated),
        other => panic!("a client without a token: {other:?}"),
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_ends_when_its_node_stops_and_opens_again_to_the_node_restarted() {
    use kv_core::NodeId;
    use kv_server::NodeConfig;
    let dir = tempfile::tempdir().unwrap();
    let node = cluster(1, dir.path()).await.remove(0);
    let addr = node.addr;
    let client = Client::new(
        [addr.to_string()],
        ClientConfig {
            route_by_key: false,
            ..ClientConfig::default()
        },
    )
    .unwrap()
    .with_quorums(Some(1), Some(1));
    // Opens the client's pipeline to the node.
    client.put(b"k", b"v1".to_vec(), None).await.unwrap();
    // The node stops with the pipeline open: its shutdown does not wait
    // for the client to close it.
    tokio::time::timeout(std::time::Duration::from_secs(30), node.shutdown())
        .await
        .expect("the shutdown waited for the client's pipeline")
        .unwrap();
    assert!(client.get(b"k").await.is_err(), "nobody answers");
    // The node restarts on its address and data: the next request opens a
    // new pipeline.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let config = crate::test_settings(NodeConfig {
        members: vec![(NodeId(1), addr.to_string())],
        ..NodeConfig::new(NodeId(1), dir.path().join("n1"))
    });
    let node = kv_server::start(config, listener).await.unwrap();
    assert_eq!(client.get(b"k").await.unwrap().values, vec![b"v1".to_vec()]);
    client.put(b"k2", b"v2".to_vec(), None).await.unwrap();
    node.shutdown().await.unwrap();
}

/// `get_many` and `write_many`: one result per item in order, an item
/// failing alone, deletes and overwrites with contexts, more items than
/// one batch holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_at_once_with_a_result_per_item() {
    use kv_server::client::BatchWrite;
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = Client::new(&addrs, ClientConfig::default()).unwrap();

    // More than one batch's worth (1,024), one bad key among them.
    let count = 1_500usize;
    let items: Vec<BatchWrite> = (0..count)
        .map(|i| {
            let key = if i == 700 {
                Vec::new()
            } else {
                format!("many:{i}").into_bytes()
            };
            BatchWrite::put(key, i.to_le_bytes().to_vec(), None)
        })
        .collect();
    let written = client.write_many(items).await;
    assert_eq!(written.len(), count);
    for (i, w) in written.iter().enumerate() {
        match (i, w) {
            (700, Err(ClientError::InvalidArgument(m))) => assert!(m.contains("empty key"), "{m}"),
            (700, other) => panic!("the empty key: {other:?}"),
            (_, w) => assert!(w.is_ok(), "item {i}: {w:?}"),
        }
    }
    let keys: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("many:{i}").into_bytes())
        .collect();
    let read = client.get_many(&keys).await;
    for (i, r) in read.iter().enumerate() {
        let values = &r.as_ref().unwrap().values;
        if i == 700 {
            assert!(values.is_empty());
        } else {
            assert_eq!(values, &vec![i.to_le_bytes().to_vec()], "key {i}");
        }
    }
    // Delete one, overwrite another, with the contexts read.
    let context = |i: usize| read[i].as_ref().unwrap().context.clone();
    let results = client
        .write_many(vec![
            BatchWrite::delete(keys[1].clone(), context(1)),
            BatchWrite::put(keys[2].clone(), b"two".to_vec(), Some(context(2))),
        ])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let after = client.get_many(&keys[..3]).await;
    let values: Vec<Vec<Vec<u8>>> = after.into_iter().map(|r| r.unwrap().values).collect();
    assert_eq!(values[0], vec![0usize.to_le_bytes().to_vec()]);
    assert!(values[1].is_empty(), "deleted");
    assert_eq!(values[2], vec![b"two".to_vec()], "superseded, no sibling");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// Conditional writes through the SDK: create-only, write-if-unchanged and
/// delete-if-unchanged, each refused with the key's current context when
/// its condition does not hold, and storing nothing then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_hold_or_are_refused_with_the_current_context() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let client = Client::new(&addrs, ClientConfig::default()).unwrap();
    let refused_context = |e: ClientError| match e {
        ClientError::PreconditionFailed { context, .. } => context,
        other => panic!("not a refusal: {other:?}"),
    };

    // Create only.
    client.put_if_absent(b"c", b"first".to_vec()).await.unwrap();
    let err = client
        .put_if_absent(b"c", b"second".to_vec())
        .await
        .unwrap_err();
    let current = refused_context(err);
    let read = client.get(b"c").await.unwrap();
    assert_eq!(
        read.values,
        vec![b"first".to_vec()],
        "the refused create stored nothing"
    );
    assert_eq!(
        current, read.context,
        "the refusal carries the current context"
    );

    // Write if unchanged: a stale context is refused, the current one holds.
    let stale = read.context.clone();
    client
        .put(b"c", b"other".to_vec(), Some(&read.context))
        .await
        .unwrap();
    let err = client
        .put_if_unchanged(b"c", b"mine".to_vec(), &stale)
        .await
        .unwrap_err();
    let current = refused_context(err);
    assert_eq!(
        client.get(b"c").await.unwrap().values,
        vec![b"other".to_vec()]
    );
    client
        .put_if_unchanged(b"c", b"mine".to_vec(), &current)
        .await
        .unwrap();
    let read = client.get(b"c").await.unwrap();
    assert_eq!(
        read.values,
        vec![b"mine".to_vec()],
        "superseded, no sibling"
    );

    // Delete if unchanged, then the key may be created again.
    let err = client.delete_if_unchanged(b"c", &stale).await.unwrap_err();
    assert!(matches!(err, ClientError::PreconditionFailed { .. }));
    client
        .delete_if_unchanged(b"c", &read.context)
        .await
        .unwrap();
    assert!(client.get(b"c").await.unwrap().values.is_empty());
    client.put_if_absent(b"c", b"again".to_vec()).await.unwrap();
    assert_eq!(
        client.get(b"c").await.unwrap().values,
        vec![b"again".to_vec()]
    );
    // A blind if-not-modified on an absent key holds (nothing to cover).
    client
        .put_if_unchanged(b"new", b"v".to_vec(), &kv_server::client::Context::empty())
        .await
        .unwrap();
    // In a batch, each item's condition holds or fails alone, a refusal
    // with the key's current context.
    let current = client.get(b"c").await.unwrap();
    let results = client
        .write_many(vec![
            BatchWrite::put_if_absent("fresh", "1"),
            BatchWrite::put_if_absent("c", "2"),
            BatchWrite::put("c", "3", Some(stale.clone())).if_unchanged(),
            BatchWrite::delete("new", Context::empty()).if_unchanged(),
        ])
        .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let mut results = results.into_iter();
    results.next();
    for refused in results.by_ref().take(2) {
        assert_eq!(refused_context(refused.unwrap_err()), current.context);
    }
    assert!(matches!(
        results.next(),
        Some(Err(ClientError::PreconditionFailed { .. }))
    ));
    assert_eq!(client.get(b"fresh").await.unwrap().values, [b"1".to_vec()]);
    assert_eq!(client.get(b"c").await.unwrap().values, [b"again".to_vec()]);
    assert_eq!(client.get(b"new").await.unwrap().values, [b"v".to_vec()]);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
