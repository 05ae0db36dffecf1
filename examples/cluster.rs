//! A local cluster to talk to: `cargo run --release --example cluster`.
//!
//! Starts 3 nodes (`--nodes 5` for more) on 127.0.0.1, gRPC on ports 7001,
//! 7002, ... and HTTP (metrics, status) on 8001, 8002, ... (`--base-port`
//! moves both), data in a temporary directory
//! unless `--data-dir` names one, and runs until Ctrl-C (or for
//! `--run-for <seconds>`). Talk to it with `kvctl`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kv::core::NodeId;
use kv_server::security::certs::CertsDir;
use kv_server::security::{NodeTls, Role, Security, TokenTable};
use kv_server::{NodeConfig, start};

#[derive(Debug, Parser)]
#[command(name = "cluster", about = "A local kv cluster to talk to with kvctl")]
struct Args {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    nodes: u64,
    /// gRPC port of the first node (HTTP ports are 1000 higher).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Keep the data here (default: a temporary directory, removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    run_for: Option<u64>,
    /// Where the throwaway CA, node certificates and admin token go
    /// (made anew at each start; default: kv-example-cluster in the
    /// system's temporary directory). `kvctl` finds them through
    /// KV_CERTS_DIR.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// No TLS and no tokens (to compare; loopback only).
    #[arg(long)]
    plaintext: bool,
    /// How each node's commit-log syncer is woken: `preempting` (kvd's
    /// default) or `yielding` (more writes per sync when the CPUs are busy;
    /// kvd's `syncer` setting, docs/operations.md).
    #[arg(long, default_value = "preempting", value_parser = kv_server::parse_syncer)]
    syncer: kv_lsm::SyncerScheduling,
}

/// A fresh CA, a certificate per node and an admin token in `dir` (what a
/// real deployment makes with `kvctl certs` and `kvctl token`).
fn make_credentials(dir: &Path, nodes: u64) -> Result<Security, String> {
    let files = CertsDir(dir.to_path_buf());
    // Only a directory this example made before is emptied.
    if dir.exists() {
        if !files.ca_cert().exists() {
            return Err(format!(
                "{} exists and holds no ca.pem: not ours to overwrite; give --certs-dir",
                dir.display()
            ));
        }
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let e = |e: kv_server::security::SecurityError| e.to_string();
    files.init(30).map_err(e)?;
    for id in 1..=nodes {
        files
            .issue_node(NodeId(id), &["127.0.0.1".to_string()], 30)
            .map_err(e)?;
    }
    let token = files.add_token("admin", Role::Admin).map_err(e)?;
    files.write_admin_token(&token).map_err(e)?;
    let tokens = std::fs::read_to_string(files.tokens()).map_err(|e| e.to_string())?;
    Ok(Security {
        tokens: TokenTable::from_toml(&tokens).map_err(e)?,
        ..Security::default()
    })
}

async fn run(args: Args) -> Result<(), String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let certs_dir = args
        .certs_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("kv-example-cluster"));
    let security = if args.plaintext {
        Security::default()
    } else {
        make_credentials(&certs_dir, args.nodes)?
    };
    let addrs: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i))
        .collect();
    let members: Vec<(NodeId, String)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (NodeId(i as u64 + 1), a.clone()))
        .collect();
    // Every listener first, then the nodes side by side: each start waits
    // for the clock to pass its epoch (under a second), and they wait
    // together, so the cluster answers as a whole.
    let mut starts = Vec::new();
    for (id, addr) in &members {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} ({e}); is another cluster running? try --base-port")
        })?;
        let mut security = security.clone();
        if !args.plaintext {
            let (cert, key) = CertsDir(certs_dir.clone()).node(*id);
            let ca = CertsDir(certs_dir.clone()).ca_cert();
            security.tls = Some(NodeTls::load(&ca, &cert, &key).map_err(|e| e.to_string())?);
        }
        let config = NodeConfig {
            members: members.clone(),
            security,
            coordinator: kv_coordinator::Config {
                n: 3.min(args.nodes as usize),
                w: 2.min(args.nodes as usize),
                r: 2.min(args.nodes as usize),
                ..kv_coordinator::Config::default()
            },
            memtable_bytes: 16 << 20,
            syncer: args.syncer,
            // Replica batches on framed connections, as kvd sends them.
            internode_frames: true,
            // Served below; the other nodes' pages link to it.
            status_page: Some(format!(
                "127.0.0.1:{}",
                u64::from(args.base_port) + 1000 + id.0 - 1
            )),
            ..NodeConfig::new(*id, data_dir.join(format!("n{}", id.0)))
        }
        .with_gossip_interval(Duration::from_millis(500));
        starts.push((*id, tokio::spawn(start(config, listener))));
    }
    let mut nodes = Vec::new();
    for (id, started) in starts {
        let node = started
            .await
            .map_err(|e| format!("node {id}: {e}"))?
            .map_err(|e| format!("node {id}: {e}"))?;
        let maintenance = node.coordinator().spawn_maintenance();
        let http_addr = format!("127.0.0.1:{}", u64::from(args.base_port) + 1000 + id.0 - 1);
        let http_listener = tokio::net::TcpListener::bind(&http_addr)
            .await
            .map_err(|e| format!("cannot listen on {http_addr} ({e}); try --base-port"))?;
        let http = kv_server::http::serve(
            node.coordinator().clone(),
            node.cluster().clone(),
            http_listener,
            kv_server::http::HttpSettings::default(),
        );
        nodes.push((node, maintenance, http));
    }
    println!(
        "kv cluster of {} nodes, data in {}",
        args.nodes,
        data_dir.display()
    );
    for (id, addr) in &members {
        let http = u64::from(args.base_port) + 1000 + id.0 - 1;
        println!(
            "  {id}  grpc {addr}  metrics http://127.0.0.1:{http}/metrics  status http://127.0.0.1:{http}/"
        );
    }
    let first = &addrs[0];
    println!();
    if args.plaintext {
        println!("no TLS, no tokens (--plaintext)");
    } else {
        println!(
            "TLS between nodes and for clients, tokens for clients: a throwaway CA, node certificates and an admin token in {}",
            certs_dir.display()
        );
        println!("kvctl finds them with:");
        println!("  export KV_CERTS_DIR={}", certs_dir.display());
    }
    println!();
    println!("try, in another terminal:");
    println!("  cargo run --release -p kv-server --bin kvctl -- --node {first} put user:1 alice");
    println!(
        "  cargo run --release -p kv-server --bin kvctl -- --node {} get user:1",
        addrs[addrs.len() - 1]
    );
    println!(
        "  cargo run --release -p kv-server --bin kvctl -- --node {first} put user:1 bob     # no context: a sibling"
    );
    println!("  cargo run --release -p kv-server --bin kvctl -- --node {first} get user:1");
    println!(
        "  cargo run --release -p kv-server --bin kvctl -- --node {first} put user:1 carol --context <context from get>"
    );
    println!("  cargo run --release -p kv-server --bin kvctl -- --node {first} status");
    let next = u64::from(args.base_port) + args.nodes;
    println!();
    println!("add a node (it streams its ranges, then serves them):");
    let certs = if args.plaintext {
        String::new()
    } else {
        println!(
            "  cargo run --release -p kv-server --bin kvctl -- certs node --id {}",
            args.nodes + 1
        );
        " --certs-dir $KV_CERTS_DIR".to_string()
    };
    println!(
        "  cargo run --release -p kv-server --bin kvd -- --node-id {} --listen 127.0.0.1:{next} \\\n      --data-dir /tmp/kv-n{} --seed {first} --join{certs}",
        args.nodes + 1,
        args.nodes + 1
    );
    println!();
    match args.run_for {
        Some(secs) => {
            println!("running for {secs} s (or until Ctrl-C)");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                () = kv_server::shutdown_signal() => {}
            }
        }
        None => {
            println!("press Ctrl-C to stop");
            kv_server::shutdown_signal().await;
        }
    }
    println!("stopping");
    for (node, maintenance, http) in nodes {
        maintenance.abort();
        http.abort();
        node.shutdown().await?;
    }
    drop(temp);
    Ok(())
}

/// The allocator kvd uses (glibc's malloc and free were a tenth of the
/// cluster's samples under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cluster: {message}");
            ExitCode::FAILURE
        }
    }
}
