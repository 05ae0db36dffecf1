//! The maintenance timer: hints, tombstones and anti-entropy on their
//! intervals.

use super::*;

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Starts the background maintenance of this node: every
    /// `maintenance_interval` it delivers hints and collects tombstones;
    /// every `anti_entropy_interval` it runs one anti-entropy exchange with
    /// the next live peer, round robin (so repair traffic stays bounded),
    /// except while an operator's repair of this replica runs
    /// ([`Replica::begin_repair`]), which exchanges with every peer itself.
    /// The task ends when the coordinator is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let (tick, ae_every) = (
            self.config.maintenance_interval,
            self.config.anti_entropy_interval,
        );
        tokio::spawn(async move {
            let mut next_ae = Instant::now() + ae_every;
            let mut turn = 0usize;
            loop {
                tokio::time::sleep(tick).await;
                let Some(this) = weak.upgrade() else { return };
                if let Err(e) = this.deliver_hints(10_000).await {
                    warn_failed("hint delivery", None, &e);
                }
                if let Err(e) = this.collect_tombstones(kv_core::unix_secs()).await {
                    warn_failed("tombstone collection", None, &e);
                }
                if Instant::now() >= next_ae && !this.replica.repair_running() {
                    next_ae = Instant::now() + ae_every;
                    let me = this.replica.id();
                    let peers: Vec<NodeId> = this
                        .ring
                        .nodes()
                        .into_iter()
                        .filter(|&p| p != me && this.membership.is_alive(p))
                        .collect();
                    if !peers.is_empty() {
                        let peer = peers[turn % peers.len()];
                        turn = turn.wrapping_add(1);
                        if let Err(e) = this
                            .anti_entropy_with(peer, this.config.anti_entropy_fanout)
                            .await
                        {
                            warn_failed("anti-entropy", Some(peer), &e);
                        }
                    }
                }
            }
        })
    }
}

/// Background work has no caller to hand its error to: it goes to the log,
/// with its kind, and the work is tried again on the next tick.
fn warn_failed(work: &str, peer: Option<NodeId>, error: &Error) {
    tracing::warn!(
        work,
        peer = ?peer.map(|p| p.0),
        kind = ?error.kind(),
        %error,
        "maintenance failed; tried again on a later tick"
    );
}
