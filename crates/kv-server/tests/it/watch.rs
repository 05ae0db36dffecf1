//! The change feed through real `kvd` processes: a watch from the SDK
//! delivers every acknowledged write of its prefix, in causal order per
//! key, while the node serving it is killed with SIGKILL and restarted
//! (the SDK re-subscribes elsewhere with its cursor).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_clock::VectorClock;
use kv_core::ActorId;
use kv_server::client::{Change, Client, ClientConfig, ClientError, Version};
use parking_lot::Mutex;

use crate::process::{connect, free_ports, kvd, start_cluster};

/// The acknowledged writes no delivered change of their key covers.
fn missing(acked: &[(Vec<u8>, Version)], delivered: &[Change]) -> Vec<String> {
    let mut seen: BTreeMap<&[u8], VectorClock> = BTreeMap::new();
    for change in delivered {
        let clock = VectorClock::from_bytes(&change.context.0).unwrap();
        seen.entry(&change.key).or_default().merge(&clock);
    }
    acked
        .iter()
        .filter(|(key, v)| {
            !seen
                .get(key.as_slice())
                .is_some_and(|c| c.covers(ActorId(v.actor), v.counter))
        })
        .map(|(key, v)| format!("{} at {v:?}", String::from_utf8_lossy(key)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_every_acknowledged_write_through_a_node_kill() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (mut children, extra) = start_cluster(&ports, 3, dir.path(), 500).await;
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let client = Client::new(&addrs, ClientConfig::default()).unwrap();

    // A cursor no watch gave is refused.
    assert!(matches!(
        client.watch_from(b"feed/", false, b"not a cursor").await,
        Err(ClientError::InvalidArgument(_))
    ));

    let mut watcher = client.watch(b"feed/").await.unwrap();
    let first = watcher.serving().unwrap().to_string();
    let victim = addrs.iter().position(|a| *a == first).unwrap();
    let delivered: Arc<Mutex<Vec<Change>>> = Arc::default();
    let served_by: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let (d, s) = (delivered.clone(), served_by.clone());
    let consumer = tokio::spawn(async move {
        loop {
            match watcher.next().await {
                Ok(changes) => {
                    d.lock().extend(changes);
                    if let Some(node) = watcher.serving() {
                        s.lock().insert(node.to_string());
                    }
                }
                // Every node tried failed: the cursor is kept; try again.
                Err(ClientError::Unavailable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the watch failed: {e}"),
            }
        }
    });

    let keys: Vec<Vec<u8>> = (0..30)
        .map(|i| format!("feed/{i:02}").into_bytes())
        .collect();
    let mut contexts = BTreeMap::new();
    let mut acked = Vec::new();
    for round in 0..8 {
        if round == 3 {
            // The node serving the watch dies mid-stream.
            children[victim].kill().unwrap();
            children[victim].wait().unwrap();
        }
        if round == 6 {
            children[victim] = kvd(victim + 1, &ports, dir.path(), &extra);
            connect(ports[victim]).await;
        }
        for key in &keys {
            let value = format!("{round}").into_bytes();
            if let Ok(w) = client.put(key, value, contexts.get(key)).await {
                acked.push((key.clone(), w.version));
                contexts.insert(key.clone(), w.context);
            }
        }
        client.put(b"other", b"x".to_vec(), None).await.unwrap();
    }
    assert!(acked.len() >= 200, "most writes succeed: {}", acked.len());

    let deadline = Instant::now() + Duration::from_secs(60);
    while !missing(&acked, &delivered.lock()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "acknowledged writes never delivered: {:?}",
            missing(&acked, &delivered.lock())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consumer.abort();
    let delivered = delivered.lock().clone();
    assert!(delivered.iter().all(|c| c.key.starts_with(b"feed/")));
    // Causal order per key, across the re-subscription too.
    let mut seen: BTreeMap<&[u8], VectorClock> = BTreeMap::new();
    for change in &delivered {
        let clock = VectorClock::from_bytes(&change.context.0).unwrap();
        let before = seen.entry(&change.key).or_default();
        assert!(
            before.is_empty() || !before.descends(&clock),
            "{} went backwards or repeated",
            String::from_utf8_lossy(&change.key)
        );
        before.merge(&clock);
    }
    let served_by = served_by.lock().clone();
    assert!(
        served_by.iter().any(|a| *a != first),
        "the watch moved off the killed node {first}: {served_by:?}"
    );
    drop(children);
}
