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
//! - [`sim`]: an in-process network that can drop, delay and partition.
//!
//! Built so far: quorum writes and reads, siblings, read repair, sloppy
//! quorum with durable hinted handoff, Merkle anti-entropy (one tree per
//! peer over the keys both replicate), input checks. Requests that reach a node other than the key's
//! first healthy replica are forwarded to it (one hop). Tombstones are collected once
//! every replica holds them and a grace period has passed.

pub mod batch;
mod config;
mod coordinator;
mod error;
mod hints;
mod metrics;
mod replica;
pub mod sim;
mod trees;

pub use config::Config;
pub use coordinator::{ClientHandler, Coordinator, GetResult, PutResult, RepairReport};
pub use error::{Error, Result};
pub use hints::HintStore;
pub use metrics::{BUCKETS, Histogram, Metrics, OpMetrics};
pub use replica::{Replica, ReplicaSettings, Siblings, Update, Value};
