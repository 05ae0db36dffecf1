//! Quorum reads and writes with siblings, over the ports of `kv-core`.
//!
//! The coordinator of a key is one of its replicas: it makes the new
//! version itself (a fresh dot in the key's dotted version vector set),
//! sends the resulting state to the other replicas and answers after W
//! acknowledgements; reads merge R replicas' states and repair the ones
//! that answered with less. Generic over the storage engine, the transport
//! and the partitioner; it never depends on `kv-lsm`, `kv-gossip`, tonic or
//! prost, and uses tokio only for time, sync and spawning background work.
//!
//! - [`Replica`]: the local versioned store.
//! - [`Coordinator`]: `put`, `get`, `delete` with per-request W and R.
//! - `sim` (feature `test-util`): an in-process network that can drop,
//!   delay and partition, for tests, benches and in-process examples.
//!
//! Built so far: quorum writes and reads, siblings, read repair, sloppy
//! quorum with durable hinted handoff, Merkle anti-entropy (one tree per
//! peer over the keys both replicate), input checks. Requests that reach a node other than the key's
//! first healthy replica are forwarded to it (one hop). Tombstones are collected once
//! every replica holds them and a grace period has passed.
//!
//! Not here: sockets, gossip, disks. A node picks those (`kv-server`
//! picks gRPC, SWIM gossip and `kv-lsm`); this crate sees them through the
//! traits of `kv-core`.
//!
//! Three replicas on the in-memory engine, joined by the in-process
//! network, and a write that two readers then see:
//!
//! ```
//! use std::sync::Arc;
//! use kv_coordinator::sim::{SimNetwork, SimTransport};
//! use kv_coordinator::{Config, Coordinator, Replica, ReplicaSettings};
//! use kv_core::NodeId;
//! use kv_ring::ConsistentHashRing;
//! use kv_testkit::MemEngine;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ring = Arc::new(ConsistentHashRing::builder().nodes((1..=3).map(NodeId)).build()?);
//! let network = SimNetwork::new(1);
//! let mut nodes = Vec::new();
//! for id in (1..=3).map(NodeId) {
//!     let engine = Arc::new(MemEngine::new());
//!     let hints = Arc::new(MemEngine::new());
//!     let replica = Arc::new(Replica::new(id, engine, hints, &ReplicaSettings::default(), ring.clone())?);
//!     network.attach(replica.clone());
//!     let transport = Arc::new(SimTransport::new(id, network.clone()));
//!     nodes.push(Coordinator::new(Config::default(), replica, transport, ring.clone(), network.clone())?);
//! }
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! runtime.block_on(async {
//!     // Node 1 coordinates if it replicates the key (N=3 of 3: it does).
//!     let written = nodes[0].put(b"cart:1", b"apples", &[], None).await?;
//!     let read = nodes[2].get(b"cart:1", Some(3)).await?;
//!     assert_eq!(read.values, vec![b"apples".to_vec()]);
//!     assert_eq!(written.dot.actor.node(), NodeId(1));
//!     Ok::<(), kv_coordinator::Error>(())
//! })?;
//! # Ok(())
//! # }
//! ```

pub mod batch;
mod config;
mod coordinator;
mod error;
mod hints;
mod latency;
mod metrics;
mod replica;
#[cfg(feature = "test-util")]
pub mod sim;
pub mod trace;
mod trees;
mod versions;

pub use config::Config;
pub use coordinator::{
    ClientHandler, Coordinator, GetResult, PeerRepair, PutResult, RepairReport, Watch, WatchBatch,
    WatchChange,
};
pub use error::{Error, ErrorKind, Result};
pub use hints::{Hint, HintLimits, HintStore};
pub use latency::RecentLatency;
pub use metrics::{BUCKETS, Histogram, Metrics, OpMetrics};
pub use replica::{
    KEY_PAGE_BYTES, MAX_COUNTER, Pending, RepairRunning, Replica, ReplicaSettings, Siblings,
    Update, Value,
};
