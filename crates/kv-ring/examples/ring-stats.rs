//! Balance and movement figures of a ring.
//!
//! ```text
//! cargo run --release -p kv-ring --example ring-stats -- --nodes 10 --vnodes 150
//! ```
//!
//! The first three lines are the headline figures (ownership balance,
//! replicated balance over `--replicas` replicas, and the share of keys that
//! change primary when one more node joins); the lines after them give the
//! leave figures, the same figures for random (hashed) tokens, and timings.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Instant;

use kv_core::NodeId;
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff, TokenStrategy};

struct Args {
    nodes: u64,
    vnodes: u32,
    replicas: usize,
    zones: u64,
}

const USAGE: &str = "usage: ring-stats [--nodes N] [--vnodes V] [--replicas R] [--zones Z]\n\
  --nodes N     physical nodes (default 10, at least 2)\n\
  --vnodes V    virtual nodes per node (default 150)\n\
  --replicas R  replication factor for the replicated balance (default 3)\n\
  --zones Z     spread nodes round-robin over Z zones (default 0: no zones)";

fn parse() -> Result<Args, String> {
    let mut args = Args {
        nodes: 10,
        vnodes: 150,
        replicas: 3,
        zones: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: std::num::ParseIntError| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().map_err(bad)?,
            "--vnodes" => args.vnodes = value.parse().map_err(bad)?,
            "--replicas" => args.replicas = value.parse().map_err(bad)?,
            "--zones" => args.zones = value.parse().map_err(bad)?,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if args.nodes < 2 {
        return Err(format!(
            "--nodes must be at least 2 (a join and a leave are measured)\n{USAGE}"
        ));
    }
    if args.vnodes == 0 || args.replicas == 0 {
        return Err(format!(
            "--vnodes and --replicas must be at least 1\n{USAGE}"
        ));
    }
    Ok(args)
}

fn spec(id: u64, zones: u64) -> NodeSpec {
    let spec = NodeSpec::new(NodeId(id));
    if zones == 0 {
        spec
    } else {
        spec.zone(format!("zone{}", id % zones))
    }
}

fn build(args: &Args, strategy: TokenStrategy) -> ConsistentHashRing {
    ConsistentHashRing::builder()
        .vnodes(args.vnodes)
        .strategy(strategy)
        .balance_replicas(args.replicas)
        .nodes((1..=args.nodes).map(|id| spec(id, args.zones)))
        .build()
        .expect("nodes are distinct and vnodes non-zero")
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let (n, v, r) = (args.nodes, args.vnodes, args.replicas);

    let started = Instant::now();
    let ring = build(&args, TokenStrategy::Balanced);
    let build_ms = started.elapsed().as_secs_f64() * 1e3;

    println!(
        "balance: nodes={n} vnodes={v} max_over_mean={:.3}",
        ring.balance()
    );
    println!(
        "replicated_balance: n={r} max_over_mean={:.3}",
        ring.replicated_balance(r).expect("r > 0")
    );
    let joined = ring.with_node(spec(n + 1, args.zones)).expect("new id");
    let primary = RingDiff::between(&ring, &joined, 1).expect("non-empty rings");
    let moved = primary.moved_fraction();
    let ideal = 1.0 / (n as f64 + 1.0);
    println!(
        "join_movement: moved_fraction={moved:.4} ideal={ideal:.4} ratio={:.3}",
        moved / ideal
    );
    let to_new = primary.gained_fraction(NodeId(n + 1));
    println!(
        "join_movement_to_new_node: fraction={to_new:.4} of_moved={:.3}",
        to_new / moved
    );
    println!(
        "after_join_balance: nodes={} max_over_mean={:.3}",
        n + 1,
        joined.balance()
    );

    let left = ring.without_node(NodeId(1)).expect("member");
    let leave = RingDiff::between(&ring, &left, 1).expect("non-empty rings");
    let leave_ideal = 1.0 / n as f64;
    println!(
        "leave_movement: moved_fraction={:.4} ideal={leave_ideal:.4} ratio={:.3}",
        leave.moved_fraction(),
        leave.moved_fraction() / leave_ideal
    );
    println!(
        "after_leave_balance: nodes={} max_over_mean={:.3}",
        n - 1,
        left.balance()
    );

    let hashed = build(&args, TokenStrategy::Hashed);
    println!(
        "hashed_tokens_baseline: balance={:.3} replicated_balance={:.3}",
        hashed.balance(),
        hashed.replicated_balance(r).expect("r > 0")
    );
    println!(
        "build_time: nodes={n} tokens={} ms={build_ms:.1}",
        ring.token_count()
    );
    ExitCode::SUCCESS
}
