//! Real `kvd` processes on loopback: a node killed with SIGKILL during
//! writes (W=2, durability Always) and restarted; every acknowledged write
//! is readable afterwards.

use std::path::Path;

use kv_core::Partitioner;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_server::proto::kv_client::KvClient;
use kv_server::proto::{GetRequest, PutRequest};
use tonic::transport::Channel;

fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn spawn_kvd(id: usize, ports: &[u16], dir: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvd"));
    cmd.arg("--node-id")
        .arg(id.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", ports[id - 1]))
        .arg("--data-dir")
        .arg(dir.join(format!("n{id}")))
        .args([
            "--durability",
            "always",
            "--anti-entropy-interval-ms",
            "500",
            "--vnodes",
            "32",
            "--memtable-mib",
            "1",
        ]);
    for (i, port) in ports.iter().enumerate() {
        cmd.arg("--member")
            .arg(format!("{}@127.0.0.1:{port}", i + 1));
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> KvClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = KvClient::connect(format!("http://127.0.0.1:{port}")).await {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "node on port {port} never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let mut children: Vec<Child> = (1..=3)
        .map(|id| spawn_kvd(id, &ports, dir.path()))
        .collect();
    let mut writer = connect(ports[0]).await;
    for &p in &ports[1..] {
        connect(p).await;
    }
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 0..300u32 {
        if i == 100 {
            children[2].kill().unwrap(); // SIGKILL
            children[2].wait().unwrap();
        }
        let key = format!("k{i:04}").into_bytes();
        let request = PutRequest {
            key: key.clone(),
            value: i.to_le_bytes().to_vec(),
            context: vec![],
            w: 2,
        };
        match writer.put(request).await {
            Ok(_) => acked.push((key, i)),
            Err(_) => failed += 1,
        }
    }
    assert!(
        acked.len() >= 250,
        "most writes succeed with one node down ({} acked, {failed} failed)",
        acked.len()
    );
    // The ring every node builds (members sorted by id, 32 vnodes).
    let ring = kv_ring::ConsistentHashRing::builder()
        .vnodes(32)
        .nodes((1..=3).map(kv_core::NodeId))
        .build()
        .unwrap();
    let coordinated_by_3 = acked
        .iter()
        .filter(|(k, _)| ring.preference_list(k, 3).unwrap()[0] == kv_core::NodeId(3))
        .count();
    assert!(
        coordinated_by_3 > 20,
        "node 3 coordinates some keys ({coordinated_by_3})"
    );
    // Restart the killed node on its data.
    children[2] = spawn_kvd(3, &ports, dir.path());
    let mut readers = Vec::new();
    for &p in &ports {
        readers.push(connect(p).await);
    }
    // Hints and anti-entropy catch the node up; every acknowledged write is
    // readable through every node, from all three replicas (R=3).
    let deadline = Instant::now() + Duration::from_secs(30);
    'wait: loop {
        let mut missing = 0;
        for (key, i) in &acked {
            for reader in readers.iter_mut() {
                let got = reader
                    .get(GetRequest {
                        key: key.clone(),
                        r: 3,
                    })
                    .await;
                match got {
                    Ok(reply) if reply.get_ref().values.contains(&i.to_le_bytes().to_vec()) => {}
                    _ => missing += 1,
                }
            }
        }
        // The restarted node's own copy: keys it coordinates, read with
        // R=1 through it, are answered from its local state alone.
        for (key, i) in &acked {
            if ring.preference_list(key, 3).unwrap()[0] != kv_core::NodeId(3) {
                continue;
            }
            let got = readers[2]
                .get(GetRequest {
                    key: key.clone(),
                    r: 1,
                })
                .await;
            match got {
                Ok(reply) if reply.get_ref().values.contains(&i.to_le_bytes().to_vec()) => {}
                _ => missing += 1,
            }
        }
        if missing == 0 {
            break 'wait;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} reads still missing acknowledged writes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
