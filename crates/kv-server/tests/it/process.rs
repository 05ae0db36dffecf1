//! Real `kvd` processes on loopback: a node killed with SIGKILL during
//! writes (W=2, durability Always) and restarted, every acknowledged write
//! readable afterwards; hints delivered to a node restarted after kill -9;
//! a node joining and one leaving through `kvctl`; a node that lost its disk
//! coordinating writes again without losing any.

use std::path::Path;

use kv_core::Partitioner;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_server::proto::admin_client::AdminClient;
use kv_server::proto::internal_client::InternalClient;
use kv_server::proto::kv_client::KvClient;
use kv_server::proto::{Empty, GetRequest, PutRequest, ReadRequest, StatusReply};
use tonic::transport::Channel;

pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Starts `kvd` as node `id` on `ports[id - 1]` with the cluster's test
/// settings and `extra` flags.
pub(crate) fn kvd(id: usize, ports: &[u16], dir: &Path, extra: &[String]) -> Child {
    kvd_command(id, ports, dir, extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The command [`kvd`] runs (its output not yet directed), logging
/// warnings and worse.
pub(crate) fn kvd_command(id: usize, ports: &[u16], dir: &Path, extra: &[String]) -> Command {
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
            "--vnodes",
            "32",
            "--memtable-mib",
            "1",
            "--gossip-interval-ms",
            "200",
            "--ring-sync-ms",
            "300",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    cmd
}

/// `--member` flags naming the first `count` ports as nodes 1..=count.
pub(crate) fn members(ports: &[u16], count: usize) -> Vec<String> {
    ports[..count]
        .iter()
        .enumerate()
        .flat_map(|(i, port)| {
            [
                "--member".to_string(),
                format!("{}@127.0.0.1:{port}", i + 1),
            ]
        })
        .collect()
}

/// Starts nodes 1..=`count` on `ports` as the initial cluster, with
/// anti-entropy every `anti_entropy_ms`, and waits until each answers;
/// returns them and the flags they run with (to restart one alike).
pub(crate) async fn start_cluster(
    ports: &[u16],
    count: usize,
    dir: &Path,
    anti_entropy_ms: u64,
) -> (Nodes, Vec<String>) {
    let mut extra = members(ports, count);
    extra.extend([
        "--anti-entropy-interval-ms".to_string(),
        anti_entropy_ms.to_string(),
    ]);
    let children = Nodes((1..=count).map(|id| kvd(id, ports, dir, &extra)).collect());
    for &p in &ports[..count] {
        connect(p).await;
    }
    (children, extra)
}

/// Node `id` loses its disk: killed with SIGKILL, its data directory
/// deleted, restarted with the same id and `extra` flags on an empty one.
pub(crate) async fn lose_disk(
    children: &mut Nodes,
    id: usize,
    ports: &[u16],
    dir: &Path,
    extra: &[String],
) {
    children[id - 1].kill().unwrap();
    children[id - 1].wait().unwrap();
    std::fs::remove_dir_all(dir.join(format!("n{id}"))).unwrap();
    children[id - 1] = kvd(id, ports, dir, extra);
    connect(ports[id - 1]).await;
}

fn spawn_kvd(id: usize, ports: &[u16], dir: &Path) -> Child {
    let mut extra = members(ports, ports.len());
    extra.extend(["--anti-entropy-interval-ms".to_string(), "500".to_string()]);
    kvd(id, ports, dir, &extra)
}

pub(crate) async fn connect(port: u16) -> KvClient<Channel> {
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
    let mut children = Nodes(
        (1..=3)
            .map(|id| spawn_kvd(id, &ports, dir.path()))
            .collect(),
    );
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
            ..Default::default()
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
    drop(children);
}

pub(crate) async fn admin(port: u16) -> AdminClient<Channel> {
    connect(port).await;
    AdminClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

pub(crate) async fn internal(port: u16) -> InternalClient<Channel> {
    connect(port).await;
    InternalClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap()
}

/// Polls `check` until it holds; fails after `secs` seconds naming `what`.
pub(crate) async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn status(port: u16) -> StatusReply {
    admin(port)
        .await
        .status(Empty {})
        .await
        .unwrap()
        .into_inner()
}

/// Whether the node on `port` holds `value` for `key` in its own store.
pub(crate) async fn stores(port: u16, key: &[u8], value: &[u8]) -> bool {
    let reply = internal(port)
        .await
        .read(ReadRequest { key: key.to_vec() })
        .await
        .unwrap()
        .into_inner();
    reply.state.is_some_and(|bytes| {
        kv_coordinator::Siblings::from_bytes(&bytes)
            .unwrap()
            .values()
            .any(|v| v.as_deref() == Some(value))
    })
}

/// Writes keys `<prefix>0000` to `<prefix>0199` (value: the index) with
/// write quorum `w` (0: the cluster's); every write must succeed.
///
/// A write whose quorum timed out or whose node was unavailable is sent
/// again as the client API asks (docs/api.md, "Retries are safe"): the same
/// write id, `retry` set, at most five attempts. On a loaded machine the
/// first write to a freshly started replica can miss the 200 ms request
/// timeout (its connection opened on first use); the retry completes it,
/// and since the store keeps one version per write id, the callers'
/// checks that each key reads back as one value still hold.
pub(crate) async fn write_keys(
    writer: &mut KvClient<Channel>,
    prefix: &str,
    w: u32,
) -> Vec<Vec<u8>> {
    let keys: Vec<Vec<u8>> = (0..200u32)
        .map(|i| format!("{prefix}{i:04}").into_bytes())
        .collect();
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).unwrap();
    let base = u64::from_le_bytes(nonce);
    for (i, key) in keys.iter().enumerate() {
        let write_id = base.wrapping_add(i as u64).max(1);
        let mut attempt = 0;
        loop {
            let sent = writer
                .put(PutRequest {
                    key: key.clone(),
                    value: (i as u32).to_le_bytes().to_vec(),
                    context: vec![],
                    w,
                    write_id,
                    retry: attempt > 0,
                    ..Default::default()
                })
                .await;
            match sent {
                Ok(_) => break,
                Err(e)
                    if attempt < 4
                        && matches!(
                            e.code(),
                            tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
                        ) =>
                {
                    attempt += 1;
                }
                Err(e) => panic!("write {i} (w={w}, attempt {}): {e}", attempt + 1),
            }
        }
    }
    keys
}

/// The `kvd` processes of a test, killed when it ends, however it ends
/// (a failed assertion must not leave nodes running).
pub(crate) struct Nodes(pub(crate) Vec<Child>);

impl std::ops::Deref for Nodes {
    type Target = Vec<Child>;

    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Nodes {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_reach_a_node_restarted_after_kill_nine() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    // Anti-entropy off (an hour apart): only hints can bring node 4 back
    // up to date.
    let mut extra = members(&ports, 4);
    extra.extend(["--anti-entropy-interval-ms".into(), "3600000".into()]);
    let mut children = Nodes(
        (1..=4)
            .map(|id| kvd(id, &ports, dir.path(), &extra))
            .collect(),
    );
    let mut writer = connect(ports[0]).await;
    for &p in &ports[1..] {
        connect(p).await;
    }
    // Every node must know node 4 through gossip before it can be
    // declared dead (news of the death of a stranger is not kept).
    for &p in &ports[..3] {
        eventually(30, "gossip reports node 4 alive", || async move {
            status(p)
                .await
                .members
                .iter()
                .any(|m| m.id == 4 && m.state == "alive")
        })
        .await;
    }
    children[3].kill().unwrap(); // SIGKILL
    children[3].wait().unwrap();
    for &p in &ports[..3] {
        eventually(30, "gossip declares node 4 dead", || async move {
            status(p)
                .await
                .members
                .iter()
                .any(|m| m.id == 4 && m.state == "dead")
        })
        .await;
    }
    // W=3 with a replica down succeeds only through sloppy quorum: a
    // fallback node takes the write with a hint for node 4.
    let keys = write_keys(&mut writer, "h", 3).await;
    let ring = kv_server::ring_state::ring_of(&status(ports[0]).await.ring.unwrap()).unwrap();
    let for_4: Vec<usize> = (0..keys.len())
        .filter(|&i| {
            ring.preference_list(&keys[i], 3)
                .unwrap()
                .contains(&kv_core::NodeId(4))
        })
        .collect();
    assert!(
        for_4.len() > 50,
        "node 4 replicates its share ({})",
        for_4.len()
    );
    let mut pending = 0;
    for &p in &ports[..3] {
        let hints = admin(p).await.hints(Empty {}).await.unwrap().into_inner();
        pending += hints
            .owners
            .iter()
            .filter(|o| o.owner == 4)
            .map(|o| o.pending)
            .sum::<u64>();
    }
    assert_eq!(
        pending,
        for_4.len() as u64,
        "one hint for node 4 per key it replicates"
    );
    // Restart node 4 on its data: the hints are delivered and deleted.
    children[3] = kvd(4, &ports, dir.path(), &extra);
    eventually(60, "every hint delivered", || async {
        let mut left = 0;
        for &p in &ports[..3] {
            let hints = admin(p).await.hints(Empty {}).await.unwrap().into_inner();
            left += hints.owners.iter().map(|o| o.pending).sum::<u64>();
        }
        left == 0
    })
    .await;
    for &i in &for_4 {
        assert!(
            stores(ports[3], &keys[i], &(i as u32).to_le_bytes()).await,
            "node 4 holds key {i} after hint delivery"
        );
    }
    drop(children);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kvd_joins_and_another_leaves_through_kvctl() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4);
    let initial = members(&ports, 3);
    let mut children = Nodes(
        (1..=3)
            .map(|id| kvd(id, &ports, dir.path(), &initial))
            .collect(),
    );
    let mut writer = connect(ports[0]).await;
    let keys = write_keys(&mut writer, "j", 0).await;
    // Node 4 knows only a seed, and joins at start.
    let seed = vec![
        "--seed".to_string(),
        format!("127.0.0.1:{}", ports[0]),
        "--join".to_string(),
    ];
    children.push(kvd(4, &ports, dir.path(), &seed));
    eventually(60, "node 4 in the ring everywhere", || async {
        let mut all = true;
        for &p in &ports {
            let s = status(p).await;
            all &= s.ring_epoch == 2 && s.members.iter().any(|m| m.id == 4 && m.in_ring);
        }
        all
    })
    .await;
    // It streamed its ranges before taking them.
    let ring = kv_server::ring_state::ring_of(&status(ports[3]).await.ring.unwrap()).unwrap();
    let mut owned = 0;
    for (i, key) in keys.iter().enumerate() {
        if ring
            .preference_list(key, 3)
            .unwrap()
            .contains(&kv_core::NodeId(4))
        {
            owned += 1;
            assert!(
                stores(ports[3], key, &(i as u32).to_le_bytes()).await,
                "node 4 holds key {i}"
            );
        }
    }
    assert!(owned > 100, "node 4 replicates its share ({owned} of 200)");

    // Node 2 leaves through kvctl and stops by itself.
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--node", &format!("127.0.0.1:{}", ports[1]), "leave"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("left: ring epoch 3"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = children[1].try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 did not stop after leaving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "node 2 stopped cleanly: {exit}");
    let s = status(ports[0]).await;
    assert_eq!(s.ring_epoch, 3);
    assert!(!s.members.iter().any(|m| m.id == 2 && m.in_ring));
    // Everything is readable from all three remaining replicas.
    let mut reader = connect(ports[2]).await;
    for (i, key) in keys.iter().enumerate() {
        let got = reader
            .get(GetRequest {
                key: key.clone(),
                r: 3,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            got.values,
            vec![(i as u32).to_le_bytes().to_vec()],
            "key {i}"
        );
    }
    drop(children);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_loses_no_write_it_coordinates_afterwards() {
    // The operator's day that found the reused dots: node 3 coordinates
    // writes, loses its data directory (a replaced disk), restarts with
    // the same id, and coordinates blind writes of the same keys. Every
    // one of them must be readable from all three replicas.
    // Anti-entropy is slow here, so node 3 coordinates its writes before
    // repair refills it: its counters start from nothing.
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (mut children, extra) = start_cluster(&ports, 3, dir.path(), 600000).await;
    let mut through_3 = connect(ports[2]).await;
    let keys = write_keys(&mut through_3, "disk", 3).await;
    lose_disk(&mut children, 3, &ports, dir.path(), &extra).await;
    let mut through_3 = connect(ports[2]).await;
    let ring = kv_ring::ConsistentHashRing::builder()
        .vnodes(32)
        .nodes((1..=3).map(kv_core::NodeId))
        .build()
        .unwrap();
    let mut coordinated_by_3 = 0;
    for (i, key) in keys.iter().enumerate() {
        if ring.preference_list(key, 3).unwrap()[0] == kv_core::NodeId(3) {
            coordinated_by_3 += 1;
        }
        let value = format!("after-{i}").into_bytes();
        // Until gossip has settled the request may need another try; a
        // write that failed is simply written again (a new value each time
        // is not needed: the check below looks for this value).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let put = through_3
                .put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    context: vec![],
                    w: 2,
                    ..Default::default()
                })
                .await;
            if put.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "write {i} through node 3 kept failing"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        coordinated_by_3 > 20,
        "node 3 coordinates some keys ({coordinated_by_3})"
    );
    let mut through_1 = connect(ports[0]).await;
    let mut lost = 0;
    for (i, key) in keys.iter().enumerate() {
        let reply = through_1
            .get(GetRequest {
                key: key.clone(),
                r: 3,
            })
            .await
            .unwrap();
        if !reply
            .get_ref()
            .values
            .contains(&format!("after-{i}").into_bytes())
        {
            lost += 1;
        }
    }
    assert_eq!(
        lost,
        0,
        "{lost} of {} writes made after node 3 lost its disk are gone",
        keys.len()
    );
    drop(children);
}

/// Every file under `dir` is readable by its owner only, and every
/// directory the node created too.
#[cfg(unix)]
fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            assert_private(&path);
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_oversized_or_forged_requests_are_refused_and_the_node_serves_on() {
    use kv_server::proto::{
        GossipRequest, ReadBatchRequest, ReplicateBatchRequest, ReplicateRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(1);
    let _nodes = Nodes(vec![spawn_kvd(1, &ports, dir.path())]);
    let mut kv = connect(ports[0]).await;
    kv.put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        w: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut internal = internal(ports[0]).await;
    // One read batch naming one key 100,000 times: refused before any
    // read, not answered with 100,000 copies of its state.
    let huge = ReadBatchRequest {
        keys: vec![b"k".to_vec(); 100_000],
    };
    let refused = first_reply_error(
        internal
            .read_stream(futures_util::stream::iter([huge]))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("limit"), "{}", refused.message());
    // A replica-write batch of 2,000 items.
    let items = (0..2_000)
        .map(|i| ReplicateRequest {
            key: format!("x{i}").into_bytes(),
            state: Vec::new(),
            hint_for: None,
        })
        .collect();
    let refused = first_reply_error(
        internal
            .replicate_stream(futures_util::stream::iter([ReplicateBatchRequest {
                items,
            }]))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // Gossip claiming node 1 at incarnation u64::MAX (node 1 could never
    // refute it): refused as it decodes.
    let forged = kv_gossip::Message {
        from: kv_core::NodeId(9),
        from_addr: "127.0.0.1:9".into(),
        body: kv_gossip::Body::Ping { seq: 1 },
        updates: vec![kv_gossip::Member {
            id: kv_core::NodeId(1),
            addr: "127.0.0.1:9".into(),
            incarnation: u64::MAX,
            status: kv_gossip::Status::Dead,
            meta: kv_gossip::Meta::default(),
        }],
    };
    let refused = internal
        .gossip(GossipRequest {
            message: forged.encode(),
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("incarnation"), "{refused:?}");
    // The node serves on, and still thinks itself alive.
    let got = kv
        .get(GetRequest {
            key: b"k".to_vec(),
            r: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.values, vec![b"v".to_vec()]);
    assert!(
        status(ports[0])
            .await
            .members
            .iter()
            .all(|m| m.state != "dead")
    );
    // Its files are its own.
    #[cfg(unix)]
    assert_private(&dir.path().join("n1"));
}

/// The error a stream's first reply carries (a refused request is answered
/// on the stream, which stays open for the next one).
async fn first_reply_error<T: std::fmt::Debug>(mut replies: tonic::Streaming<T>) -> tonic::Status {
    match replies.message().await {
        Err(status) => status,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// GET `path` from `addr`; `None` while nothing listens there (the node's
/// HTTP listener opens a moment after its gRPC one).
pub(crate) async fn try_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}
