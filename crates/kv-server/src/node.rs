//! A node: engines, replica, coordinator and gRPC services, assembled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kv_coordinator::{Coordinator, Replica, ReplicaSettings};
use kv_core::{MembershipView, NodeId};
use kv_lsm::{Durability, LsmEngine};
use kv_ring::ConsistentHashRing;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::proto::internal_server::InternalServer;
use crate::proto::kv_server::KvServer;
use crate::service::{Engine, InternalService, KvService, NodeCoordinator};
use crate::transport::{GrpcTransport, MAX_MESSAGE_BYTES};

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// Every member of the cluster with its gRPC address, this node included.
    pub members: Vec<(NodeId, String)>,
    /// Where the node keeps its data (`data/` and `hints/` below it).
    pub data_dir: PathBuf,
    /// Replication settings.
    pub coordinator: kv_coordinator::Config,
    /// Commit-log durability.
    pub durability: Durability,
    /// Virtual nodes per node.
    pub vnodes: u32,
    /// Memtable size of the data engine.
    pub memtable_bytes: usize,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A storage engine failed to open.
    #[error("storage: {0}")]
    Storage(#[from] kv_lsm::Error),
    /// The coordinator refused its settings or failed to start.
    #[error("coordinator: {0}")]
    Coordinator(#[from] kv_coordinator::Error),
    /// The ring could not be built from the members.
    #[error("ring: {0}")]
    Ring(#[from] kv_ring::RingError),
    /// This node is not among the members.
    #[error("node {0} is not among the members")]
    NotAMember(NodeId),
    /// Listening failed.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Every member alive (until gossip drives this view).
#[derive(Debug, Default)]
pub struct StaticMembership;

impl MembershipView for StaticMembership {
    fn is_alive(&self, _node: NodeId) -> bool {
        true
    }
}

/// A running node.
pub struct RunningNode {
    /// Its id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    coordinator: Arc<NodeCoordinator>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningNode {
    /// The node's coordinator.
    pub fn coordinator(&self) -> &Arc<NodeCoordinator> {
        &self.coordinator
    }

    /// Stops accepting, finishes in-flight requests, and flushes.
    pub async fn shutdown(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        let replica = self.coordinator.replica().clone();
        tokio::task::spawn_blocking(move || kv_core::StorageEngine::flush(replica.engine()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// Opens the node's engines, builds its coordinator and serves both gRPC
/// services on `listener` until shut down.
pub async fn start(config: NodeConfig, listener: TcpListener) -> Result<RunningNode, NodeError> {
    if !config.members.iter().any(|(id, _)| *id == config.id) {
        return Err(NodeError::NotAMember(config.id));
    }
    let addr = listener.local_addr()?;
    let open = |dir: &str, memtable: usize| -> Result<Engine, NodeError> {
        Ok(Arc::new(
            LsmEngine::builder(config.data_dir.join(dir))
                .durability(config.durability)
                .memtable_bytes(memtable)
                .open()?,
        ))
    };
    let data = open("data", config.memtable_bytes)?;
    let hints = open("hints", 4 << 20)?;
    let mut members = config.members.clone();
    members.sort();
    let ring = Arc::new(
        ConsistentHashRing::builder()
            .vnodes(config.vnodes)
            .balance_replicas(config.coordinator.n)
            .nodes(members.iter().map(|(id, _)| *id))
            .build()?,
    );
    let transport = Arc::new(GrpcTransport::new(config.coordinator.request_timeout));
    for (id, member_addr) in &members {
        transport.set_address(*id, member_addr.clone());
    }
    let settings = ReplicaSettings {
        n: config.coordinator.n,
        hint_limit: config.coordinator.max_hints,
        merkle_leaves: 1 << 12,
    };
    let replica = Arc::new(Replica::new(
        config.id,
        data,
        hints,
        &settings,
        ring.clone(),
    )?);
    let coordinator = Arc::new(Coordinator::new(
        config.coordinator.clone(),
        replica,
        transport,
        ring,
        Arc::new(StaticMembership),
    )?);
    let (tx, rx) = oneshot::channel::<()>();
    let kv = KvServer::new(KvService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let internal = InternalServer::new(InternalService::new(coordinator.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_millis(500)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(1)))
            .add_service(kv)
            .add_service(internal)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }),
    );
    Ok(RunningNode {
        id: config.id,
        addr,
        coordinator,
        shutdown: Some(tx),
        server: Some(server),
    })
}
