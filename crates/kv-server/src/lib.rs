//! The kv node: gRPC services over the coordinator and the LSM engine.
//!
//! The one crate that picks concrete types: [`LsmEngine`](kv_lsm::LsmEngine)
//! for data and hints, [`GrpcTransport`] between nodes, the balanced ring
//! behind a [`LiveRing`](cluster::LiveRing), gossip for liveness. One gRPC
//! address serves the client service (`Kv`: get, put, delete with contexts
//! and siblings), the internal service (replication, anti-entropy, gossip,
//! ring changes, range streaming) and the admin service (`kvctl status`,
//! `hints`, `join`, `leave`), each method open only to the callers its
//! role allows ([`security`]); [`http`] serves metrics and a status page.
//!
//! - [`start`] assembles and runs a node from a [`NodeConfig`]
//!   ([`ServerConfig`] reads one from TOML and flags, as `kvd` does);
//! - [`serve_client_api`] serves the client API of any coordinator, for
//!   nodes composed from the crates with other engines or transports;
//! - [`cluster`]: membership, the versioned ring, joins, leaves, hand-off;
//! - [`client`]: the Rust client SDK;
//! - [`security`]: mutual TLS between nodes, tokens and client
//!   certificates with roles, and the gate in front of the services;
//! - [`to_status`]: coordinator errors as gRPC statuses, in one place.
//!
//! Not here: the storage engine (`kv-lsm`), replication logic
//! (`kv-coordinator`), the gossip state machine (`kv-gossip`).
//!
//! Three nodes on 127.0.0.1, a client, a write and a read (`start_local`
//! and the `history` checker come with the `test-util` feature, for tests
//! and checkers, not for nodes):
//!
//! ```
//! use kv_server::client::{Client, ClientConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     let dir = tempfile::tempdir()?;
//!     let nodes = kv_server::start_local(3, dir.path(), |config| config).await?;
//!     let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
//!     let client = Client::new(&addrs, ClientConfig::default())?;
//!     client.put(b"user:1", b"alice".to_vec(), None).await?;
//!     let read = client.get(b"user:1").await?;
//!     assert_eq!(read.values, vec![b"alice".to_vec()]);
//!     for node in nodes {
//!         node.shutdown().await?;
//!     }
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod cluster;
mod config;
pub mod endpoint;
pub mod frames;
#[cfg(feature = "test-util")]
pub mod history;
pub mod http;
pub mod identity;
mod local;
mod node;
#[cfg(feature = "otel")]
pub mod otel;
pub mod page;
pub mod pipeline;
pub mod ring_state;
pub mod security;
mod service;
mod status;
mod stopping;
pub mod trace;
mod transport;
pub mod version;
mod wire;

pub use config::{ConfigError, ServerConfig, parse_durability, parse_syncer};
#[cfg(feature = "test-util")]
pub use node::start_local;
pub use node::{
    NodeConfig, NodeError, RunningNode, serve_client_api, shutdown_signal, start, start_on,
};
pub use service::{AdminService, Engine, InFlight, InternalService, KvService, NodeCoordinator};
pub use status::{cluster_status, to_status};
pub use transport::{Connect, GrpcTransport, MAX_MESSAGE_BYTES, tcp_connect};

/// Code generated from `proto/kv.proto`.
#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kv.v1");
}
