//! An operator's days, on real `kvd` processes: a node whose disk was
//! replaced repaired on demand (`kvctl repair`); a dead node removed from
//! another (`kvctl remove`), its ranges and hints finding new owners; a new
//! machine taking a dead node's place (`kvd --replace`); a node restored
//! from a snapshot (`kvctl snapshot`) after it lost its disk; two removals
//! of one node at once through two nodes.

use std::process::Command;

use kv_server::proto::{Empty, GetRequest};

use crate::process::{
    connect, eventually, free_ports, kvd, lose_disk, start_cluster, status, stores, write_keys,
};

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
    let (mut children, extra) = start_cluster(&ports, 3, dir.path(), 600000).await;
    let mut writer = connect(ports[0]).await;
    let keys = write_keys(&mut writer, "repair", 3).await;
    // The survivors agree first: a write the helper sent twice (after a
    // timeout) can leave nodes 1 and 2 with different states until
    // anti-entropy, and node 3's repair syncs with one peer and then the
    // other, so the first would not get what only the second held, and
    // the check below that nothing is left to do would fail on that.
    let (out, err, ok) = kvctl(ports[0], &["repair", "--peer", "2"]);
    assert!(ok && out.contains("peer 2: repaired"), "{out}{err}");
    lose_disk(&mut children, 3, &ports, dir.path(), &extra).await;
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

/// Hints node `port` holds for `owner`.
async fn hints_for(port: u16, owner: u64) -> u64 {
    crate::process::admin(port)
        .await
        .hints(Empty {})
        .await
        .unwrap()
        .into_inner()
        .owners
        .iter()
        .filter(|h| h.owner == owner)
        .map(|h| h.pending)
        .sum()
}

/// Waits until every node on `ports` holds ring `epoch`, without `gone`.
async fn removed_everywhere(ports: &[u16], gone: u64, epoch: u64) {
    eventually(
        30,
        "every node on the new ring without the node",
        || async {
            let mut all = true;
            for &p in ports {
                let s = status(p).await;
                all &=
                    s.ring_epoch == epoch && !s.members.iter().any(|m| m.id == gone && m.in_ring);
            }
            all
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_remove_takes_a_dead_node_out_and_its_ranges_and_hints_find_new_owners() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let (mut children, extra) = start_cluster(&ports, 4, dir.path(), 600000).await;
    let mut writer = connect(ports[0]).await;
    let before = write_keys(&mut writer, "rm", 3).await;
    // Node 4 dies for good; writes go on (W=2), hinted for it.
    children[3].kill().unwrap();
    children[3].wait().unwrap();
    eventually(30, "node 1 sees node 4 dead", || async {
        status(ports[0])
            .await
            .members
            .iter()
            .any(|m| m.id == 4 && m.state == "dead")
    })
    .await;
    let during = write_keys(&mut writer, "hinted", 2).await;
    let mut hinted = 0;
    for &p in &ports[..3] {
        hinted += hints_for(p, 4).await;
    }
    assert!(hinted > 0, "writes while node 4 was down left hints for it");

    // A running node is not removed.
    let (_, err, ok) = kvctl(ports[0], &["remove", "2"]);
    assert!(!ok && err.contains("still answers"), "{err}");
    // Node 4 is removed through node 2.
    let (out, err, ok) = kvctl(ports[1], &["remove", "4"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("n4 removed: ring epoch 2"), "{out}");
    removed_everywhere(&ports[..3], 4, 2).await;
    // Three nodes, N=3: every node replicates every key, and holds it
    // (the ranges were copied from the survivors; hints went to the new
    // replicas and are gone).
    eventually(60, "hints for node 4 delivered elsewhere", || async {
        let mut left = 0;
        for &p in &ports[..3] {
            left += hints_for(p, 4).await;
        }
        left == 0
    })
    .await;
    for &p in &ports[..3] {
        for (i, key) in before.iter().chain(&during).enumerate() {
            let value = ((i % 200) as u32).to_le_bytes();
            assert!(stores(p, key, &value).await, "port {p} holds key {i}");
        }
    }
    // The removed node's host comes back on its old directory: it learns
    // the ring without it, says so to its operator, and does not rejoin.
    children[3] = kvd(4, &ports, dir.path(), &extra);
    connect(ports[3]).await;
    eventually(30, "node 4 says it is outside the ring", || async {
        let (out, _, ok) = kvctl(ports[3], &["status"]);
        ok && out.contains("WARNING: node 4 owns no range in ring epoch 2")
            && out.contains("start kvd on an empty data directory")
    })
    .await;
    let (out, _, _) = kvctl(ports[0], &["status"]);
    assert!(!out.contains("WARNING"), "members are not warned: {out}");
    let s = status(ports[0]).await;
    assert_eq!(s.ring_epoch, 2);
    assert!(!s.members.iter().any(|m| m.id == 4 && m.in_ring));
    drop(children);
}

/// Two operators remove the same dead node at once, through two different
/// nodes, with two `kvctl` processes: at most one installs the next ring
/// epoch, the other is refused (the epoch is promised to the winner, or
/// the node is gone by the time it asks), and every node ends on one ring
/// at that epoch with every key readable from all replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kvctl_removes_at_once_install_one_ring() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let (children, _) = start_cluster(&ports, 4, dir.path(), 600000).await;
    let mut children = children;
    let mut writer = connect(ports[0]).await;
    let keys = write_keys(&mut writer, "twice", 2).await;
    children[3].kill().unwrap();
    children[3].wait().unwrap();
    eventually(30, "nodes 1 and 2 see node 4 dead", || async {
        let mut dead = true;
        for &p in &ports[..2] {
            dead &= status(p)
                .await
                .members
                .iter()
                .any(|m| m.id == 4 && m.state == "dead");
        }
        dead
    })
    .await;
    let spawn = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .arg("--node")
            .arg(format!("127.0.0.1:{port}"))
            .args(["remove", "4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(ports[0]), spawn(ports[1]));
    let outputs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let won: Vec<_> = outputs.iter().filter(|o| o.status.success()).collect();
    assert!(won.len() <= 1, "both removals succeeded: {outputs:?}");
    for o in &outputs {
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        if o.status.success() {
            assert!(out.contains("n4 removed: ring epoch 2"), "{out}");
        } else {
            assert!(
                err.contains("promised to another change") || err.contains("node 4"),
                "a refusal names why: {err}"
            );
        }
    }
    if won.is_empty() {
        // Both lost the race to each other: the epoch is free again once
        // the promises lapse or are released.
        eventually(60, "a later removal succeeds", || async {
            kvctl(ports[2], &["remove", "4"]).2
        })
        .await;
    }
    removed_everywhere(&ports[..3], 4, 2).await;
    let ring = status(ports[0]).await.ring;
    for &p in &ports[1..3] {
        assert_eq!(status(p).await.ring, ring, "port {p} holds the same ring");
    }
    for &p in &ports[..3] {
        for (i, key) in keys.iter().enumerate() {
            let value = ((i % 200) as u32).to_le_bytes();
            assert!(stores(p, key, &value).await, "port {p} holds key {i}");
        }
    }
    drop(children);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvd_replace_takes_a_dead_nodes_place_holding_its_data_before_it_counts() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let (mut children, _) = start_cluster(&ports, 3, dir.path(), 600000).await;
    let mut writer = connect(ports[0]).await;
    let keys = write_keys(&mut writer, "re", 3).await;
    let tokens_of_3: Vec<u64> = status(ports[0])
        .await
        .ring
        .unwrap()
        .members
        .iter()
        .find(|m| m.id == 3)
        .unwrap()
        .tokens
        .clone();
    children[2].kill().unwrap();
    children[2].wait().unwrap();
    // A new machine, node 4, knows a seed and replaces node 3.
    children.push(kvd(
        4,
        &ports,
        dir.path(),
        &[
            "--seed".to_string(),
            format!("127.0.0.1:{}", ports[0]),
            "--replace".to_string(),
            "3".to_string(),
            "--anti-entropy-interval-ms".to_string(),
            "600000".to_string(),
        ],
    ));
    eventually(60, "node 4 in node 3's place everywhere", || async {
        let mut all = true;
        for &p in [ports[0], ports[1], ports[3]].iter() {
            let s = status(p).await;
            all &= s.ring_epoch == 2
                && s.members.iter().any(|m| m.id == 4 && m.in_ring)
                && !s.members.iter().any(|m| m.id == 3 && m.in_ring);
        }
        all
    })
    .await;
    let ring = status(ports[3]).await.ring.unwrap();
    let node4 = ring.members.iter().find(|m| m.id == 4).unwrap();
    assert_eq!(node4.tokens, tokens_of_3, "the same tokens");
    // It held every key before the ring named it (anti-entropy is off in
    // practice here): nothing reached it later.
    for (i, key) in keys.iter().enumerate() {
        assert!(
            stores(ports[3], key, &(i as u32).to_le_bytes()).await,
            "node 4 holds key {i}"
        );
    }
    // And serves: an R=3 read through it sees every value.
    let mut reader = connect(ports[3]).await;
    for (i, key) in keys.iter().enumerate().step_by(20) {
        let got = reader
            .get(GetRequest {
                key: key.clone(),
                r: 3,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.values, vec![(i as u32).to_le_bytes().to_vec()]);
    }
    drop(children);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_a_node_that_lost_its_disk_and_the_cluster_converges() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (mut children, extra) = start_cluster(&ports, 3, dir.path(), 300).await;
    let mut writer = connect(ports[0]).await;
    let early = write_keys(&mut writer, "early", 3).await;
    let backup = dir.path().join("backup-n3");
    let backup_arg = backup.display().to_string();
    // Refusals first: a relative path, then (below) a used directory.
    let (_, err, ok) = kvctl(ports[2], &["snapshot", "relative/dir"]);
    assert!(!ok && err.contains("absolute path"), "{err}");
    let (out, err, ok) = kvctl(ports[2], &["snapshot", &backup_arg]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("snapshot in") && out.contains("ring epoch 1"),
        "{out}"
    );
    let (_, err, ok) = kvctl(ports[2], &["snapshot", &backup_arg]);
    assert!(!ok && err.contains("not empty"), "{err}");
    // The snapshot itself holds the data (checked on the copy, before any
    // restore: anti-entropy could otherwise refill a restored node so fast
    // that an empty snapshot would pass unnoticed).
    {
        let copy = kv_lsm::LsmEngine::builder(backup.join("data"))
            .open()
            .unwrap();
        for (i, key) in early.iter().enumerate() {
            let state = kv_core::StorageEngine::get(&copy, key).unwrap();
            let held = state.is_some_and(|bytes| {
                kv_coordinator::Siblings::from_bytes(&bytes)
                    .unwrap()
                    .values()
                    .any(|v| v.as_deref() == Some((i as u32).to_le_bytes().as_slice()))
            });
            assert!(held, "the snapshot holds early key {i}");
        }
    }
    // Writes after the snapshot; then node 3 loses its disk and is
    // restored from the snapshot.
    let late = write_keys(&mut writer, "late", 2).await;
    children[2].kill().unwrap();
    children[2].wait().unwrap();
    let n3 = dir.path().join("n3");
    std::fs::remove_dir_all(&n3).unwrap();
    std::fs::rename(&backup, &n3).unwrap();
    // Restarted with a snapshot root this time (checked at the end).
    let root = dir.path().join("backups");
    std::fs::create_dir(&root).unwrap();
    let mut with_root = extra.clone();
    with_root.extend(["--snapshot-root".to_string(), root.display().to_string()]);
    children[2] = kvd(3, &ports, dir.path(), &with_root);
    connect(ports[2]).await;
    // What the snapshot held is there at once.
    for (i, key) in early.iter().enumerate() {
        assert!(
            stores(ports[2], key, &(i as u32).to_le_bytes()).await,
            "restored node 3 holds early key {i}"
        );
    }
    // What it missed arrives by anti-entropy.
    eventually(60, "restored node 3 holds every later write", || async {
        for (i, key) in late.iter().enumerate() {
            if !stores(ports[2], key, &(i as u32).to_le_bytes()).await {
                return false;
            }
        }
        true
    })
    .await;
    // Nothing lost: every key reads back alone from all three replicas.
    let mut reader = connect(ports[2]).await;
    for (i, key) in early.iter().chain(&late).enumerate() {
        let got = reader
            .get(GetRequest {
                key: key.clone(),
                r: 3,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.values, vec![((i % 200) as u32).to_le_bytes().to_vec()]);
    }
    // With a snapshot root, a snapshot goes below it and nowhere else.
    let outside = dir.path().join("elsewhere").display().to_string();
    let (_, err, ok) = kvctl(ports[2], &["snapshot", &outside]);
    assert!(!ok && err.contains("snapshot_root"), "{err}");
    assert!(!dir.path().join("elsewhere").exists(), "nothing written");
    let escape = root.join("../escape").display().to_string();
    let (_, err, ok) = kvctl(ports[2], &["snapshot", &escape]);
    assert!(!ok && err.contains(".."), "{err}");
    let inside = root.join("tuesday").display().to_string();
    let (out, err, ok) = kvctl(ports[2], &["snapshot", &inside]);
    assert!(ok && out.contains("snapshot in"), "{out}{err}");
    drop(children);
}

/// The deployment files are what the tests run: every five-host TOML
/// validates with real certificates and tokens, and the systemd unit's
/// commands are ones kvd accepts.
#[test]
fn deploy_files_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.display().to_string();
    let kvctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .arg("--certs-dir")
            .arg(&certs)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kvctl {args:?}: {out:?}");
    };
    kvctl(&["certs", "init", "--days", "2"]);
    for id in 1..=5 {
        let host = format!("10.0.0.{id}");
        kvctl(&[
            "certs",
            "node",
            "--id",
            &id.to_string(),
            "--host",
            &host,
            "--days",
            "2",
        ]);
    }
    kvctl(&["token", "new", "--name", "ops", "--role", "admin"]);
    let check = |command: &mut Command| {
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{command:?}: {err}");
        err
    };
    for id in 1..=5 {
        let toml = root.join(format!("deploy/five-hosts/n{id}.toml"));
        let said = check(
            Command::new(env!("CARGO_BIN_EXE_kvd"))
                .arg("--config")
                .arg(&toml)
                .args(["--certs-dir", &certs_arg, "--check-config"]),
        );
        assert!(
            said.contains(&format!(
                "configuration ok: node n{id}, listen 10.0.0.{id}:7000"
            )) && said.contains("5 initial members, TLS on"),
            "{said}"
        );
    }
    // A configuration that would not start is refused by the check.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node_id = 1\nlisten = \"10.0.0.1:7000\"\nw = 9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvd"))
        .arg("--config")
        .arg(&bad)
        .args(["--certs-dir", &certs_arg, "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The unit's ExecStartPre and ExecStart, with this build's kvd and the
    // example's first node as /etc/kv/kvd.toml.
    let unit = std::fs::read_to_string(root.join("deploy/kvd.service")).unwrap();
    let commands: Vec<&str> = unit
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ExecStartPre=")
                .or(l.strip_prefix("ExecStart="))
        })
        .collect();
    assert_eq!(commands.len(), 2, "{unit}");
    // The unit lets the node write its data directory and its snapshot
    // root, as every host's TOML names them (ProtectSystem=strict makes
    // every other path read-only).
    let writable: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(str::split_whitespace)
        .collect();
    for id in 1..=5 {
        let text =
            std::fs::read_to_string(root.join(format!("deploy/five-hosts/n{id}.toml"))).unwrap();
        let config = kv_server::ServerConfig::from_toml(&text).unwrap();
        for dir in [config.data_dir, config.snapshot_root] {
            let dir = dir.unwrap().display().to_string();
            assert!(
                writable.contains(&dir.as_str()),
                "n{id}: {dir} not in {writable:?}"
            );
        }
    }
    let toml = root.join("deploy/five-hosts/n1.toml").display().to_string();
    for line in commands {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/kvd"), "{line}");
        let args: Vec<String> = words
            .map(|w| w.replace("/etc/kv/kvd.toml", &toml))
            .filter(|w| w != "--check-config")
            .collect();
        check(Command::new(env!("CARGO_BIN_EXE_kvd")).args(&args).args([
            "--certs-dir",
            &certs_arg,
            "--check-config",
        ]));
    }
}

/// `kvctl mput` and `kvctl mget` against real nodes: a line per item in
/// order, a failing item reported with the rest and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_mput_and_mget_answer_per_item() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (children, _) = start_cluster(&ports, 3, dir.path(), 600000).await;
    let (out, err, ok) = kvctl(ports[0], &["mput", "a=1", "b=two=2", "c=3"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("a: ok (context ") && lines[1].starts_with("b: ok"),
        "{out}"
    );
    // An empty key fails alone; the others are written.
    let (out, err, ok) = kvctl(ports[1], &["mput", "d=4", "=5"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("d: ok") && err.contains(": error: invalid argument"),
        "{err}"
    );
    assert!(err.contains("1 of 2 failed"), "{err}");
    let (_, err, ok) = kvctl(ports[1], &["mput", "novalue"]);
    assert!(!ok && err.contains("KEY=VALUE"), "{err}");
    let (out, err, ok) = kvctl(ports[2], &["mget", "a", "b", "missing", "d"]);
    assert!(ok, "{out}{err}");
    assert_eq!(out, "a: 1\nb: two=2\nmissing: (not found)\nd: 4\n");
    let (out, _, ok) = kvctl(ports[2], &["--json", "mget", "c"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["key"], "c");
    assert_eq!(v["result"]["values"][0], "3");
    // Listing: the keys in order; with a limit, where to continue (on
    // standard error, so standard output holds only keys).
    let (out, err, ok) = kvctl(ports[0], &["list"]);
    assert!(ok, "{err}");
    assert_eq!(out, "a\nb\nc\nd\n");
    let (out, err, ok) = kvctl(ports[1], &["list", "--limit", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out, "a\nb\n");
    assert!(err.contains("--after \"b\""), "{err}");
    let (out, _, ok) = kvctl(ports[2], &["list", "--after", "b"]);
    assert!(ok);
    assert_eq!(out, "c\nd\n");
    let (out, _, ok) = kvctl(ports[2], &["list", "--after", "a", "--end", "d"]);
    assert!(ok);
    assert_eq!(out, "b\nc\n");
    let (out, _, ok) = kvctl(ports[2], &["--json", "list", "--prefix", "c"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["keys"], serde_json::json!(["c"]));
    assert!(v["next"].is_null());
    // A time to live: the value is there until it lapses; not together
    // with a condition.
    let (_, err, ok) = kvctl(ports[0], &["put", "--ttl", "3600", "t", "brief"]);
    assert!(ok, "{err}");
    let (out, _, ok) = kvctl(ports[1], &["get", "t"]);
    assert!(ok && out.starts_with("brief\n"), "{out}");
    let (_, err, ok) = kvctl(
        ports[0],
        &["put", "--ttl", "5", "--if-none-match", "t", "x"],
    );
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    drop(children);
}

/// `kvctl watch` against real nodes: it prints the changes of its prefix
/// as they come, stops after `--count`, says its cursor, and a watch
/// resumed from that cursor prints what was written since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_watch_prints_changes_and_resumes_from_its_cursor() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (children, _) = start_cluster(&ports, 3, dir.path(), 600000).await;
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--node")
        .arg(format!("127.0.0.1:{}", ports[0]))
        .args(["watch", "--prefix", "w/", "--count", "2", "--for", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(watcher.stderr.take().unwrap());
    let mut started = String::new();
    stderr.read_line(&mut started).unwrap();
    assert!(started.starts_with("watching from cursor "), "{started}");
    for (key, value) in [("w/a", "1"), ("other", "x"), ("w/b", "2")] {
        let (_, err, ok) = kvctl(ports[1], &["put", key, value]);
        assert!(ok, "{err}");
    }
    let out = watcher.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(out.status.success(), "{rest}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "w/a\t1\nw/b\t2\n");
    let cursor = rest
        .lines()
        .find_map(|l| {
            l.split_once("resume with --cursor ")
                .map(|(_, c)| c.trim().to_string())
        })
        .unwrap_or_else(|| panic!("{rest}"));
    // What came after the cursor; a change another replica had not yet
    // passed on when the cursor was taken may come again (at least once).
    let (_, err, ok) = kvctl(ports[2], &["put", "w/c", "3"]);
    assert!(ok, "{err}");
    let (out, err, ok) = kvctl(
        ports[2],
        &["watch", "--prefix", "w/", "--cursor", &cursor, "--for", "8"],
    );
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "w/c\t3"), "{out}");
    assert!(
        out.lines()
            .all(|l| ["w/a\t1", "w/b\t2", "w/c\t3"].contains(&l)),
        "{out}"
    );
    // Cursors that are not hex, or not a cursor, are refused.
    let (_, err, ok) = kvctl(ports[0], &["watch", "--cursor", "zz", "--for", "1"]);
    assert!(!ok && err.contains("--cursor"), "{err}");
    let (_, err, ok) = kvctl(ports[0], &["watch", "--cursor", "00", "--for", "1"]);
    assert!(!ok && err.contains("invalid argument"), "{err}");
    drop(children);
}

/// `kvctl put --if-none-match` and `--if-not-modified` against real
/// nodes: a refusal exits non-zero and prints the current context, which
/// then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvctl_conditional_puts_refuse_with_the_current_context() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (children, _) = start_cluster(&ports, 3, dir.path(), 600000).await;
    let (out, err, ok) = kvctl(ports[0], &["put", "--if-none-match", "k", "one"]);
    assert!(ok, "{out}{err}");
    let (_, err, ok) = kvctl(ports[1], &["put", "--if-none-match", "k", "two"]);
    assert!(!ok && err.contains("precondition failed"), "{err}");
    let current = err
        .lines()
        .find_map(|l| l.strip_prefix("current context: "))
        .unwrap_or_else(|| panic!("{err}"))
        .trim()
        .to_string();
    let (_, err, ok) = kvctl(
        ports[2],
        &["put", "--if-not-modified", "--context", "", "k", "three"],
    );
    assert!(!ok && err.contains("precondition failed"), "{err}");
    let (out, err, ok) = kvctl(
        ports[2],
        &[
            "put",
            "--if-not-modified",
            "--context",
            &current,
            "k",
            "three",
        ],
    );
    assert!(ok, "{out}{err}");
    let (out, _, ok) = kvctl(ports[0], &["get", "k"]);
    assert!(ok && out.starts_with("three\n"), "{out}");
    drop(children);
}
