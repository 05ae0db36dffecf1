//! The monitoring files shipped in `deploy/` against real nodes: every
//! metric the alert rules and the Grafana dashboard name is one a secured
//! `kvd` exports, every alert links to a runbook section that exists, and
//! the dashboard is well formed. (`.ci/run` also runs `promtool check
//! rules` and `promtool test rules` on the rules.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::process::{Nodes, eventually, free_ports};
use crate::security::{http_get, make_creds, secured_kvd, three_alive};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `kv_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("kv_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The anchors of a Markdown file's headings, as GitHub makes them.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(|title| {
            title
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_links_to_a_runbook_and_the_dashboard_is_well_formed() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/kv-alerts.yml")).unwrap();
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let sections = anchors(&operations);
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: \"docs/operations.md#"))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    assert_eq!(links.len(), alerts.len(), "one runbook link per alert");
    for link in &links {
        assert!(
            sections.contains(*link),
            "no section #{link} in docs/operations.md"
        );
    }

    let text = std::fs::read_to_string(root().join("deploy/grafana/kv-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut charts = 0;
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids repeat"
        );
        assert!(!panel["title"].as_str().unwrap().is_empty());
        if panel["type"] == "row" {
            continue;
        }
        charts += 1;
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("job=\"$job\""),
                "{expr}: not scoped to the job"
            );
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{expr}"
            );
        }
    }
    assert!(charts >= 15, "{charts} charts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_name_only_metrics_a_secured_node_exports() {
    let dir = tempfile::tempdir().unwrap();
    let creds = make_creds(dir.path(), 3);
    let ports = free_ports(4);
    let http = format!("127.0.0.1:{}", ports[3]);
    let node_ports = &ports[..3];
    let _nodes = Nodes(
        (1..=3)
            .map(|id| {
                let mut extra = vec!["--anti-entropy-interval-ms", "300"];
                if id == 1 {
                    extra.extend(["--http", http.as_str()]);
                }
                secured_kvd(id, node_ports, dir.path(), &creds, &extra)
            })
            .collect(),
    );
    three_alive(&creds.token(&creds.admin), node_ports[0]).await;
    // Per-peer anti-entropy series appear after a first exchange.
    let exchanged = |m: &str| {
        (2..=3).all(|peer| {
            m.contains(&format!(
                "kv_anti_entropy_last_complete_timestamp_seconds{{peer=\"{peer}\"}}"
            ))
        })
    };
    eventually(30, "an anti-entropy exchange with each peer", || async {
        exchanged(&http_get(&http, Some(&creds.read)).await)
    })
    .await;
    let metrics = http_get(&http, Some(&creds.read)).await;
    assert!(exchanged(&metrics), "{metrics}");
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    assert!(
        exported.contains("kv_disk_available_bytes") && exported.contains("kv_disk_size_bytes")
    );
    for file in [
        "deploy/prometheus/kv-alerts.yml",
        "deploy/grafana/kv-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let named = metric_names(&text);
        assert!(named.len() >= 10, "{file}: {named:?}");
        for name in named {
            assert!(
                exported.contains(&name),
                "{file} names {name}, which no node exports"
            );
        }
    }
}

/// Each node's status page links to the other nodes' pages: a node
/// announces where its page is on its calls to peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_page_links_to_the_other_nodes_pages() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(6);
    let (node_ports, http_ports) = ports.split_at(3);
    let base = crate::process::members(node_ports, 3);
    let _nodes = Nodes(
        (1..=3)
            .map(|id| {
                let mut extra = base.clone();
                extra.extend([
                    "--http".to_string(),
                    format!("127.0.0.1:{}", http_ports[id - 1]),
                ]);
                crate::process::kvd(id, node_ports, dir.path(), &extra)
            })
            .collect(),
    );
    let page_of = |port: u16| format!("http://127.0.0.1:{port}/");
    for (me, &port) in http_ports.iter().enumerate() {
        let addr = format!("127.0.0.1:{port}");
        eventually(30, "links to both peers' pages", || {
            let addr = addr.clone();
            async move {
                let Some(json) = status_json(&addr).await else {
                    return false;
                };
                json["members"].as_array().is_some_and(|members| {
                    members.len() == 3
                        && members.iter().all(|m| {
                            let id = m["id"].as_u64().unwrap_or(0) as usize;
                            id == me + 1 || m["page"] == page_of(http_ports[id - 1]).as_str()
                        })
                })
            }
        })
        .await;
        let page = http_page(&addr, "/").await.unwrap();
        for (other, &p) in http_ports.iter().enumerate() {
            let link = format!("<a href=\"{}\">", page_of(p));
            assert_eq!(page.contains(&link), other != me, "{page}");
        }
        assert!(page.contains("<a href=\"/\">this page</a>"), "{page}");
    }
}

/// The body of `path` from the HTTP listener at `addr`; `None` while it
/// does not answer.
async fn http_page(addr: &str, path: &str) -> Option<String> {
    let response = crate::process::try_get(addr, path).await?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

async fn status_json(addr: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&http_page(addr, "/status.json").await?).ok()
}
