#![allow(missing_docs, clippy::print_stdout, clippy::unwrap_used)]
use kv_core::NodeId;
use kv_ring::ConsistentHashRing;
fn main() {
    let n: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
    let ring = ConsistentHashRing::builder().nodes((1..=n).map(NodeId)).build().unwrap();
    let own = ring.ownership();
    let rep = ring.replicated_ownership(3).unwrap();
    let mean_rep = 3.0 / n as f64;
    for id in 1..=n {
        let id = NodeId(id);
        // adjacency: how often this node's vnode is directly followed by the same node
        let toks: Vec<_> = ring.token_owners().collect();
        let mut widths: Vec<f64> = Vec::new();
        for i in 0..toks.len() { if toks[i].1 == id { let prev = if i == 0 { toks[toks.len()-1].0 .0 } else { toks[i-1].0 .0 }; widths.push(toks[i].0 .0.wrapping_sub(prev) as f64 / 2f64.powi(64)); } }
        let mean = widths.iter().sum::<f64>() / widths.len() as f64;
        let var = widths.iter().map(|w| (w-mean)*(w-mean)).sum::<f64>() / widths.len() as f64;
        println!("{id} own={:.4} rep/mean={:.3} tokens={} cv={:.2}", own[&id] * n as f64, rep[&id] / mean_rep, widths.len(), var.sqrt()/mean);
    }
}
