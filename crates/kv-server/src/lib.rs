//! The kv node: gRPC services over the coordinator and the LSM engine.
//!
//! The one crate that picks concrete types: [`LsmEngine`](kv_lsm::LsmEngine)
//! for data and hints, [`GrpcTransport`] between nodes, the balanced ring.
//! It serves the client service (`Kv`: get, put, delete with contexts and
//! siblings) and the internal service on one address.
//!
//! Built so far: the services, the transport, node assembly, `kvd`,
//! `kvctl`, metrics and a status page over HTTP ([`http`]). Not yet:
//! gossip-driven membership, joins and leaves.

pub mod client;
pub mod cluster;
mod config;
pub mod http;
mod node;
pub mod ring_state;
mod service;
mod status;
mod transport;

pub use config::{ConfigError, ServerConfig, parse_durability};
pub use node::{NodeConfig, NodeError, RunningNode, start};
pub use service::{AdminService, Engine, InternalService, KvService, NodeCoordinator};
pub use status::to_status;
pub use transport::{GrpcTransport, MAX_MESSAGE_BYTES};

/// Code generated from `proto/kv.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kv.v1");
}
