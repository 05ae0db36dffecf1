//! Repair on demand (`kvctl repair`): anti-entropy with every peer this
//! node shares keys with, now, its progress streamed to the operator.

use kv_coordinator::RepairReport;
use tokio::sync::mpsc;

use super::*;
use crate::proto::RepairProgress;

impl Cluster {
    /// Starts a full repair of this node: an anti-entropy exchange with
    /// each peer of the ring (or only `only`), one after another, each
    /// repairing both sides. Progress arrives on the returned channel as
    /// pages complete (dropped when the reader is slow; the last message
    /// of each peer never is), and the channel closes when the repair is
    /// done or its reader went away. Meanwhile this node declines the
    /// exchanges its peers start and starts none in the background
    /// (`Replica::begin_repair`): they would move the same keys again.
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` when `only` is not a peer of this node's ring,
    /// or the ring has no other node.
    pub fn repair(
        self: &Arc<Self>,
        only: Option<NodeId>,
    ) -> Result<mpsc::Receiver<RepairProgress>, ClusterError> {
        let me = self.settings.id;
        let peers: Vec<NodeId> = self
            .ring
            .nodes()
            .into_iter()
            .filter(|&p| p != me && only.is_none_or(|o| o == p))
            .collect();
        if peers.is_empty() {
            return Err(ClusterError::Precondition(match only {
                Some(peer) => format!("node {peer} is not a peer of node {me} in the ring"),
                None => format!("node {me} shares no keys with another node"),
            }));
        }
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        // From here until the task ends (done, or its reader gone), peers'
        // exchanges with this node and its own background ones wait.
        let running = self.coordinator.replica().begin_repair();
        tokio::spawn(async move {
            let _running = running;
            let total = peers.len() as u32;
            let fanout = this.coordinator.config().anti_entropy_fanout;
            for (done, peer) in peers.into_iter().enumerate() {
                if tx.is_closed() {
                    return;
                }
                let progress = |r: &RepairReport| RepairProgress {
                    peer: peer.0,
                    peers_done: done as u32,
                    peers_total: total,
                    buckets: r.buckets as u64,
                    keys_pulled: r.keys_pulled as u64,
                    keys_changed: r.keys_changed as u64,
                    keys_pushed: r.keys_pushed as u64,
                    ..RepairProgress::default()
                };
                let mut last = RepairReport::default();
                let outcome = this
                    .coordinator
                    .anti_entropy_observed(peer, fanout, |r| {
                        last = *r;
                        let _ = tx.try_send(progress(r));
                    })
                    .await;
                let end = RepairProgress {
                    peer_done: true,
                    error: outcome.err().map(|e| e.to_string()).unwrap_or_default(),
                    ..progress(&last)
                };
                tracing::info!(
                    peer = peer.0,
                    buckets = end.buckets,
                    pulled = end.keys_pulled,
                    changed = end.keys_changed,
                    pushed = end.keys_pushed,
                    error = %end.error,
                    "repair: exchange done"
                );
                if tx.send(end).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
