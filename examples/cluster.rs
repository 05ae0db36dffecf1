//! A local cluster to talk to: `cargo run --release --example cluster`.
//!
//! Starts 3 nodes (`--nodes 5` for more) on 127.0.0.1, gRPC on ports 7001,
//! 7002, ... and HTTP (metrics, status) on 8001, 8002, ... (`--base-port`
//! moves both), data in a temporary directory
//! unless `--data-dir` names one, and runs until Ctrl-C (or for
//! `--run-for <seconds>`). Talk to it with `kvctl`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kv::core::NodeId;
use kv_server::{NodeConfig, start};

struct Args {
    nodes: u64,
    base_port: u16,
    data_dir: Option<PathBuf>,
    run_for: Option<Duration>,
}

const USAGE: &str =
    "usage: cluster [--nodes N (3)] [--base-port P (7001)] [--data-dir DIR] [--run-for SECONDS]";

fn parse() -> Result<Args, String> {
    let mut args = Args {
        nodes: 3,
        base_port: 7001,
        data_dir: None,
        run_for: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}\n{USAGE}");
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().map_err(|e| bad(&e))?,
            "--base-port" => args.base_port = value.parse().map_err(|e| bad(&e))?,
            "--data-dir" => args.data_dir = Some(value.into()),
            "--run-for" => {
                args.run_for = Some(Duration::from_secs(value.parse().map_err(|e| bad(&e))?))
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if args.nodes == 0 || args.nodes > 50 {
        return Err(format!("--nodes must be between 1 and 50\n{USAGE}"));
    }
    Ok(args)
}

async fn run(args: Args) -> Result<(), String> {
    let temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let addrs: Vec<String> = (0..args.nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(args.base_port) + i))
        .collect();
    let members: Vec<(NodeId, String)> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (NodeId(i as u64 + 1), a.clone()))
        .collect();
    let mut nodes = Vec::new();
    for (id, addr) in &members {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} ({e}); is another cluster running? try --base-port")
        })?;
        let config = NodeConfig {
            id: *id,
            members: members.clone(),
            data_dir: data_dir.join(format!("n{}", id.0)),
            coordinator: kv_coordinator::Config {
                n: 3.min(args.nodes as usize),
                w: 2.min(args.nodes as usize),
                r: 2.min(args.nodes as usize),
                ..kv_coordinator::Config::default()
            },
            durability: kv::lsm::Durability::Always,
            vnodes: 150,
            memtable_bytes: 16 << 20,
        };
        let node = start(config, listener)
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
        let maintenance = node.coordinator().spawn_maintenance();
        let http_addr = format!("127.0.0.1:{}", u64::from(args.base_port) + 1000 + id.0 - 1);
        let http_listener = tokio::net::TcpListener::bind(&http_addr)
            .await
            .map_err(|e| format!("cannot listen on {http_addr} ({e}); try --base-port"))?;
        let http = kv_server::http::serve(node.coordinator().clone(), http_listener);
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
    println!();
    match args.run_for {
        Some(d) => {
            println!("running for {} s", d.as_secs());
            tokio::time::sleep(d).await;
        }
        None => {
            println!("press Ctrl-C to stop");
            tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
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

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
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
