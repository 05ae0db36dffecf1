//! `kv`: a Dynamo-style, always-writable, horizontally scaled key-value store.
//!
//! This facade re-exports each layer of the store as a module, so a program
//! can depend on one crate and reach every layer:
//!
//! - [`core`]: shared ids ([`core::NodeId`], [`core::Token`]) and the ports
//!   between layers.
//! - [`clock`]: vector clocks and dotted version vector sets (siblings).
//! - [`ring`]: consistent hashing with balanced virtual nodes.
//! - [`lsm`]: the storage engine.
//! - [`merkle`]: Merkle trees for anti-entropy.
//!
//! Each layer is also a crate of its own (`kv-core`, `kv-clock`, `kv-ring`,
//! `kv-lsm`, `kv-merkle`) for programs that want only that layer.
//!
//! ```
//! use kv::ring::ConsistentHashRing;
//! use kv::core::{NodeId, Partitioner};
//!
//! let ring = ConsistentHashRing::builder()
//!     .nodes([NodeId(1), NodeId(2), NodeId(3), NodeId(4)])
//!     .build()
//!     .unwrap();
//! let replicas = ring.preference_list(b"user:42", 3).unwrap();
//! assert_eq!(replicas.len(), 3);
//! ```

pub use kv_clock as clock;
pub use kv_core as core;
pub use kv_lsm as lsm;
pub use kv_merkle as merkle;
pub use kv_ring as ring;
