//! How big a key's clock gets when its coordinators restart, and how
//! pruning bounds it.
//!
//! Every start of a node takes a new epoch, and the node's actor in
//! clocks is the node in that epoch: a key written by a node after each
//! of its restarts gains one context entry per restart. The entries of
//! retired epochs are pruned once older than the policy's `old` age (one
//! day by default). This simulates one key written once a minute,
//! round robin by three nodes that each restart every `--restart-hours`,
//! each write carrying the context of a read (so one sibling survives),
//! and prints the clock's entries and the state's encoded size per day.
//!
//! ```sh
//! cargo run --release -p kv-clock --example clock-growth -- --restart-hours 6 --days 7
//! ```
#![allow(clippy::print_stdout)]

use kv_clock::{DvvSet, PrunePolicy};
use kv_core::{ActorId, NodeId};

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .ok_or(format!("{name} needs a value"))?
            .parse()
            .map_err(|e| format!("{name}: {e}")),
        None => Ok(default),
    }
}

fn main() -> Result<(), String> {
    let restart_hours = arg("--restart-hours", 6)?.max(1);
    let days = arg("--days", 7)?.max(1);
    let policy = PrunePolicy::default();
    let nodes = 3u64;
    let start = 1_800_000_000u64;
    let mut key: DvvSet<Vec<u8>> = DvvSet::new();
    let mut pruned = 0;
    let mut max_entries = 0;
    println!(
        "one key, written once a minute by {nodes} nodes in turn, each restarting every {restart_hours} h; prune policy: small {} big {} young {:?} old {:?}",
        policy.small, policy.big, policy.young, policy.old
    );
    println!("day  entries  max_entries  state_bytes  pruned");
    for minute in 0..days * 24 * 60 {
        let now = start + minute * 60;
        let node = minute % nodes;
        // Node n restarts every `restart_hours`, staggered.
        let epoch = (now + node * 3_600) / (restart_hours * 3_600);
        let actor = ActorId::of(NodeId(node + 1), epoch as u32).ok_or("node id")?;
        let context = key.context().clone();
        key.update(&context, actor, vec![7; 100], now)
            .map_err(|e| e.to_string())?;
        pruned += key.prune(&policy, now, actor);
        max_entries = max_entries.max(key.context().len());
        if (minute + 1) % (24 * 60) == 0 {
            println!(
                "{:>3}  {:>7}  {:>11}  {:>11}  {:>6}",
                (minute + 1) / (24 * 60),
                key.context().len(),
                max_entries,
                key.to_bytes().len(),
                pruned
            );
        }
    }
    Ok(())
}
