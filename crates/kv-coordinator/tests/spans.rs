//! The spans of client requests (`kv_coordinator::trace`): one request in
//! `trace_every` gets them, and each step is a child of its request.
//!
//! A test binary of its own: `tracing` caches per call site whether anyone
//! listens, and a test elsewhere in the same process making the same spans
//! with no subscriber can leave that cache saying no while this test's
//! thread-local subscriber wants them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use std::time::Duration;

use kv_coordinator::sim::{SimNetwork, SimTransport};
use kv_coordinator::{ClientHandler, Config, Coordinator, Replica, ReplicaSettings};
use kv_core::{NodeId, Partitioner as _};
use kv_ring::ConsistentHashRing;
use kv_testkit::MemEngine;

type Engine = Arc<MemEngine>;
type Node = Coordinator<Engine, SimTransport<Engine>, ConsistentHashRing>;

/// Three nodes on the in-process network.
fn three_nodes(config: &Config) -> (Arc<ConsistentHashRing>, Vec<Arc<Node>>) {
    let network = SimNetwork::new(7);
    let ring = Arc::new(
        ConsistentHashRing::builder()
            .vnodes(32)
            .nodes((1..=3).map(NodeId))
            .build()
            .unwrap(),
    );
    let nodes = (1..=3)
        .map(|id| {
            let id = NodeId(id);
            let settings = ReplicaSettings {
                n: config.n,
                epoch: 1,
                ..ReplicaSettings::default()
            };
            let engines = (Arc::new(MemEngine::new()), Arc::new(MemEngine::new()));
            let replica =
                Arc::new(Replica::new(id, engines.0, engines.1, &settings, ring.clone()).unwrap());
            network.attach(replica.clone());
            let transport = Arc::new(SimTransport::new(id, network.clone()));
            let node = Arc::new(
                Coordinator::new(
                    config.clone(),
                    replica,
                    transport,
                    ring.clone(),
                    network.clone(),
                )
                .unwrap(),
            );
            let handler: Arc<dyn ClientHandler> = node.clone();
            network.attach_handler(id, Arc::downgrade(&handler));
            node
        })
        .collect();
    (ring, nodes)
}

/// A span made: its id, name and parent's id.
type Made = (u64, &'static str, Option<u64>);

/// A subscriber that keeps the name and parent of every request span.
#[derive(Clone, Default)]
struct Spans {
    next: Arc<AtomicU64>,
    made: Arc<Mutex<Vec<Made>>>,
}

impl Subscriber for Spans {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == kv_coordinator::trace::TARGET
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        // Steps name their parent; a request has none (never entered, so
        // nothing is current either).
        let parent = span.parent().map(Id::into_u64);
        self.made.lock().push((id, span.metadata().name(), parent));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(start_paused = true)]
async fn one_request_in_trace_every_is_traced_with_its_steps_as_children() {
    // 200 requests: all, about a quarter, none.
    for (every, traced) in [(1u32, 200..=200), (4, 25..=75), (0, 0..=0)] {
        let spans = Spans::default();
        let guard = tracing::subscriber::set_default(spans.clone());
        let (ring, nodes) = three_nodes(&Config {
            trace_every: every,
            ..Config::default()
        });
        for i in 0..100 {
            let key = format!("traced{i}").into_bytes();
            // The key's first replica coordinates it (no forwarding).
            let first = ring.preference_list(&key, 3).unwrap()[0];
            let node = &nodes[(first.0 - 1) as usize];
            node.put(&key, b"v", b"", None).await.unwrap();
            node.get(&key, None).await.unwrap();
        }
        // The replicas beyond W answer after the reply.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(guard);
        let made = spans.made.lock().clone();
        let count = |name: &str| made.iter().filter(|(_, n, _)| *n == name).count();
        assert!(
            traced.contains(&count("request")),
            "trace_every {every}: {} requests traced",
            count("request")
        );
        // Every step hangs under a request.
        let name_of = |id: u64| made.iter().find(|(i, _, _)| *i == id).map(|(_, n, _)| *n);
        for (_, name, parent) in &made {
            if *name == "request" {
                assert_eq!(*parent, None);
                continue;
            }
            let mut up = *parent;
            let mut depth = 0;
            while let Some(p) = up {
                if name_of(p) == Some("request") {
                    break;
                }
                up = made
                    .iter()
                    .find(|(i, _, _)| *i == p)
                    .and_then(|(_, _, pp)| *pp);
                depth += 1;
                assert!(depth < 4, "{name} under no request: {made:?}");
            }
            assert!(up.is_some(), "{name} under no request: {made:?}");
        }
        if every == 1 {
            // Each write: its local engine write and both other replicas;
            // each read: its engine read and at least one other replica.
            assert_eq!(count("engine_write"), 100, "{made:?}");
            assert_eq!(count("replicate"), 200, "{made:?}");
            assert_eq!(count("engine_read"), 100, "{made:?}");
            assert!(count("ask") >= 100, "{made:?}");
        }
        if every == 4 {
            // Puts and gets alternate: both kinds are sampled.
            assert!(
                count("engine_write") > 5 && count("engine_read") > 5,
                "{made:?}"
            );
        }
        if every == 0 {
            assert!(made.is_empty(), "{made:?}");
        }
    }
}
