//! Request tracing on real processes: a request slowed by a replica that
//! stops answering is logged with its span tree (coordinator, engine,
//! replicas), counted in `/metrics` and shown on the status page.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kv_server::proto::{GetRequest, PutRequest};

use crate::process::{Nodes, connect, eventually, free_ports, kvd, kvd_command, members, try_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slowed_by_a_stopped_replica_is_logged_with_its_span_tree() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let http = format!("127.0.0.1:{}", ports[3]);
    let mut extra = members(&ports[..3], 3);
    extra.extend(
        [
            "--slow-request-ms",
            "20",
            "--trace-every",
            "1",
            "--hedge-floor-ms",
            "50",
        ]
        .map(String::from),
    );
    let log_path = dir.path().join("n1.log");
    let mut first = extra.clone();
    first.extend(["--http".to_string(), http.clone()]);
    let node1 = kvd_command(1, &ports, dir.path(), &first)
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let mut nodes = Nodes(vec![node1]);
    nodes.extend((2..=3).map(|id| kvd(id, &ports, dir.path(), &extra)));
    let mut client = connect(ports[0]).await;
    for p in &ports[1..3] {
        connect(*p).await;
    }
    let json = || async {
        let response = try_get(&http, "/status.json").await.unwrap_or_default();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
    };
    eventually(20, "three members alive", || async {
        let j = json().await;
        j["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["state"] == "alive"))
    })
    .await;
    for i in 0..50 {
        let key = format!("t{i}").into_bytes();
        client
            .put(PutRequest {
                key,
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Node 3 stops answering (SIGSTOP) while node 1 still believes it
    // alive: reads that ask it wait for the hedge, requests forwarded to
    // it wait for their timeout.
    let pid = nodes[2].id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let until = Instant::now() + Duration::from_secs(2);
    let mut reads = Vec::new();
    for i in 0..50 {
        let mut c = client.clone();
        reads.push(tokio::spawn(async move {
            c.get(GetRequest {
                key: format!("t{i}").into_bytes(),
                ..Default::default()
            })
            .await
        }));
        if Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in reads {
        let _ = r.await;
    }
    signal("-CONT");
    let j = json().await;
    let slow = &j["slow_requests"];
    assert_eq!(slow["threshold_ms"], 20, "{j}");
    assert_eq!(slow["trace_every"], 1, "{j}");
    assert!(slow["total"].as_u64() >= Some(1), "{j}");
    let recent = slow["recent"].as_array().unwrap();
    // One of them waited on node 3: its tree names the request, the
    // coordinator's own engine and node 3 as a replica asked or the
    // coordinator forwarded to.
    let involved = recent.iter().find(|r| {
        let tree = r["tree"].as_str().unwrap_or_default();
        tree.contains("ask peer=3") || tree.contains("forward to=3")
    });
    let Some(found) = involved else {
        panic!("no slow request waited on node 3: {j}");
    };
    let tree = found["tree"].as_str().unwrap();
    assert!(tree.starts_with("slow request: get key_hash="), "{tree}");
    assert!(found["took_ms"].as_f64() >= Some(20.0), "{found}");
    if tree.contains("ask peer=3") {
        // Read here: the quorum and the replicas, the local engine read,
        // and node 3's ask.
        assert!(
            tree.lines().next().unwrap().contains(" r=2 replicas=[n"),
            "{tree}"
        );
        assert!(tree.contains("engine_read outcome=ok"), "{tree}");
    }
    // The same in the log and in /metrics.
    let metrics = try_get(&http, "/metrics").await.unwrap();
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kv_slow_requests_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(counted >= slow["total"].as_u64(), "{metrics}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("slow request: get key_hash="), "{log}");
    let page = try_get(&http, "/").await.unwrap();
    assert!(page.contains("<h2>Slow requests</h2>"), "{page}");
    assert!(
        page.contains(
            "traced requests took 20 ms or longer since the node started (every request is traced)"
        ),
        "{page}"
    );
}

/// A kvd built without the `otel` feature refuses an OTLP endpoint and
/// says how to get one that exports, instead of ignoring it.
#[cfg(not(feature = "otel"))]
#[test]
fn a_kvd_without_the_otel_feature_refuses_an_otlp_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(1);
    let mut extra = members(&ports, 1);
    extra.extend(["--otlp-endpoint", "http://127.0.0.1:4317"].map(String::from));
    let out = kvd_command(1, &ports, dir.path(), &extra)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without OpenTelemetry export"), "{err}");
    assert!(err.contains("--features otel"), "{err}");
}
