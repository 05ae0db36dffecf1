//! Metrics (Prometheus text format), the status page and its JSON over
//! HTTP.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use kv_coordinator::{Histogram, Metrics, OpMetrics, Replica};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::page::activity::Activity;
use crate::page::{render_status, status_json};
use crate::security::{Posture, Security, TokenTable};
use crate::service::{Engine, NodeCoordinator};

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn histogram(out: &mut String, op: &str, h: &Histogram) {
    let (buckets, sum_micros, count) = h.snapshot();
    for (le_micros, cumulative) in buckets {
        let le = le_micros as f64 / 1e6;
        let _ = writeln!(
            out,
            "kv_request_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "kv_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "kv_request_duration_seconds_sum{{op=\"{op}\"}} {}",
        sum_micros as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "kv_request_duration_seconds_count{{op=\"{op}\"}} {count}"
    );
}

/// The Prometheus text exposition of a node.
pub fn render_metrics(
    coordinator: &NodeCoordinator,
    cluster: &Cluster,
    slow: &crate::trace::SlowLog,
) -> String {
    let mut out = String::with_capacity(8 << 10);
    let m = coordinator.metrics();
    requests(&mut out, m);
    if slow.threshold().is_some() {
        counter(
            &mut out,
            "kv_slow_requests_total",
            "Traced client requests (one in trace_every) that took the slow-request threshold or longer, each logged with its span tree.",
            slow.total(),
        );
    }
    security(&mut out, &cluster.posture());
    replication(&mut out, m, coordinator.replica());
    anti_entropy(&mut out, coordinator);
    health(&mut out, coordinator.replica());
    engine(&mut out, coordinator.replica().engine());
    membership(&mut out, cluster);
    out
}

/// Client requests: counts, errors, latency, by operation.
fn requests(out: &mut String, m: &Metrics) {
    let ops: [(&str, &OpMetrics); 3] = [("get", &m.get), ("put", &m.put), ("delete", &m.delete)];
    out.push_str("# HELP kv_requests_total Client requests, by operation.\n# TYPE kv_requests_total counter\n");
    for (op, o) in ops {
        let _ = writeln!(
            out,
            "kv_requests_total{{op=\"{op}\"}} {}",
            Metrics::get(&o.requests)
        );
    }
    out.push_str("# HELP kv_request_errors_total Failed client requests, by operation.\n# TYPE kv_request_errors_total counter\n");
    for (op, o) in ops {
        let _ = writeln!(
            out,
            "kv_request_errors_total{{op=\"{op}\"}} {}",
            Metrics::get(&o.errors)
        );
    }
    out.push_str("# HELP kv_request_duration_seconds Client request latency.\n# TYPE kv_request_duration_seconds histogram\n");
    for (op, o) in ops {
        histogram(out, op, &o.latency);
    }
}

/// What protects the node: TLS, authentication, the certificate's expiry.
fn security(out: &mut String, posture: &Posture) {
    gauge(
        out,
        "kv_tls_enabled",
        "1 when connections are TLS and nodes prove themselves by certificate.",
        u64::from(posture.tls),
    );
    gauge(
        out,
        "kv_auth_enabled",
        "1 when clients and operators must prove a role (token or client certificate).",
        u64::from(posture.authenticates),
    );
    gauge(
        out,
        "kv_insecure",
        "1 when the node was started with --insecure: anyone who reaches it may do anything.",
        u64::from(posture.insecure),
    );
    if let Some(expires) = posture.cert_expires {
        gauge(
            out,
            "kv_tls_certificate_expiry_timestamp_seconds",
            "When this node's certificate expires (Unix time); renew it before (kvctl certs node).",
            expires,
        );
    }
}

/// Quorums, repairs, siblings, hints and tombstone collection.
fn replication(out: &mut String, m: &Metrics, replica: &Replica<Engine>) {
    counter(
        out,
        "kv_quorum_failures_total",
        "Requests that missed their quorum.",
        Metrics::get(&m.quorum_failures),
    );
    counter(
        out,
        "kv_read_repairs_total",
        "Replicas repaired after a read.",
        Metrics::get(&m.read_repairs),
    );
    counter(
        out,
        "kv_anti_entropy_keys_repaired_total",
        "Keys changed by anti-entropy.",
        Metrics::get(&m.keys_repaired),
    );
    counter(
        out,
        "kv_siblings_returned_total",
        "Siblings returned by reads.",
        Metrics::get(&m.siblings_returned),
    );
    counter(
        out,
        "kv_reads_with_siblings_total",
        "Reads that returned more than one sibling.",
        Metrics::get(&m.reads_with_siblings),
    );
    let hints = replica.hints();
    gauge(
        out,
        "kv_hints_pending",
        "Hints held for other nodes.",
        hints.len() as u64,
    );
    counter(
        out,
        "kv_hints_stored_total",
        "Hints stored since start.",
        hints.stored(),
    );
    counter(
        out,
        "kv_hints_delivered_total",
        "Hints delivered since start.",
        Metrics::get(&m.hints_delivered),
    );
    gauge(
        out,
        "kv_hints_bytes",
        "Bytes of hinted states pending.",
        hints.bytes(),
    );
    counter(
        out,
        "kv_hints_expired_total",
        "Hints dropped unsent because they outlived the tombstone grace period.",
        hints.expired(),
    );
    gauge(
        out,
        "kv_quarantined_states",
        "Stored states set aside because they did not decode.",
        hints.quarantined(),
    );
    counter(
        out,
        "kv_tombstones_collected_total",
        "Tombstones collected by this node as their keys' coordinator.",
        Metrics::get(&m.tombstones_collected),
    );
    counter(
        out,
        "kv_replica_writes_hedged_total",
        "Replica writes also sent to a hinted fallback because the replica had not answered within the hedge delay.",
        Metrics::get(&m.replica_writes_hedged),
    );
    counter(
        out,
        "kv_replica_reads_hedged_total",
        "Reads that also asked the remaining replicas because those asked had not answered within the hedge delay.",
        Metrics::get(&m.replica_reads_hedged),
    );
    counter(
        out,
        "kv_reaps_unconfirmed_total",
        "Tombstone collections postponed because a replica did not confirm.",
        Metrics::get(&m.reaps_unconfirmed),
    );
}

/// Whether the node's storage accepts writes, and what it dropped.
fn health(out: &mut String, replica: &Replica<Engine>) {
    let health = replica.health();
    gauge(
        out,
        "kv_node_healthy",
        "1 while this node's storage accepts writes; 0 once it refuses them (the node then coordinates nothing and peers route around it).",
        u64::from(health.is_ok()),
    );
    gauge(
        out,
        "kv_node_epoch",
        "This start's epoch (the actor of the dots this node issues is the node in it).",
        u64::from(replica.actor().epoch()),
    );
    gauge(
        out,
        "kv_dots_issued",
        "The largest dot counter this node has issued in this epoch.",
        replica.issued(),
    );
    counter(
        out,
        "kv_siblings_dropped_total",
        "Siblings dropped by the sibling cap.",
        replica.siblings_dropped(),
    );
    counter(
        out,
        "kv_clock_entries_pruned_total",
        "Clock entries pruned.",
        replica.clock_entries_pruned(),
    );
}

/// The storage engine: memtables, tables and bytes per level, stalls, syncs.
fn engine(out: &mut String, engine: &Engine) {
    if let Ok(space) = engine.disk_space() {
        gauge(
            out,
            "kv_disk_available_bytes",
            "Bytes still usable on the file system of the node's data directory (when it fills, the engine refuses writes and the node steps aside).",
            space.available,
        );
        gauge(
            out,
            "kv_disk_size_bytes",
            "Size of the file system of the node's data directory.",
            space.total,
        );
    }
    let stats = engine.stats();
    gauge(
        out,
        "kv_lsm_memtable_bytes",
        "Bytes in memtables.",
        stats.memtable_bytes,
    );
    gauge(
        out,
        "kv_lsm_immutable_memtables",
        "Memtables waiting for flush.",
        stats.immutable_memtables as u64,
    );
    gauge(
        out,
        "kv_lsm_compaction_debt_bytes",
        "Bytes waiting to be compacted down (a full level 0, and each level over its target).",
        stats.compaction_debt_bytes,
    );
    out.push_str("# HELP kv_lsm_tables Tables per level.\n# TYPE kv_lsm_tables gauge\n");
    for (level, n) in stats.tables_per_level.iter().enumerate() {
        let _ = writeln!(out, "kv_lsm_tables{{level=\"{level}\"}} {n}");
    }
    out.push_str(
        "# HELP kv_lsm_level_bytes Table bytes per level.\n# TYPE kv_lsm_level_bytes gauge\n",
    );
    for (level, n) in stats.bytes_per_level.iter().enumerate() {
        let _ = writeln!(out, "kv_lsm_level_bytes{{level=\"{level}\"}} {n}");
    }
    counter(
        out,
        "kv_lsm_flushes_total",
        "Memtables flushed.",
        stats.flushes,
    );
    counter(
        out,
        "kv_lsm_compactions_total",
        "Compactions run.",
        stats.compactions,
    );
    counter(
        out,
        "kv_lsm_compaction_bytes_written_total",
        "Bytes written by compactions.",
        stats.compaction_bytes_written,
    );
    counter(
        out,
        "kv_lsm_write_stalls_total",
        "Writes that waited for flush or compaction.",
        stats.stalls,
    );
    counter(
        out,
        "kv_lsm_log_syncs_total",
        "Commit-log fsyncs.",
        stats.log_syncs,
    );
}

/// A per-peer metric: name, type, help, and its value for one peer.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&kv_coordinator::PeerRepair) -> Option<u64>,
);

/// Per peer: when anti-entropy last completed an exchange with it, what
/// differed then, and what it repaired.
fn anti_entropy(out: &mut String, coordinator: &NodeCoordinator) {
    let peers = coordinator.anti_entropy_peers();
    let families: [Family; 4] = [
        (
            "kv_anti_entropy_last_complete_timestamp_seconds",
            "gauge",
            "When the last anti-entropy exchange with the peer completed (Unix time); absent before the first.",
            |p| p.last_complete_unix,
        ),
        (
            "kv_anti_entropy_divergent_buckets",
            "gauge",
            "Merkle buckets that differed from the peer in the last exchange.",
            |p| Some(p.divergent_buckets as u64),
        ),
        (
            "kv_anti_entropy_peer_keys_repaired_total",
            "counter",
            "Keys repaired with the peer (changed here or pushed to it).",
            |p| Some(p.keys_repaired),
        ),
        (
            "kv_anti_entropy_exchange_failing",
            "gauge",
            "1 when the last anti-entropy exchange with the peer failed.",
            |p| Some(u64::from(p.last_error.is_some())),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (peer, repair) in &peers {
            if let Some(v) = value(repair) {
                let _ = writeln!(out, "{name}{{peer=\"{}\"}} {v}", peer.0);
            }
        }
    }
}

/// Members by state, the ring, hand-off.
fn membership(out: &mut String, cluster: &Cluster) {
    let status = cluster.status().ok();
    let members = status
        .as_ref()
        .map(|s| s.members.as_slice())
        .unwrap_or_default();
    out.push_str(
        "# HELP kv_members Members by state (as gossip reports them).\n# TYPE kv_members gauge\n",
    );
    for state in ["alive", "suspect", "dead", "left", "unknown"] {
        let count = members.iter().filter(|m| m.state == state).count();
        let _ = writeln!(out, "kv_members{{state=\"{state}\"}} {count}");
    }
    gauge(
        out,
        "kv_ring_epoch",
        "Epoch of the ring this node holds.",
        cluster.epoch(),
    );
    gauge(
        out,
        "kv_ring_members",
        "Nodes that own ranges.",
        members.iter().filter(|m| m.in_ring).count() as u64,
    );
    counter(
        out,
        "kv_handoff_keys_total",
        "Keys handed to their new replicas after a ring change.",
        cluster.handed_off(),
    );
}

/// How the HTTP endpoint protects itself.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// When set, every request needs `authorization: Bearer <token>` with
    /// a token of this table (any role).
    pub tokens: Option<TokenTable>,
    /// Connections served at once; more are closed as they arrive (64).
    pub max_connections: usize,
    /// Time a connection has to send a request's headers (5 s); a client
    /// that trickles them is disconnected.
    pub header_read_timeout: Duration,
    /// How often the status page's history samples the request counters
    /// (5 s).
    pub sample_every: Duration,
    /// The slow requests the status page and `/metrics` show (none
    /// recorded by default; `kvd` gives the one its log fills).
    pub slow_requests: crate::trace::SlowLog,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            tokens: None,
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            sample_every: crate::page::activity::SAMPLE_EVERY,
            slow_requests: crate::trace::SlowLog::default(),
        }
    }
}

impl HttpSettings {
    /// The settings a node's security asks for: a token when
    /// `http_token` is on.
    pub fn of(security: &Security) -> Self {
        HttpSettings {
            tokens: security.http_token.then(|| security.tokens.clone()),
            ..HttpSettings::default()
        }
    }
}

/// Whether a request may see the pages.
fn admitted(tokens: Option<&TokenTable>, headers: &HeaderMap) -> bool {
    let Some(tokens) = tokens else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| tokens.check(token.trim()).is_some())
}

fn refused() -> axum::response::Response {
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this node's metrics and status need `authorization: Bearer <token>`\n",
    )
        .into_response()
}

/// Serves `/metrics` and the status page (`/`) on `listener` until the
/// returned task is aborted: HTTP/1.1, at most
/// [`HttpSettings::max_connections`] connections, each with a header read
/// timeout, and a token when the settings ask for one.
pub fn serve(
    coordinator: Arc<NodeCoordinator>,
    cluster: Arc<Cluster>,
    listener: TcpListener,
    settings: HttpSettings,
) -> JoinHandle<()> {
    let (for_metrics, cluster_for_metrics) = (coordinator.clone(), cluster.clone());
    let slow = settings.slow_requests.clone();
    let (slow_for_metrics, slow_for_json) = (slow.clone(), slow.clone());
    let tokens = settings.tokens.clone();
    let tokens_for_metrics = tokens.clone();
    let tokens_for_json = tokens.clone();
    let activity = Arc::new(parking_lot::Mutex::new(Activity::default()));
    let for_json = (coordinator.clone(), cluster.clone(), activity.clone());
    let sampled = (coordinator.clone(), activity.clone());
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let (c, k) = (for_metrics.clone(), cluster_for_metrics.clone());
                let tokens = tokens_for_metrics.clone();
                let slow = slow_for_metrics.clone();
                async move {
                    if !admitted(tokens.as_ref(), &headers) {
                        return refused();
                    }
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render_metrics(&c, &k, &slow),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/",
            get(move |headers: HeaderMap| {
                let (c, k, a) = (coordinator.clone(), cluster.clone(), activity.clone());
                let tokens = tokens.clone();
                let slow = slow.clone();
                async move {
                    if !admitted(tokens.as_ref(), &headers) {
                        return refused();
                    }
                    let intervals = a.lock().intervals();
                    Html(render_status(&c, &k, &intervals, &slow)).into_response()
                }
            }),
        )
        .route(
            "/status.json",
            get(move |headers: HeaderMap| {
                let (c, k, a) = (for_json.0.clone(), for_json.1.clone(), for_json.2.clone());
                let tokens = tokens_for_json.clone();
                let slow = slow_for_json.clone();
                async move {
                    if !admitted(tokens.as_ref(), &headers) {
                        return refused();
                    }
                    let intervals = a.lock().intervals();
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        status_json(&c, &k, &intervals, &slow).to_string(),
                    )
                        .into_response()
                }
            }),
        );
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1)));
        let mut samples =
            tokio::time::interval(settings.sample_every.max(Duration::from_millis(10)));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = samples.tick() => {
                    let (c, a) = &sampled;
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    a.lock().sample(c.metrics(), now_ms);
                    continue;
                }
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection that died
                    // before it was accepted: wait a little, go on.
                    tracing::debug!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let timeout = settings.header_read_timeout;
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = connection.await;
                drop(slot);
            });
        }
    })
}
