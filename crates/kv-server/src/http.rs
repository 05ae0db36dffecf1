//! Metrics (Prometheus text format) and a status page over HTTP.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use kv_coordinator::{Histogram, Metrics, OpMetrics};
use kv_core::Partitioner;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::service::NodeCoordinator;

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
pub fn render_metrics(coordinator: &NodeCoordinator) -> String {
    let m = coordinator.metrics();
    let mut out = String::with_capacity(8 << 10);
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
        histogram(&mut out, op, &o.latency);
    }
    counter(
        &mut out,
        "kv_quorum_failures_total",
        "Requests that missed their quorum.",
        Metrics::get(&m.quorum_failures),
    );
    counter(
        &mut out,
        "kv_read_repairs_total",
        "Replicas repaired after a read.",
        Metrics::get(&m.read_repairs),
    );
    counter(
        &mut out,
        "kv_anti_entropy_keys_repaired_total",
        "Keys changed by anti-entropy.",
        Metrics::get(&m.keys_repaired),
    );
    counter(
        &mut out,
        "kv_siblings_returned_total",
        "Siblings returned by reads.",
        Metrics::get(&m.siblings_returned),
    );
    counter(
        &mut out,
        "kv_reads_with_siblings_total",
        "Reads that returned more than one sibling.",
        Metrics::get(&m.reads_with_siblings),
    );
    let replica = coordinator.replica();
    let hints = replica.hints();
    gauge(
        &mut out,
        "kv_hints_pending",
        "Hints held for other nodes.",
        hints.len() as u64,
    );
    counter(
        &mut out,
        "kv_hints_stored_total",
        "Hints stored since start.",
        hints.stored(),
    );
    counter(
        &mut out,
        "kv_hints_delivered_total",
        "Hints delivered since start.",
        Metrics::get(&m.hints_delivered),
    );
    counter(
        &mut out,
        "kv_siblings_dropped_total",
        "Siblings dropped by the sibling cap.",
        replica.siblings_dropped(),
    );
    counter(
        &mut out,
        "kv_clock_entries_pruned_total",
        "Clock entries pruned.",
        replica.clock_entries_pruned(),
    );
    let stats = replica.engine().stats();
    gauge(
        &mut out,
        "kv_lsm_memtable_bytes",
        "Bytes in memtables.",
        stats.memtable_bytes,
    );
    gauge(
        &mut out,
        "kv_lsm_immutable_memtables",
        "Memtables waiting for flush.",
        stats.immutable_memtables as u64,
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
        &mut out,
        "kv_lsm_flushes_total",
        "Memtables flushed.",
        stats.flushes,
    );
    counter(
        &mut out,
        "kv_lsm_compactions_total",
        "Compactions run.",
        stats.compactions,
    );
    counter(
        &mut out,
        "kv_lsm_compaction_bytes_written_total",
        "Bytes written by compactions.",
        stats.compaction_bytes_written,
    );
    counter(
        &mut out,
        "kv_lsm_write_stalls_total",
        "Writes that waited for flush or compaction.",
        stats.stalls,
    );
    counter(
        &mut out,
        "kv_lsm_log_syncs_total",
        "Commit-log fsyncs.",
        stats.log_syncs,
    );
    let members = coordinator.ring().nodes();
    let alive = members.iter().filter(|&&n| coordinator.is_alive(n)).count();
    out.push_str("# HELP kv_members Members by state.\n# TYPE kv_members gauge\n");
    let _ = writeln!(out, "kv_members{{state=\"alive\"}} {alive}");
    let _ = writeln!(
        out,
        "kv_members{{state=\"down\"}} {}",
        members.len() - alive
    );
    out
}

/// The status page: members, ring ownership, hints, anti-entropy figures.
pub fn render_status(coordinator: &NodeCoordinator) -> String {
    let me = coordinator.replica().id();
    let ownership = coordinator.ring().ownership();
    let replicated = coordinator
        .ring()
        .replicated_ownership(coordinator.config().n)
        .unwrap_or_default();
    let m = coordinator.metrics();
    let mut rows = String::new();
    for node in coordinator.ring().nodes() {
        let _ = write!(
            rows,
            "<tr><td>{node}{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td></tr>",
            if node == me { " (this node)" } else { "" },
            if coordinator.is_alive(node) {
                "alive"
            } else {
                "down"
            },
            ownership.get(&node).copied().unwrap_or(0.0) * 100.0,
            replicated.get(&node).copied().unwrap_or(0.0) * 100.0,
        );
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kv node {me}</title></head><body>\
         <h1>kv node {me}</h1>\
         <h2>Members</h2><table border=\"1\"><tr><th>node</th><th>state</th><th>primary share</th><th>replicated share</th></tr>{rows}</table>\
         <h2>Hints</h2><p>{} pending, {} stored, {} delivered</p>\
         <h2>Anti-entropy</h2><p>{} keys repaired; {} read repairs</p>\
         <h2>Requests</h2><p>{} gets, {} puts, {} deletes, {} quorum failures</p>\
         <p><a href=\"/metrics\">metrics</a></p></body></html>",
        coordinator.replica().hints().len(),
        coordinator.replica().hints().stored(),
        Metrics::get(&m.hints_delivered),
        Metrics::get(&m.keys_repaired),
        Metrics::get(&m.read_repairs),
        Metrics::get(&m.get.requests),
        Metrics::get(&m.put.requests),
        Metrics::get(&m.delete.requests),
        Metrics::get(&m.quorum_failures),
    )
}

/// Serves `/metrics` and `/` on `listener` until the task is aborted.
pub fn serve(coordinator: Arc<NodeCoordinator>, listener: TcpListener) -> JoinHandle<()> {
    let for_metrics = coordinator.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let c = for_metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        render_metrics(&c),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/",
            get(move || {
                let c = coordinator.clone();
                async move { Html(render_status(&c)) }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}
