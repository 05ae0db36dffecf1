//! A node's status page (`/`) and its data for scripts (`/status.json`):
//! the cluster as this node sees it, warnings in plain words, the last
//! minutes of requests as charts, hints, anti-entropy and storage. The page
//! is self-contained (inline CSS and SVG, no script, nothing fetched) and
//! reloads itself every few seconds.

pub mod activity;

use std::fmt::Write as _;

use kv_coordinator::Metrics;

use crate::cluster::Cluster;
use crate::proto::StatusReply;
use crate::service::NodeCoordinator;
use crate::trace::SlowLog;
use activity::{Interval, OPS};

/// `text` made safe inside HTML or SVG text and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Hints counted per target on the page up to this many (the count
/// scans them; `kvctl hints` counts any number).
const HINTS_COUNTED: usize = 50_000;

/// Hints pending per target node, when there are few enough to count
/// on a page load; `None` otherwise.
fn hints_per_target(coordinator: &NodeCoordinator) -> Option<Vec<(kv_core::NodeId, u64)>> {
    let hints = coordinator.replica().hints();
    if hints.len() > HINTS_COUNTED {
        return None;
    }
    hints.counts().ok()
}

/// A disk with less than this share left is worth a warning.
const DISK_LOW: f64 = 0.2;

/// The warning for member `m`, which gossip holds dead, in the cluster
/// `status` describes: its writes go to fallback nodes with hints only
/// where the ring has a node beyond a range's N (members that left count
/// for nothing).
fn dead_member(m: &crate::proto::MemberStatus, status: &StatusReply) -> String {
    let members = status.members.iter().filter(|m| m.state != "left").count();
    let n = status.n;
    let fate = if members > n as usize {
        "and to fallback nodes, which hold hints for it.".to_string()
    } else {
        format!(
            "only (with {members} nodes for {n} replicas no node is left to hold hints); anti-entropy brings it up to date when it is back."
        )
    };
    format!(
        "Node {} ({}) is down as gossip sees it: writes for its ranges go to their other replicas {fate}",
        m.id, m.addr
    )
}

/// What an operator should look at on this node now, in plain words (none
/// when all is well).
pub fn warnings(
    coordinator: &NodeCoordinator,
    cluster: &Cluster,
    status: Option<&StatusReply>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = coordinator.replica().health() {
        out.push(format!(
            "This node's storage refuses writes ({e}): it coordinates nothing until it is restarted with its storage fixed; its peers route around it."
        ));
    }
    if let Some(w) = cluster.outside_ring() {
        out.push(w);
    }
    if cluster.posture().insecure {
        out.push("This node runs with --insecure: no TLS and no authentication; anyone who reaches it can read, write and change the cluster.".into());
    }
    for (m, s) in status
        .iter()
        .flat_map(|s| s.members.iter().map(move |m| (m, s)))
    {
        match m.state.as_str() {
            "dead" => out.push(dead_member(m, s)),
            "suspect" => out.push(format!(
                "Node {} ({}) is suspected down: it missed its gossip rounds.",
                m.id, m.addr
            )),
            _ => {}
        }
        if m.unhealthy {
            out.push(format!(
                "Node {} ({}) says its storage refuses writes.",
                m.id, m.addr
            ));
        }
    }
    let hints = coordinator.replica().hints();
    if !hints.is_empty() {
        out.push(format!(
            "{} hints are held here for nodes that were unreachable (kvctl hints shows for whom); hints older than the grace period are dropped.",
            hints.len()
        ));
    }
    for (peer, r) in coordinator.anti_entropy_peers() {
        if let Some(e) = &r.last_error {
            out.push(format!("Anti-entropy with node {peer} fails: {e}"));
        }
    }
    let engine = coordinator.replica().engine();
    if let Ok(space) = engine.disk_space()
        && space.total > 0
        && (space.available as f64) < DISK_LOW * space.total as f64
    {
        out.push(format!(
            "The data disk has {:.0}% left: compaction needs headroom, and a full disk makes the node refuse writes.",
            100.0 * space.available as f64 / space.total as f64
        ));
    }
    let stats = engine.stats();
    if stats.immutable_memtables > 1 {
        out.push(format!(
            "{} memtables wait for a flush: the disk is not keeping up with writes.",
            stats.immutable_memtables
        ));
    }
    out
}

/// The status page.
pub fn render_status(
    coordinator: &NodeCoordinator,
    cluster: &Cluster,
    intervals: &[Interval],
    slow: &SlowLog,
) -> String {
    let me = coordinator.replica().id();
    let ring = coordinator.ring().current();
    let primary = ring.ownership();
    let m = coordinator.metrics();
    let status = cluster.status().ok();
    let mut rows = String::new();
    for member in status.iter().flat_map(|s| &s.members) {
        let node = kv_core::NodeId(member.id);
        let class = match member.state.as_str() {
            "alive" if !member.unhealthy => "ok",
            "alive" | "suspect" => "warn",
            _ => "bad",
        };
        let page = if node == me {
            "<a href=\"/\">this page</a>".to_string()
        } else {
            cluster.peer_page(node).map_or("-".to_string(), |p| {
                format!("<a href=\"http://{0}/\">{0}</a>", escape(&p))
            })
        };
        let _ = write!(
            rows,
            "<tr><td>{node}{}</td><td>{}</td><td class=\"{class}\">{}{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}%</td><td>{page}</td></tr>",
            if node == me { " (this node)" } else { "" },
            escape(&member.addr),
            escape(&member.state),
            if member.unhealthy {
                ", storage failing"
            } else {
                ""
            },
            escape(member.zone.as_deref().unwrap_or("-")),
            primary.get(&node).copied().unwrap_or(0.0) * 100.0,
            member.owned * 100.0,
        );
    }
    let warnings = warnings(coordinator, cluster, status.as_ref());
    let warned = if warnings.is_empty() {
        "<p class=\"ok\">No warnings.</p>".to_string()
    } else {
        let items: String = warnings
            .iter()
            .map(|w| format!("<li>{}</li>", escape(w)))
            .collect();
        format!("<ul class=\"warnings\">{items}</ul>")
    };
    let health = match coordinator.replica().health() {
        Ok(()) => format!("healthy; epoch {}", coordinator.replica().actor().epoch()),
        Err(e) => format!("<b>UNHEALTHY</b>: {}", escape(&e.to_string())),
    };
    let now = kv_core::unix_secs();
    let mut repairs = String::new();
    for (peer, r) in coordinator.anti_entropy_peers() {
        let _ = write!(
            repairs,
            "<tr><td>n{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            peer.0,
            r.last_complete_unix
                .map_or("never".to_string(), |t| format!(
                    "{} s ago",
                    now.saturating_sub(t)
                )),
            r.divergent_buckets,
            r.keys_repaired,
            escape(r.last_error.as_deref().unwrap_or("-")),
        );
    }
    let posture = cluster.posture();
    let security = if posture.insecure {
        "INSECURE (--insecure)".to_string()
    } else {
        format!(
            "TLS {}; clients {}",
            if posture.tls {
                "on"
            } else {
                "off (loopback only)"
            },
            if posture.authenticates {
                "authenticated"
            } else {
                "not authenticated"
            }
        )
    };
    let engine = coordinator.replica().engine();
    let stats = engine.stats();
    let disk = engine.disk_space().map_or("unknown".to_string(), |s| {
        format!(
            "{:.1} of {:.1} GiB free",
            s.available as f64 / f64::from(1u32 << 30),
            s.total as f64 / f64::from(1u32 << 30)
        )
    });
    let levels: Vec<String> = stats
        .tables_per_level
        .iter()
        .map(usize::to_string)
        .collect();
    let hints = coordinator.replica().hints();
    let targets = match hints_per_target(coordinator) {
        Some(counts) if counts.is_empty() => String::new(),
        Some(counts) => {
            let each: Vec<String> = counts.iter().map(|(n, c)| format!("{n}: {c}")).collect();
            format!("<p>held for {}</p>", each.join(", "))
        }
        None => format!(
            "<p class=\"s\">More than {HINTS_COUNTED} hints: <code>kvctl hints</code> counts them per target.</p>"
        ),
    };
    let requests: Vec<String> = [(&m.get, OPS[0]), (&m.put, OPS[1]), (&m.delete, OPS[2])]
        .iter()
        .map(|(op, name)| {
            format!(
                "{} {name}s ({} failed)",
                Metrics::get(&op.requests),
                Metrics::get(&op.errors)
            )
        })
        .collect();
    let charts = activity::charts(intervals);
    let slow = slow_section(slow);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>kv node {me}</title><style>{STYLE}</style></head><body>\
         <h1>kv node {me}</h1><p>{health}; {security}; ring epoch {}, N={}</p>\
         <h2>Warnings</h2>{warned}\
         <h2>Recent activity</h2><p class=\"s\">{}; requests this node coordinated</p><div class=\"charts\">{charts}</div>\
         <p>{}; {} quorum failures</p>\
         <h2>Members</h2><table><tr><th>node</th><th>address</th><th>state</th><th>zone</th><th>primary share</th><th>replicated share</th><th>status page</th></tr>{rows}</table>\
         <h2>Hints</h2><p>{} pending ({} bytes), {} stored, {} delivered, {} expired; {} states quarantined</p>{targets}\
         <h2>Anti-entropy</h2><p>{} keys repaired; {} read repairs; {} keys handed off after ring changes</p>\
         <table><tr><th>peer</th><th>last complete exchange</th><th>buckets different then</th><th>keys repaired</th><th>last error</th></tr>{repairs}</table>\
         <h2>Storage</h2><p>memtable {} KiB, {} waiting for flush; tables per level [{}]; compaction debt {} KiB; {} flushes, {} compactions, {} write stalls; disk {disk}</p>\
         <h2>Slow requests</h2>{slow}\
         <p><a href=\"/metrics\">metrics</a> · <a href=\"/status.json\">status.json</a></p></body></html>",
        cluster.epoch(),
        coordinator.config().n,
        match (intervals.first(), intervals.last()) {
            (Some(first), Some(last)) if intervals.len() > 1 => format!(
                "{} intervals over the last {:.0} s",
                intervals.len(),
                (last.at_ms - first.at_ms) as f64 / 1000.0
            ),
            (Some(_), _) => "one interval so far".to_string(),
            _ =>
                "no interval yet (the first comes a few seconds after the node starts)".to_string(),
        },
        requests.join(", "),
        Metrics::get(&m.quorum_failures),
        hints.len(),
        hints.bytes(),
        hints.stored(),
        Metrics::get(&m.hints_delivered),
        hints.expired(),
        hints.quarantined(),
        Metrics::get(&m.keys_repaired),
        Metrics::get(&m.read_repairs),
        cluster.handed_off(),
        stats.memtable_bytes / 1024,
        stats.immutable_memtables,
        levels.join(", "),
        stats.compaction_debt_bytes / 1024,
        stats.flushes,
        stats.compactions,
        stats.stalls,
    )
}

/// The slow requests: how many, and the last few with their span trees.
fn slow_section(slow: &SlowLog) -> String {
    let Some(threshold) = slow.threshold() else {
        return "<p class=\"s\">Not recorded by this node: kvd records them unless \
                slow_request_ms is 0; a program that embeds the node installs \
                kv_server::trace::SlowRequests.</p>"
            .to_string();
    };
    let recent = slow.recent();
    let traced = match slow.one_in() {
        0 => "none of the requests are traced (trace_every = 0)".to_string(),
        1 => "every request is traced".to_string(),
        n => format!("one request in {n} is traced"),
    };
    let mut out = format!(
        "<p>{} traced requests took {} ms or longer since the node started ({traced}){}</p>",
        slow.total(),
        threshold.as_millis(),
        if recent.is_empty() {
            "."
        } else {
            "; the last ones, newest first:"
        }
    );
    let now_ms = kv_core::unix_secs() * 1000;
    for s in recent.iter().take(5) {
        let _ = write!(
            out,
            "<pre class=\"s\">{} s ago: {}</pre>",
            now_ms.saturating_sub(s.at_unix_ms) / 1000,
            escape(&s.tree)
        );
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}\
.ok{color:#2a7a2a}.warn{color:#b36b00}.bad{color:#c00;font-weight:bold}\
.warnings li{color:#b00}.charts{display:flex;flex-wrap:wrap;gap:12px}\
.chart{border:1px solid #ddd;background:#fafafa}.chart .t{font-size:11px;font-weight:bold}\
.chart .s,.s{font-size:10px;color:#666}.axis{stroke:#bbb}";

/// The page's data for scripts.
pub fn status_json(
    coordinator: &NodeCoordinator,
    cluster: &Cluster,
    intervals: &[Interval],
    slow: &SlowLog,
) -> serde_json::Value {
    use serde_json::json;
    let status = cluster.status().ok();
    let m = coordinator.metrics();
    let ring = coordinator.ring().current();
    let primary = ring.ownership();
    let members: Vec<_> = status
        .iter()
        .flat_map(|s| &s.members)
        .map(|mb| {
            json!({
                "id": mb.id, "addr": mb.addr, "state": mb.state, "zone": mb.zone,
                "in_ring": mb.in_ring, "unhealthy": mb.unhealthy,
                "page": cluster.peer_page(kv_core::NodeId(mb.id)).map(|p| format!("http://{p}/")),
                "primary_share": primary.get(&kv_core::NodeId(mb.id)).copied().unwrap_or(0.0),
                "replicated_share": mb.owned,
            })
        })
        .collect();
    let peers: Vec<_> = coordinator
        .anti_entropy_peers()
        .into_iter()
        .map(|(peer, r)| {
            json!({
                "peer": peer.0, "last_complete_unix": r.last_complete_unix,
                "divergent_buckets": r.divergent_buckets, "keys_repaired": r.keys_repaired,
                "last_error": r.last_error,
            })
        })
        .collect();
    let engine = coordinator.replica().engine();
    let stats = engine.stats();
    let disk = engine.disk_space().ok();
    let hints = coordinator.replica().hints();
    let op = |o: &kv_coordinator::OpMetrics| json!({"total": Metrics::get(&o.requests), "errors": Metrics::get(&o.errors)});
    let activity: Vec<_> = intervals
        .iter()
        .map(|i| {
            let mut entry = json!({ "at_unix_ms": i.at_ms });
            for (name, r) in OPS.iter().zip(i.ops.iter()) {
                entry[*name] = json!({
                    "per_sec": r.per_sec, "errors_per_sec": r.errors_per_sec,
                    "p50_us": r.p50_us, "p99_us": r.p99_us,
                });
            }
            entry
        })
        .collect();
    json!({
        "node": coordinator.replica().id().0,
        "epoch": coordinator.replica().actor().epoch(),
        "healthy": coordinator.replica().health().is_ok(),
        "warnings": warnings(coordinator, cluster, status.as_ref()),
        "ring_epoch": cluster.epoch(),
        "n": coordinator.config().n,
        "members": members,
        "requests": {"get": op(&m.get), "put": op(&m.put), "delete": op(&m.delete), "quorum_failures": Metrics::get(&m.quorum_failures)},
        "activity": activity,
        "hints": {
            "per_target": hints_per_target(coordinator).map(|counts| counts.iter().map(|(n, c)| json!({"node": n.0, "pending": c})).collect::<Vec<_>>()),
            "pending": hints.len(), "bytes": hints.bytes(), "stored": hints.stored(),
            "delivered": Metrics::get(&m.hints_delivered), "expired": hints.expired(),
            "quarantined": hints.quarantined(),
        },
        "anti_entropy": peers,
        "storage": {
            "memtable_bytes": stats.memtable_bytes, "immutable_memtables": stats.immutable_memtables,
            "tables_per_level": stats.tables_per_level, "flushes": stats.flushes,
            "compactions": stats.compactions, "write_stalls": stats.stalls,
            "compaction_debt_bytes": stats.compaction_debt_bytes,
            "disk_available_bytes": disk.map(|d| d.available), "disk_size_bytes": disk.map(|d| d.total),
        },
        "slow_requests": {
            "threshold_ms": slow.threshold().map(|t| t.as_millis() as u64),
            "trace_every": slow.one_in(),
            "total": slow.total(),
            "recent": slow.recent().iter().map(|s| json!({
                "at_unix_ms": s.at_unix_ms, "op": s.op, "took_ms": s.took.as_secs_f64() * 1000.0,
                "outcome": s.outcome, "tree": s.tree,
            })).collect::<Vec<_>>(),
        },
        "security": {"tls": cluster.posture().tls, "authenticates": cluster.posture().authenticates, "insecure": cluster.posture().insecure},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_member_is_said_to_have_hints_only_where_a_fallback_node_exists() {
        let member = |id: u64, state: &str| crate::proto::MemberStatus {
            id,
            addr: format!("10.0.0.{id}:7001"),
            state: state.into(),
            ..Default::default()
        };
        let cluster = |states: &[&str]| StatusReply {
            n: 3,
            members: (1..)
                .zip(states)
                .map(|(id, state)| member(id, state))
                .collect(),
            ..Default::default()
        };
        let dead = member(4, "dead");
        let with_fallbacks = dead_member(&dead, &cluster(&["alive", "alive", "alive", "dead"]));
        assert!(with_fallbacks.starts_with("Node 4 (10.0.0.4:7001) is down"));
        assert!(
            with_fallbacks.contains("hold hints for it"),
            "{with_fallbacks}"
        );
        // Three members, or four of which one left: no node beyond N.
        for (states, members) in [
            (&["alive", "alive", "dead"][..], 3),
            (&["alive", "alive", "left", "dead"][..], 3),
            (&["alive", "dead"][..], 2),
        ] {
            let without = dead_member(&dead, &cluster(states));
            assert!(!without.contains("hold hints for it"), "{without}");
            assert!(
                without.contains(&format!(
                    "with {members} nodes for 3 replicas no node is left to hold hints"
                )),
                "{without}"
            );
        }
    }
}
