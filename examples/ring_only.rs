//! The consistent-hash ring on its own, for any sharding job: spread work
//! items over named workers, then add a worker and see which items move
//! (only the new worker's share, all of it to the new worker). Only
//! `kv-ring` and `kv-core`; nothing here knows about storage or networks.
//!
//! ```text
//! cargo run --release --example ring_only
//! ```
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;

use kv_core::{NodeId, Partitioner};
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff};

/// The workers, by name; the ring only knows their ids.
const WORKERS: [&str; 5] = ["ingest-a", "ingest-b", "ingest-c", "ingest-d", "ingest-e"];

fn name(id: NodeId) -> &'static str {
    usize::try_from(id.0)
        .ok()
        .and_then(|i| WORKERS.get(i - 1))
        .copied()
        .unwrap_or("?")
}

/// Which worker takes each item: the first node of its preference list.
fn assign(
    ring: &ConsistentHashRing,
    items: &[String],
) -> Result<Vec<NodeId>, Box<dyn std::error::Error>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let owners = ring.preference_list(item.as_bytes(), 1)?;
        out.push(*owners.first().ok_or("an empty ring")?);
    }
    Ok(out)
}

fn per_worker(assigned: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for id in assigned {
        *counts.entry(*id).or_insert(0) += 1;
    }
    counts
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let items: Vec<String> = (0..100_000).map(|i| format!("job:{i}")).collect();

    println!("== 4 workers (ingest-d twice the weight), 100,000 jobs");
    let ring = ConsistentHashRing::builder()
        .node(NodeSpec::new(NodeId(1)))
        .node(NodeSpec::new(NodeId(2)))
        .node(NodeSpec::new(NodeId(3)))
        .node(NodeSpec::new(NodeId(4)).weight(2))
        .build()?;
    let before = assign(&ring, &items)?;
    for (id, count) in per_worker(&before) {
        println!(
            "  {:<9} {:>6} jobs ({:.1}%)",
            name(id),
            count,
            count as f64 / 1000.0
        );
    }

    println!("== ingest-e joins");
    let bigger = ring.with_node(NodeSpec::new(NodeId(5)))?;
    let after = assign(&bigger, &items)?;
    let mut moved: BTreeMap<(NodeId, NodeId), usize> = BTreeMap::new();
    for (from, to) in before.iter().zip(&after) {
        if from != to {
            *moved.entry((*from, *to)).or_insert(0) += 1;
        }
    }
    let total: usize = moved.values().sum();
    println!(
        "  {total} jobs move ({:.1}%), the ideal being 1/6 = 16.7% (ingest-e's weight share):",
        total as f64 / 1000.0
    );
    for ((from, to), count) in &moved {
        println!("    {:<9} -> {:<9} {count}", name(*from), name(*to));
    }
    let only_to_new = moved.keys().all(|(_, to)| *to == NodeId(5));
    println!("  every moved job went to the new worker: {only_to_new}");

    println!("== the same change as token ranges (what a data store streams)");
    let diff = RingDiff::between(&ring, &bigger, 1)?;
    println!(
        "  {} ranges change owner, {:.1}% of the token space; ingest-e gains {:.1}%",
        diff.moves().len(),
        diff.moved_fraction() * 100.0,
        diff.gained_fraction(NodeId(5)) * 100.0
    );

    println!("== with 2 copies of each job (a primary and a standby)");
    let job = "job:4242";
    println!(
        "  {job}: {:?} before, {:?} after",
        ring.preference_list(job.as_bytes(), 2)?
            .into_iter()
            .map(name)
            .collect::<Vec<_>>(),
        bigger
            .preference_list(job.as_bytes(), 2)?
            .into_iter()
            .map(name)
            .collect::<Vec<_>>()
    );
    if !only_to_new {
        return Err("a join moved work between old workers".into());
    }
    Ok(())
}
