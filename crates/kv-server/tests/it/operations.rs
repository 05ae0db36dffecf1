//! An operator's days, on real `kvd` processes: a node whose disk was
//! replaced repaired on demand (`kvctl repair`).

use std::process::Command;

use crate::process::{Nodes, connect, free_ports, kvd, members, stores, write_keys};

/// Runs `kvctl` against the node on `port`; returns stdout, stderr and
/// whether it succeeded.
pub(crate) fn kvctl(port: u16, args: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--node")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_repair_refills_a_node_whose_disk_was_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    // Background anti-entropy is off in practice (once in ten minutes):
    // only the operator's repair can refill node 3.
    let mut extra = members(&ports, 3);
    extra.extend([
        "--anti-entropy-interval-ms".to_string(),
        "600000".to_string(),
    ]);
    let mut children = Nodes(
        (1..=3)
            .map(|id| kvd(id, &ports, dir.path(), &extra))
            .collect(),
    );
    for &p in &ports {
        connect(p).await;
    }
    let mut writer = connect(ports[0]).await;
    let keys = write_keys(&mut writer, "repair", 3).await;
    children[2].kill().unwrap();
    children[2].wait().unwrap();
    std::fs::remove_dir_all(dir.path().join("n3")).unwrap();
    children[2] = kvd(3, &ports, dir.path(), &extra);
    connect(ports[2]).await;
    let mut held = 0;
    for (i, key) in keys.iter().enumerate() {
        held += usize::from(stores(ports[2], key, &(i as u32).to_le_bytes()).await);
    }
    assert_eq!(held, 0, "node 3 starts empty");

    // A peer that is not in the ring is refused, clearly.
    let (_, err, ok) = kvctl(ports[2], &["repair", "--peer", "9"]);
    assert!(!ok && err.contains("not a peer"), "{err}");

    let (out, err, ok) = kvctl(ports[2], &["repair"]);
    assert!(ok, "{out}{err}");
    for peer in [1, 2] {
        assert!(out.contains(&format!("peer {peer}: repaired")), "{out}");
    }
    // Progress went to stderr, one final line per peer at least.
    assert!(
        err.contains("(2/2)") && err.contains("keys pulled"),
        "{err}"
    );
    for (i, key) in keys.iter().enumerate() {
        assert!(
            stores(ports[2], key, &(i as u32).to_le_bytes()).await,
            "node 3 holds key {i} after the repair"
        );
    }
    // Nothing is left to do: a second repair, as JSON, changes nothing.
    let (out, err, ok) = kvctl(ports[2], &["--json", "repair"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["keys_changed"], 0, "{line}");
        assert_eq!(line["keys_pushed"], 0, "{line}");
    }
    drop(children);
}
