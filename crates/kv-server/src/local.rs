//! What a node runs on: its engine and coordinator types, the ring its
//! coordinator places keys with, and engine calls off the async runtime.
//! The services and the cluster both build on this; it builds on neither.

use std::sync::Arc;

use kv_coordinator::Coordinator;
use kv_core::{NodeId, Partitioner, PartitionerError, Token, TokenRange};
use kv_lsm::LsmEngine;
use kv_ring::ConsistentHashRing;
use parking_lot::RwLock;

use crate::transport::GrpcTransport;

/// The storage engine of a node (shared with its hint store's engine type).
pub type Engine = Arc<LsmEngine>;

/// A node's coordinator with the concrete types of the server.
pub type NodeCoordinator = Coordinator<Engine, GrpcTransport, LiveRing>;

/// The ring the coordinator places keys with; replaced, never edited, when
/// the cluster's ring changes.
#[derive(Debug)]
pub struct LiveRing {
    current: RwLock<Arc<ConsistentHashRing>>,
}

impl LiveRing {
    /// Starts with `ring`.
    pub fn new(ring: ConsistentHashRing) -> Self {
        LiveRing {
            current: RwLock::new(Arc::new(ring)),
        }
    }

    /// The ring now.
    pub fn current(&self) -> Arc<ConsistentHashRing> {
        self.current.read().clone()
    }

    pub(crate) fn set(&self, ring: ConsistentHashRing) {
        *self.current.write() = Arc::new(ring);
    }
}

impl Partitioner for LiveRing {
    fn token(&self, key: &[u8]) -> Token {
        self.current.read().token(key)
    }

    fn preference_list_for_token(
        &self,
        token: Token,
        n: usize,
    ) -> Result<Vec<NodeId>, PartitionerError> {
        self.current.read().preference_list_for_token(token, n)
    }

    fn replicated_ranges(
        &self,
        node: NodeId,
        n: usize,
    ) -> Result<Vec<TokenRange>, PartitionerError> {
        self.current.read().replicated_ranges(node, n)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.current.read().nodes()
    }
}

/// Runs a blocking engine call off the async runtime; a task that
/// panicked or was cancelled is [`kv_coordinator::Error::Task`].
pub(crate) async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> kv_coordinator::Result<T> + Send + 'static,
) -> kv_coordinator::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| engine_task_failed(&e))?
}

/// A blocking engine task that panicked or was cancelled.
fn engine_task_failed(e: &tokio::task::JoinError) -> kv_coordinator::Error {
    kv_coordinator::Error::Task(format!("the engine task: {e}"))
}
