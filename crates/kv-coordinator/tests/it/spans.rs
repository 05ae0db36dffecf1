//! The spans of client requests (`kv_coordinator::trace`): one request in
//! `trace_every` gets them, and each step is a child of its request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

use super::*;

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
        let c = Cluster::new(
            3,
            Config {
                trace_every: every,
                ..Config::default()
            },
        );
        for i in 0..100 {
            let key = format!("traced{i}").into_bytes();
            let node = c.coordinator(&key);
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
