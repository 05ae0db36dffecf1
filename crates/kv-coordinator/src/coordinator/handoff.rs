//! Hinted hand-off: hints delivered to their owners when alive,
//! retargeted when an owner left the key's replicas, dropped past the grace.

use super::decide::{AfterFailedHint, HintAction, after_failed_hint, hint_action, hint_expired};
use super::*;

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// Delivers the hints this node holds for replicas that are alive
    /// again; a hint is deleted only after its owner acknowledges it.
    /// Hints for a node that left the ring go to the key's current
    /// replicas instead. Hints older than the tombstone grace period are
    /// dropped unsent (counted in [`HintStore::expired`]): the key's
    /// tombstone may have been collected since, and delivering would bring
    /// the deleted value back. Returns how many were delivered.
    ///
    /// [`HintStore::expired`]: crate::HintStore::expired
    ///
    /// # Errors
    ///
    /// Storage errors from the hint store; unreachable owners are not errors
    /// (their hints stay).
    pub async fn deliver_hints(&self, batch: usize) -> Result<usize> {
        self.deliver_hints_at(batch, kv_core::unix_secs()).await
    }

    /// [`deliver_hints`](Self::deliver_hints) at `now_secs` (seconds since
    /// the Unix epoch), for tests that move time.
    ///
    /// # Errors
    ///
    /// As [`deliver_hints`](Self::deliver_hints).
    pub async fn deliver_hints_at(&self, batch: usize, now_secs: u64) -> Result<usize> {
        let cutoff = now_secs.saturating_sub(self.config.tombstone_grace.as_secs());
        {
            let r = self.replica.clone();
            off_runtime(move || r.hints().expire_before(cutoff)).await?;
        }
        let mut delivered = 0;
        let owners = {
            let r = self.replica.clone();
            off_runtime(move || r.hints().owners()).await?
        };
        let in_ring = self.ring.nodes();
        for owner in owners {
            match hint_action(&in_ring, owner, self.membership.is_alive(owner)) {
                HintAction::Retarget => {
                    delivered += self.retarget_hints(owner, batch, cutoff).await?;
                    continue;
                }
                HintAction::Keep => continue,
                HintAction::Deliver => {}
            }
            let pending = {
                let r = self.replica.clone();
                off_runtime(move || r.hints().pending(owner, batch)).await?
            };
            for hint in pending {
                if hint_expired(hint.stored_at, cutoff) {
                    self.hint_expired(owner, hint).await?;
                    continue;
                }
                let sent = tokio::time::timeout(
                    self.config.request_timeout,
                    self.transport
                        .replicate(owner, hint.key.clone(), hint.state.clone(), None),
                )
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if after_failed_hint(&e) == AfterFailedHint::SkipHint => {
                        tracing::warn!(
                            owner = %owner,
                            error = %e,
                            "the owner rejected a hint; it stays, and the owner's other hints go on"
                        );
                        continue;
                    }
                    _ => break,
                }
                delivered += usize::from(self.hint_delivered(owner, hint.key, hint.state).await?);
            }
        }
        Ok(delivered)
    }

    /// Drops an expired hint unsent.
    pub(super) async fn hint_expired(&self, owner: NodeId, hint: crate::Hint) -> Result<()> {
        let r = self.replica.clone();
        off_runtime(move || r.hints().expire_one(owner, &hint.key, &hint.state)).await?;
        Ok(())
    }

    /// Deletes a delivered hint (unless it changed meanwhile) and counts it.
    pub(super) async fn hint_delivered(
        &self,
        owner: NodeId,
        key: Vec<u8>,
        state: Vec<u8>,
    ) -> Result<bool> {
        let r = self.replica.clone();
        let deleted = off_runtime(move || r.hints().delivered_one(owner, &key, &state)).await?;
        if deleted {
            Metrics::add(&self.metrics.hints_delivered, 1);
        }
        Ok(deleted)
    }

    /// Hints held for `owner`, a node no longer in the ring (it left):
    /// each goes to the key's current replicas instead (merged here when
    /// this node is one), and is deleted once all of them took it. Hints
    /// stored before `cutoff` are dropped unsent.
    pub(super) async fn retarget_hints(
        &self,
        owner: NodeId,
        batch: usize,
        cutoff: u64,
    ) -> Result<usize> {
        let pending = {
            let r = self.replica.clone();
            off_runtime(move || r.hints().pending(owner, batch)).await?
        };
        let me = self.replica.id();
        let mut delivered = 0;
        for hint in pending {
            if hint_expired(hint.stored_at, cutoff) {
                self.hint_expired(owner, hint).await?;
                continue;
            }
            let (key, state) = (hint.key, hint.state);
            let mut all = true;
            for target in self.ring.preference_list(&key, self.config.n)? {
                let sent = if target == me {
                    let (r, k, s) = (self.replica.clone(), key.clone(), state.clone());
                    off_runtime(move || r.merge_bytes(&k, &s)).await.is_ok()
                } else {
                    let call = self
                        .transport
                        .replicate(target, key.clone(), state.clone(), None);
                    matches!(
                        tokio::time::timeout(self.config.request_timeout, call).await,
                        Ok(Ok(()))
                    )
                };
                all &= sent;
            }
            if all {
                delivered += usize::from(self.hint_delivered(owner, key, state).await?);
            }
        }
        Ok(delivered)
    }
}
