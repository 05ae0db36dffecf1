//! Ring changes for nodes that are gone for good: `remove` (from any node:
//! the dead node's ranges are copied from their surviving replicas to
//! their new owners, then the ring without it is installed) and `replace`
//! (a new node takes the dead node's tokens, streaming its ranges from the
//! surviving replicas before the ring names it, so it counts toward no
//! quorum while it is empty). Hints held for the dead node go to the
//! keys' new replicas once the ring no longer names it (the coordinator's
//! hint delivery retargets hints for nodes outside the ring).

use super::*;

impl Cluster {
    /// Refuses to treat `node` as gone while it answers at its address.
    async fn check_gone(&self, node: NodeId, state: &RingState) -> Result<(), ClusterError> {
        let Some(addr) = state
            .members
            .iter()
            .find(|m| m.id == node.0)
            .map(|m| m.addr.clone())
        else {
            return Ok(());
        };
        // A replacement may run at the replaced node's address.
        if addr == self.settings.addr {
            return Ok(());
        }
        if self.ask_ring(&addr).await.is_some() {
            return Err(ClusterError::Precondition(format!(
                "node {node} still answers at {addr}: a running node leaves with `kvctl --node {addr} leave` (which hands off its data); remove and replace are for nodes that are gone for good (stop it first)"
            )));
        }
        Ok(())
    }

    /// Copies each range of `moves` to the nodes that gain it from every
    /// surviving replica (`gone` excluded), so a write that reached only
    /// some of them is not missed. Fails, naming the range, if a gaining
    /// node got a range from no source.
    async fn copy_from_survivors(
        &self,
        moves: &[kv_ring::RangeMove],
        gone: NodeId,
        what: &str,
    ) -> Result<u64, ClusterError> {
        let mut plan: BTreeMap<(NodeId, NodeId), Vec<TokenRange>> = BTreeMap::new();
        for mv in moves {
            for target in mv.gained() {
                for &source in mv.from.iter().filter(|&&s| s != gone) {
                    plan.entry((source, target)).or_default().push(mv.range);
                }
            }
        }
        tracing::info!(
            copies = plan.len(),
            ranges = moves.len(),
            "{what}: copying ranges"
        );
        let mut copied = 0u64;
        let mut done: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
        for ((source, target), ranges) in plan {
            match self.copy_ranges(source, target, &ranges).await {
                Ok(keys) => {
                    copied += keys;
                    done.insert((source, target));
                }
                Err(e) => tracing::warn!(%source, %target, error = %e, "{what}: a copy failed"),
            }
        }
        for mv in moves {
            for target in mv.gained() {
                let any = mv
                    .from
                    .iter()
                    .any(|&s| s != gone && done.contains(&(s, target)));
                if !any {
                    return Err(ClusterError::Unavailable(format!(
                        "{what}: range {:?} reached node {target} from none of its surviving replicas; the ring is unchanged",
                        mv.range
                    )));
                }
            }
        }
        Ok(copied)
    }

    /// The part remove and replace share, once `after` is computed: the
    /// promise of the next epoch, every range `gone` replicated copied
    /// from the survivors to the nodes that gain it, the new ring
    /// installed and pushed, and `gone` forgotten.
    async fn take_over(
        self: &Arc<Self>,
        before_state: &RingState,
        before: &ConsistentHashRing,
        after: &ConsistentHashRing,
        gone: NodeId,
        what: &str,
    ) -> Result<ChangeReply, ClusterError> {
        let lease = self.propose(before_state, what.to_string()).await?;
        let diff =
            RingDiff::between(before, after, self.settings.n).map_err(ClusterError::internal)?;
        let moves: Vec<_> = diff
            .moves()
            .iter()
            .filter(|m| m.from.contains(&gone))
            .cloned()
            .collect();
        let copied = self.copy_from_survivors(&moves, gone, what).await?;
        let state = state_of(before_state.epoch + 1, after, |id| {
            self.addr_of(id).unwrap_or_default()
        });
        lease.confirm().await?;
        let reply = self.commit(state, copied, moves.len() as u32).await?;
        self.transport.forget(gone);
        Ok(reply)
    }

    /// Takes `gone`, a node that is down for good, out of the ring (run on
    /// any other node): its ranges are copied from their surviving
    /// replicas to the nodes that gain them, then the ring without it is
    /// installed and pushed.
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` for this node itself (it leaves instead), a
    /// node outside the ring or one that still answers; `Aborted` if
    /// another ring change holds the epoch; `Unavailable` if a range could
    /// not be copied or too few owners answer.
    pub async fn remove(self: &Arc<Self>, gone: NodeId) -> Result<ChangeReply, ClusterError> {
        let _one = self.changing.lock().await;
        self.refresh_ring().await;
        let (before_state, before) = self.current_ring()?;
        let me = self.settings.id;
        if gone == me {
            return Err(ClusterError::Precondition(format!(
                "node {me} cannot remove itself: it leaves with `kvctl leave`, which hands off its data"
            )));
        }
        if before.node_spec(gone).is_none() {
            return Err(ClusterError::Precondition(format!(
                "node {gone} owns no ranges (ring epoch {})",
                before_state.epoch
            )));
        }
        self.check_gone(gone, &before_state).await?;
        let after = before.without_node(gone).map_err(ClusterError::internal)?;
        let what = format!("removal of {gone}");
        let reply = self
            .take_over(&before_state, &before, &after, gone, &what)
            .await?;
        tracing::info!(node = %gone, epoch = reply.epoch, keys = reply.keys_streamed, "removed a node");
        Ok(reply)
    }

    /// Makes this node the replacement of `old`, a node that is down for
    /// good: it takes `old`'s tokens, after pulling every range `old`
    /// replicated from the surviving replicas (until the new ring is
    /// installed, this node is in no preference list and counts toward
    /// no quorum).
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` if this node already owns ranges (a finished
    /// replacement), `old` is not in the ring or still answers; `Aborted`
    /// if another ring change holds the epoch; `Unavailable` if a range
    /// could not be fetched or too few owners answer.
    pub async fn replace(self: &Arc<Self>, old: NodeId) -> Result<ChangeReply, ClusterError> {
        let _one = self.changing.lock().await;
        // As in a join: no hand-off pass while the ranges arrive.
        let _no_handoff = self.handoff_running.lock().await;
        let (before_state, before) = self.ring_to_enter().await?;
        let me = self.settings.id;
        if before.node_spec(old).is_none() {
            return Err(ClusterError::Precondition(format!(
                "node {old} owns no ranges (ring epoch {}): nothing to replace",
                before_state.epoch
            )));
        }
        self.check_gone(old, &before_state).await?;
        let after = before
            .with_replacement(old, self.spec())
            .map_err(ClusterError::internal)?;
        let what = format!("replacement of {old} by {me}");
        let reply = self
            .take_over(&before_state, &before, &after, old, &what)
            .await?;
        tracing::info!(%old, epoch = reply.epoch, keys = reply.keys_streamed, "replaced a node");
        Ok(reply)
    }
}
