//! Five real nodes (tonic, gossip, the LSM engine, the coordinator) on
//! turmoil's simulated network: a client writes, reads and deletes while
//! the network partitions and heals and nodes crash and restart on their
//! data, crash and lose the tail they had not synced (restarted from a copy
//! of their directory taken at an earlier crash), or lose their disk
//! (restarted empty with the same id). After a final heal the replicas must
//! converge, and the client's history must pass the checker
//! (`kv_server::history`): no acknowledged write lost, nothing phantom,
//! nothing resurrected, no dot issued twice.
//!
//! Seeded: the seeds run are 1 and 2, or those in `KV_SIM_SEEDS`
//! (comma-separated), shared between two tests that run side by side; a
//! failure names its seed.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use kv_core::{ActorId, NodeId, Partitioner};
use kv_server::client::{Client, ClientConfig, ClientError, Context};
use kv_server::history::{self, Outcome, Write};
use kv_server::proto::admin_client::AdminClient;
use kv_server::proto::internal_client::InternalClient;
use kv_server::proto::{Empty, ReadRequest};
use kv_server::{Connect, NodeConfig, start_on};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

const PORT: u16 = 7001;
const NODES: u64 = 5;
const MAX_SIBLINGS: usize = 1000;

/// A simulated TCP stream the gRPC server can serve.
struct SimIo(turmoil::net::TcpStream);

impl AsyncRead for SimIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connected for SimIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Channels over the simulated network.
fn sim_connect() -> Connect {
    Arc::new(|endpoint: Endpoint| {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(PORT);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
    })
}

/// Simulated microseconds since `start`.
fn micros_since(start: tokio::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn name(id: u64) -> String {
    format!("n{id}")
}

fn node_config(id: u64, dir: &std::path::Path, seed: u64) -> NodeConfig {
    NodeConfig {
        members: (1..=NODES)
            .map(|i| (NodeId(i), format!("{}:{PORT}", name(i))))
            .collect(),
        advertise: Some(format!("{}:{PORT}", name(id))),
        gossip_seed: Some(seed.wrapping_mul(31).wrapping_add(id)),
        coordinator: kv_coordinator::Config {
            request_timeout: Duration::from_millis(400),
            anti_entropy_interval: Duration::from_millis(700),
            maintenance_interval: Duration::from_millis(200),
            max_siblings: MAX_SIBLINGS,
            ..kv_coordinator::Config::default()
        },
        durability: kv_lsm::Durability::Never,
        vnodes: 16,
        memtable_bytes: 1 << 20,
        ..NodeConfig::new(NodeId(id), dir.join(name(id)))
    }
    .with_gossip_interval(Duration::from_millis(200))
}

/// Copies directory `from` to `to` (which must not exist).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A tiny seeded generator (the simulation must replay).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Prints the seed when the run panics.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "turmoil cluster run failed with seed {}; rerun it with KV_SIM_SEEDS={}",
                self.0, self.0
            );
        }
    }
}

/// Reads every key's state at each of its replicas.
async fn final_states(
    keys: &[Vec<u8>],
) -> Result<BTreeMap<Vec<u8>, history::ReplicaStates>, Box<dyn std::error::Error>> {
    let connect = sim_connect();
    let endpoint = |id: u64| {
        Endpoint::from_shared(format!("http://{}:{PORT}", name(id)))
            .map(|e| e.timeout(Duration::from_secs(2)))
    };
    let mut admin = AdminClient::new(connect(endpoint(1)?));
    let ring = admin
        .status(Empty {})
        .await?
        .into_inner()
        .ring
        .unwrap_or_default();
    let ring = kv_server::ring_state::ring_of(&ring)?;
    let mut peers: BTreeMap<u64, InternalClient<Channel>> = BTreeMap::new();
    for id in 1..=NODES {
        peers.insert(id, InternalClient::new(connect(endpoint(id)?)));
    }
    let mut out = BTreeMap::new();
    for key in keys {
        let mut states = Vec::new();
        for replica in ring.preference_list(key, 3)? {
            let client = peers.get_mut(&replica.0).ok_or("unknown replica")?;
            let reply = client.read(ReadRequest { key: key.clone() }).await?;
            states.push((replica, reply.into_inner().state));
        }
        out.insert(key.clone(), states);
    }
    Ok(out)
}

fn converged(states: &BTreeMap<Vec<u8>, history::ReplicaStates>) -> bool {
    states
        .values()
        .all(|replicas| replicas.windows(2).all(|w| w[0].1 == w[1].1))
}

/// One seeded run. Returns what it checked.
fn run(seed: u64, ops: u64) -> history::Report {
    let _guard = SeedGuard(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .rng_seed(seed)
        .build();
    for id in 1..=NODES {
        let dir = dir.path().to_path_buf();
        sim.host(name(id), move || {
            let config = node_config(id, &dir, seed);
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                let addr = listener.local_addr()?;
                let incoming = futures_util::stream::unfold(listener, |l| async move {
                    let next = l.accept().await.map(|(s, _)| SimIo(s));
                    Some((next, l))
                });
                let node = start_on(config, addr, incoming, sim_connect()).await?;
                let _maintenance = node.coordinator().spawn_maintenance();
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(None));
    {
        let (done, healed, report) = (done.clone(), healed.clone(), report.clone());
        sim.client("client", async move {
            let addrs: Vec<String> = (1..=NODES).map(|i| format!("{}:{PORT}", name(i))).collect();
            let config = ClientConfig {
                request_timeout: Duration::from_secs(1),
                attempts: 2,
                ..ClientConfig::default()
            };
            let client = Client::with_connect(&addrs, config, sim_connect())?;
            let keys: Vec<Vec<u8>> = (0..12).map(|i| format!("key:{i}").into_bytes()).collect();
            let mut rng = Lcg(seed ^ 0x5eed);
            let mut last_read: BTreeMap<Vec<u8>, Context> = BTreeMap::new();
            let mut writes = Vec::new();
            let sim_start = tokio::time::Instant::now();
            for op in 0..ops {
                let key = keys[rng.below(keys.len() as u64) as usize].clone();
                let kind = rng.below(10);
                if kind <= 2 {
                    if let Ok(read) = client.get(&key).await {
                        last_read.insert(key.clone(), read.context);
                    }
                } else {
                    let context = if kind == 3 {
                        Context::empty()
                    } else {
                        last_read.get(&key).cloned().unwrap_or_default()
                    };
                    let value = (kind != 9).then(|| format!("v{op}").into_bytes());
                    let invoke_us = micros_since(sim_start);
                    let result = match &value {
                        Some(v) => client.put(&key, v.clone(), Some(&context)).await,
                        None => client.delete(&key, &context).await,
                    };
                    let complete_us = micros_since(sim_start);
                    let write_id = result.as_ref().map_or(0, |w| w.write_id);
                    let outcome = match result {
                        Ok(w) => Outcome::Acked(ActorId(w.version.actor), w.version.counter),
                        Err(ClientError::InvalidArgument(e)) => {
                            return Err(format!("seed {seed} op {op}: refused: {e}").into());
                        }
                        Err(_) => Outcome::Unknown,
                    };
                    writes.push(Write {
                        key,
                        value,
                        context: context.0,
                        outcome,
                        write_id,
                        invoke_us,
                        complete_us,
                    });
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            done.store(true, Ordering::SeqCst);
            while !healed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Hints and anti-entropy bring every replica to the same state.
            let written: Vec<Vec<u8>> = {
                let mut k: Vec<Vec<u8>> = writes.iter().map(|w| w.key.clone()).collect();
                k.sort();
                k.dedup();
                k
            };
            let started = tokio::time::Instant::now();
            let states = loop {
                let states = final_states(&written).await;
                match states {
                    Ok(states) if converged(&states) => break states,
                    _ if started.elapsed() > Duration::from_secs(60) => {
                        return Err(
                            format!("seed {seed}: replicas did not converge in 60 s").into()
                        );
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            };
            *report.lock().unwrap() = Some(history::check(&writes, &states, MAX_SIBLINGS));
            Ok(())
        });
    }
    // The nemesis: partitions, heals, crashes and restarts, at seeded
    // moments, until the client is done; then everything heals.
    let mut rng = Lcg(seed);
    let mut next_fault = Duration::from_secs(2);
    let mut crashed: Option<(u64, Duration)> = None;
    // Copies of nodes' directories taken while they were down: what a
    // later crash falls back to (the tail written since was never synced).
    let mut synced: BTreeMap<u64, std::path::PathBuf> = BTreeMap::new();
    let node_dir = |id: u64| dir.path().join(name(id));
    let mut faults = BTreeMap::<&str, u32>::new();
    let heal_all = |sim: &mut turmoil::Sim<'_>| {
        for a in 1..=NODES {
            for b in a + 1..=NODES {
                sim.repair(name(a), name(b));
            }
        }
    };
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => panic!("seed {seed}: simulation failed: {e}"),
        }
        let now = sim.elapsed();
        if let Some((id, at)) = crashed
            && now >= at
        {
            sim.bounce(name(id));
            crashed = None;
        }
        if done.load(Ordering::SeqCst) {
            if !healed.load(Ordering::SeqCst) {
                heal_all(&mut sim);
                if let Some((id, _)) = crashed.take() {
                    sim.bounce(name(id));
                }
                healed.store(true, Ordering::SeqCst);
            }
            continue;
        }
        if now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(1000 + rng.below(2000));
        match rng.below(5) {
            0 => {
                heal_all(&mut sim);
                let first = 1 + rng.below(NODES);
                let mut minority = vec![first];
                if rng.below(2) == 0 {
                    minority.push(1 + (first % NODES));
                }
                for &a in &minority {
                    for b in (1..=NODES).filter(|b| !minority.contains(b)) {
                        sim.partition(name(a), name(b));
                    }
                }
                *faults.entry("partition").or_default() += 1;
            }
            1 if crashed.is_none() => {
                let id = 1 + rng.below(NODES);
                sim.crash(name(id));
                crashed = Some((id, now + Duration::from_millis(500 + rng.below(2500))));
                *faults.entry("crash and restart").or_default() += 1;
            }
            3 if crashed.is_none() => {
                // A crash; the first one copies the node's directory, the
                // next restarts it from that copy: everything written since
                // is the unsynced tail the crash lost. Data is lost on one
                // node only (two replicas losing the same write would lose
                // it legitimately, with W=2).
                let id = NODES;
                sim.crash(name(id));
                let copy = dir.path().join(format!("synced-{id}"));
                if let Some(copy) = synced.remove(&id) {
                    std::fs::remove_dir_all(node_dir(id)).unwrap();
                    std::fs::rename(&copy, node_dir(id)).unwrap();
                    *faults.entry("crash losing the unsynced tail").or_default() += 1;
                } else {
                    copy_dir(&node_dir(id), &copy).unwrap();
                    synced.insert(id, copy);
                    *faults.entry("crash and copy").or_default() += 1;
                }
                crashed = Some((id, now + Duration::from_millis(500 + rng.below(1500))));
            }
            4 if crashed.is_none() => {
                // The disk is replaced: restarted empty with the same id.
                let id = NODES;
                sim.crash(name(id));
                std::fs::remove_dir_all(node_dir(id)).unwrap();
                synced.remove(&id);
                crashed = Some((id, now + Duration::from_millis(500 + rng.below(1500))));
                *faults.entry("wiped disk").or_default() += 1;
            }
            _ => {
                heal_all(&mut sim);
                *faults.entry("heal").or_default() += 1;
            }
        }
    }
    let report = report
        .lock()
        .unwrap()
        .take()
        .unwrap_or_else(|| panic!("seed {seed}: the client produced no report"));
    println!(
        "turmoil seed {seed}: {} writes ({} acknowledged) on {} keys, faults {faults:?}, {} violations, {:.1} s simulated",
        report.writes,
        report.acked,
        report.keys,
        report.violations.len(),
        sim.elapsed().as_secs_f64()
    );
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {}",
        report
            .violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        report.acked * 2 > report.writes,
        "seed {seed}: most writes succeed despite faults ({} of {})",
        report.acked,
        report.writes
    );
    report
}

/// The seeds the test with index `half` (0 or 1) runs: every other one of
/// `KV_SIM_SEEDS` (or of 1, 2), so the two tests share them.
fn seeds(half: usize) -> Vec<u64> {
    let all = match std::env::var("KV_SIM_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().expect("KV_SIM_SEEDS: numbers"))
            .collect(),
        Err(_) => vec![1, 2],
    };
    all.into_iter().skip(half).step_by(2).collect()
}

/// Runs the seeds of test `half`.
fn run_seeds(half: usize) {
    for seed in seeds(half) {
        run(seed, 600);
    }
}

#[test]
fn partitions_crashes_and_restarts_keep_every_acknowledged_write() {
    run_seeds(0);
}

/// The other half of the seeds, in a test of its own so that libtest runs
/// it beside the first (each simulation runs on one thread).
#[test]
fn partitions_crashes_and_restarts_keep_every_acknowledged_write_more_seeds() {
    run_seeds(1);
}
