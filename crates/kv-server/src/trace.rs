//! The slow-request log: each client request's span tree (the spans
//! `kv_coordinator::trace` makes) is kept while the request runs, and
//! written out when the request took longer than a threshold.
//!
//! [`SlowRequests`] is a `tracing_subscriber` layer; [`SlowLog`] holds the
//! count and the last slow requests (the status page and `/metrics` read
//! it) and logs each one as a `warn` event with target `kv::slow`:
//!
//! ```text
//! slow request: put key_hash=5f0e13a9c4d27b61 w=2 replicas=[n1, n2, n3] took 212.4 ms outcome=ok
//!   +0.0 ms     211.9 ms  engine_write outcome=ok
//!   +0.1 ms       1.2 ms  replicate peer=2 outcome=ok
//!   +0.1 ms     480.0 ms  replicate peer=3 outcome=n3 did not answer in time (after the reply)
//! ```
//!
//! A request's time is from its span's start to its outcome (the reply);
//! work that goes on after it (replicas beyond W, read repair) is in the
//! tree, marked, once it ends. Fields are kept as values and formatted
//! only for a slow request; a request costs a few small allocations per
//! span (docs/benchmarks.md, "Request tracing", measures it).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Slow requests kept for the status page.
const KEEP: usize = 20;

/// One slow request.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowRequest {
    /// When it started (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
    /// `get`, `put` or `delete`.
    pub op: String,
    /// From its start to its reply.
    pub took: Duration,
    /// `ok`, or the error it failed with.
    pub outcome: String,
    /// The span tree as text: a line per span, its start after the
    /// request's, its duration, its name and fields.
    pub tree: String,
}

/// The slow requests seen so far: a count and the last few.
/// `SlowLog::default()` records nothing (no threshold).
#[derive(Debug, Clone, Default)]
pub struct SlowLog {
    threshold: Option<Duration>,
    one_in: u32,
    inner: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    total: u64,
    recent: VecDeque<SlowRequest>,
}

impl SlowLog {
    /// A log of the requests that take `threshold` or longer (fed by
    /// [`SlowRequests`]), of which one in `one_in` is traced
    /// (`kv_coordinator::Config::trace_every`, for the page to say).
    pub fn new(threshold: Duration, one_in: u32) -> Self {
        SlowLog {
            threshold: Some(threshold),
            one_in,
            inner: Arc::default(),
        }
    }

    /// One request in how many is traced (0: none).
    pub fn one_in(&self) -> u32 {
        self.one_in
    }

    /// From how long a request counts as slow; `None`: not recorded.
    pub fn threshold(&self) -> Option<Duration> {
        self.threshold
    }

    /// Slow requests since the node started.
    pub fn total(&self) -> u64 {
        self.inner.lock().total
    }

    /// The last slow requests (at most 20), newest first.
    pub fn recent(&self) -> Vec<SlowRequest> {
        self.inner.lock().recent.iter().rev().cloned().collect()
    }

    /// Counts `slow`, keeps it and logs it.
    fn add(&self, slow: SlowRequest) {
        tracing::warn!(target: "kv::slow", "{}", slow.tree);
        let mut seen = self.inner.lock();
        seen.total += 1;
        if seen.recent.len() == KEEP {
            seen.recent.pop_front();
        }
        seen.recent.push_back(slow);
    }
}

/// The layer that times every request's spans and hands the slow ones to
/// a [`SlowLog`]. Give it the spans of `kv_coordinator::trace::TARGET`
/// only ([`SlowRequests::filter`]).
#[derive(Debug, Clone)]
pub struct SlowRequests {
    threshold: Duration,
    log: SlowLog,
}

impl SlowRequests {
    /// Hands `log` every request that takes its threshold or longer
    /// (none, for a log without one).
    pub fn new(log: SlowLog) -> Self {
        SlowRequests {
            threshold: log.threshold.unwrap_or(Duration::MAX),
            log,
        }
    }

    /// The filter that gives this layer the request spans and nothing
    /// else.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target(kv_coordinator::trace::TARGET, Level::INFO)
    }
}

/// A field's value, kept unformatted until a request turns out slow.
#[derive(Debug)]
enum Value {
    U64(u64),
    I64(i64),
    Bool(bool),
    Text(String),
}

type Fields = Vec<(&'static str, Value)>;

#[derive(Default)]
struct Collect(Fields);

impl Visit for Collect {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name(), Value::U64(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name(), Value::I64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name(), Value::Bool(value)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), Value::Text(value.to_string())));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name(), Value::Text(format!("{value:?}"))));
    }
}

/// A span of a request's tree while it runs, with the tree it belongs
/// to (shared by the request's spans, so a span that ends adds its line
/// without looking its ancestors up).
struct Timing {
    name: &'static str,
    fields: Fields,
    start: Instant,
    depth: u16,
    tree: Arc<Mutex<Tree>>,
}

/// A request's tree: its start, its reply, and its spans that have
/// ended.
struct Tree {
    start: Instant,
    replied: Option<Instant>,
    ended: Vec<Line>,
}

/// A span of the tree that has ended.
struct Line {
    depth: u16,
    name: &'static str,
    fields: Fields,
    from: Duration,
    took: Duration,
    after_reply: bool,
}

impl<S> Layer<S> for SlowRequests
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Timing>()
                .map(|t| (t.depth + 1, t.tree.clone()))
        });
        let name = attrs.metadata().name();
        let start = Instant::now();
        let (depth, tree) = match parent {
            Some(found) => found,
            // A span outside any request starts a tree only when it is a
            // request.
            None if name == "request" => (
                0,
                Arc::new(Mutex::new(Tree {
                    start,
                    replied: None,
                    ended: Vec::new(),
                })),
            ),
            None => return,
        };
        let mut fields = Collect::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(Timing {
            name,
            fields: fields.0,
            start,
            depth,
            tree,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let Some(timing) = extensions.get_mut::<Timing>() else {
            return;
        };
        let mut recorded = Collect::default();
        values.record(&mut recorded);
        let outcome = recorded.0.iter().any(|(name, _)| *name == "outcome");
        timing.fields.extend(recorded.0);
        // A request's outcome is its reply.
        if outcome && timing.depth == 0 {
            timing.tree.lock().replied.get_or_insert_with(Instant::now);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let now = Instant::now();
        let Some(timing) = span.extensions_mut().remove::<Timing>() else {
            return;
        };
        drop(span);
        if timing.depth > 0 {
            // A span of a tree: its line goes to the request's tree.
            let mut tree = timing.tree.lock();
            let (from, after_reply) = (
                timing.start.saturating_duration_since(tree.start),
                tree.replied.is_some_and(|r| now > r),
            );
            tree.ended.push(Line {
                depth: timing.depth,
                name: timing.name,
                fields: timing.fields,
                from,
                took: now.saturating_duration_since(timing.start),
                after_reply,
            });
            return;
        }
        // The request: every span of it has ended (each held it open).
        let tree = std::mem::replace(
            &mut *timing.tree.lock(),
            Tree {
                start: now,
                replied: None,
                ended: Vec::new(),
            },
        );
        let took = tree
            .replied
            .unwrap_or(now)
            .saturating_duration_since(tree.start);
        if took >= self.threshold {
            self.log.add(render(&timing, tree, took));
        }
    }
}

/// A slow request as a [`SlowRequest`], its tree as text.
fn render(root: &Timing, mut tree: Tree, took: Duration) -> SlowRequest {
    let text = |fields: &Fields, name: &str| {
        fields
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| match v {
                Value::Text(t) => t.clone(),
                Value::U64(n) => n.to_string(),
                Value::I64(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
            })
    };
    let op = text(&root.fields, "op").unwrap_or_default();
    let outcome = text(&root.fields, "outcome").unwrap_or_else(|| "none".to_string());
    let mut out = format!("slow request: {op}");
    write_fields(&mut out, &root.fields, &["op", "outcome"]);
    let _ = write!(out, " took {} outcome={outcome}", ms(took));
    // In the order the spans started; a parent starts before its children
    // and sorts first on a tie (it is shallower).
    tree.ended.sort_by_key(|l| (l.from, l.depth));
    for line in &tree.ended {
        let _ = write!(
            out,
            "\n  +{:<9} {:>9}  {}{}",
            ms(line.from),
            ms(line.took),
            "  ".repeat(usize::from(line.depth.saturating_sub(1))),
            line.name
        );
        write_fields(&mut out, &line.fields, &[]);
        if line.after_reply {
            out.push_str(" (after the reply)");
        }
    }
    let at = std::time::SystemTime::now()
        .checked_sub(took)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    SlowRequest {
        at_unix_ms: at,
        op,
        took,
        outcome,
        tree: out,
    }
}

/// ` name=value` for each field but `skip`; the key hash in hex.
fn write_fields(out: &mut String, fields: &Fields, skip: &[&str]) {
    for (name, value) in fields {
        if skip.contains(name) {
            continue;
        }
        let _ = match value {
            Value::U64(n) if *name == "key_hash" => write!(out, " {name}={n:016x}"),
            Value::U64(n) => write!(out, " {name}={n}"),
            Value::I64(n) => write!(out, " {name}={n}"),
            Value::Bool(b) => write!(out, " {name}={b}"),
            Value::Text(t) => write!(out, " {name}={t}"),
        };
    }
}

/// A duration in milliseconds with one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Runs `f` with a subscriber that feeds a log with `threshold`.
    fn traced(threshold: Duration, f: impl FnOnce()) -> SlowLog {
        let log = SlowLog::new(threshold, 1);
        let subscriber = tracing_subscriber::registry()
            .with(SlowRequests::new(log.clone()).with_filter(SlowRequests::filter()));
        tracing::subscriber::with_default(subscriber, f);
        log
    }

    /// A write's spans as the coordinator makes them: one replica answers
    /// before the reply, the other after it.
    fn a_write() {
        let request = tracing::info_span!(target: "kv::request", "request", op = "put", key_hash = 0xabcu64, outcome = tracing::field::Empty);
        let late = {
            let _in = request.enter();
            let write = tracing::info_span!(target: "kv::request", "write", w = 2u64);
            let _in_write = write.enter();
            let engine = tracing::info_span!(target: "kv::request", "engine_write", outcome = tracing::field::Empty);
            engine.record("outcome", "ok");
            drop(engine);
            let fast = tracing::info_span!(target: "kv::request", "replicate", peer = 2u64);
            drop(fast);
            tracing::info_span!(target: "kv::request", "replicate", peer = 3u64)
        };
        // Not a request's: ignored.
        drop(tracing::info_span!(target: "kv::request", "replicate", peer = 9u64));
        request.record("outcome", "ok");
        drop(late);
        drop(request);
    }

    #[test]
    fn a_slow_request_is_kept_with_its_tree_in_start_order() {
        let log = traced(Duration::ZERO, a_write);
        assert_eq!(log.total(), 1);
        let slow = &log.recent()[0];
        assert_eq!((slow.op.as_str(), slow.outcome.as_str()), ("put", "ok"));
        let lines: Vec<&str> = slow.tree.lines().collect();
        assert!(
            lines[0].starts_with("slow request: put key_hash=0000000000000abc took "),
            "{}",
            slow.tree
        );
        assert!(lines[0].ends_with(" outcome=ok"), "{}", slow.tree);
        // The write, then its children indented, in the order they
        // started; the one that ended after the reply is marked, and the
        // span outside the request is absent.
        let names: Vec<String> = lines[1..]
            .iter()
            .map(|l| {
                // After the start and the duration, each "<n> ms".
                let second = l.match_indices(" ms").nth(1).map_or(0, |(i, _)| i);
                l[second + " ms  ".len()..].to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "write w=2 (after the reply)",
                "  engine_write outcome=ok",
                "  replicate peer=2",
                "  replicate peer=3 (after the reply)",
            ],
            "{}",
            slow.tree
        );
    }

    #[test]
    fn a_request_under_the_threshold_is_not_kept_and_none_without_one() {
        assert_eq!(traced(Duration::from_secs(3600), a_write).total(), 0);
        let off = SlowLog::default();
        let subscriber = tracing_subscriber::registry()
            .with(SlowRequests::new(off.clone()).with_filter(SlowRequests::filter()));
        tracing::subscriber::with_default(subscriber, a_write);
        assert_eq!((off.total(), off.threshold()), (0, None));
    }

    #[test]
    fn the_log_keeps_the_last_twenty_newest_first() {
        let log = traced(Duration::ZERO, || {
            for i in 0..25u64 {
                let span = tracing::info_span!(target: "kv::request", "request", op = "get", key_hash = i, outcome = tracing::field::Empty);
                span.record("outcome", "ok");
            }
        });
        assert_eq!(log.total(), 25);
        let recent = log.recent();
        assert_eq!(recent.len(), KEEP);
        assert!(
            recent[0].tree.contains("key_hash=0000000000000018"),
            "{}",
            recent[0].tree
        );
        assert!(recent[KEEP - 1].tree.contains("key_hash=0000000000000005"));
    }
}
