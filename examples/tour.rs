//! A tour of the layers that exist so far: where keys live on a ring of
//! five nodes, what happens to that placement when a sixth joins, and how
//! concurrent writes become siblings that a later write resolves.
//!
//! ```text
//! cargo run --release --example tour
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use kv::clock::{DvvSet, VectorClock};
use kv::core::{NodeId, Partitioner};
use kv::ring::{ConsistentHashRing, NodeSpec, RingDiff};

fn show(set: &DvvSet<Vec<u8>>) -> String {
    let values: Vec<String> = set
        .siblings()
        .iter()
        .map(|s| format!("{}@{}", String::from_utf8_lossy(&s.value), s.dot))
        .collect();
    let context: Vec<String> = set
        .context()
        .entries()
        .iter()
        .map(|e| format!("{}:{}", e.actor, e.counter))
        .collect();
    format!("[{}] context {{{}}}", values.join(", "), context.join(", "))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("== placement: 5 nodes in 3 zones, 150 vnodes each, N=3");
    let ring = ConsistentHashRing::builder()
        .node(NodeSpec::new(NodeId(1)).zone("a"))
        .node(NodeSpec::new(NodeId(2)).zone("b"))
        .node(NodeSpec::new(NodeId(3)).zone("c"))
        .node(NodeSpec::new(NodeId(4)).zone("a"))
        .node(NodeSpec::new(NodeId(5)).zone("b"))
        .build()?;
    for key in ["user:1", "user:2", "cart:77", "session:x"] {
        let replicas = ring.preference_list(key.as_bytes(), 3)?;
        let zones: Vec<String> = replicas
            .iter()
            .map(|id| {
                ring.node_spec(*id)
                    .and_then(|s| s.zone.clone())
                    .unwrap_or_default()
            })
            .collect();
        println!(
            "  {key:<10} token {}  replicas {:?}  zones {:?}",
            ring.token(key.as_bytes()),
            replicas.iter().map(ToString::to_string).collect::<Vec<_>>(),
            zones
        );
    }
    for (id, share) in ring.ownership() {
        println!("  {id} owns {:.1}% of the ring", share * 100.0);
    }

    println!("\n== a sixth node joins");
    let bigger = ring.with_node(NodeSpec::new(NodeId(6)).zone("c"))?;
    let diff = RingDiff::between(&ring, &bigger, 3)?;
    println!(
        "  {} ranges change replicas, {:.1}% of the ring; n6 receives {:.1}%",
        diff.moves().len(),
        diff.moved_fraction() * 100.0,
        diff.gained_fraction(NodeId(6)) * 100.0
    );

    println!("\n== siblings: two clients write with the same context through n1");
    let coordinator = NodeId(1);
    let mut key: DvvSet<Vec<u8>> = DvvSet::new();
    key.update(&VectorClock::new(), coordinator, b"v0".to_vec(), 0)?;
    let read = key.context().clone();
    println!("  after the first write:   {}", show(&key));
    key.update(&read, coordinator, b"alice".to_vec(), 1)?;
    key.update(&read, coordinator, b"bob".to_vec(), 2)?;
    println!("  after both writes:       {}", show(&key));
    let merged = key.context().clone();
    key.update(&merged, coordinator, b"alice+bob".to_vec(), 3)?;
    println!("  after a resolving write: {}", show(&key));
    println!("  stored as {} bytes", key.to_bytes().len());
    Ok(())
}
