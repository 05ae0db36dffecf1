//! The versioned ring: installing a newer one, answering and asking
//! peers for theirs, pushing a changed one to every node.

use super::*;

impl Cluster {
    /// Where `node` is reached, by the ring or by gossip.
    pub(super) fn addr_of(&self, node: NodeId) -> Option<String> {
        if node == self.settings.id {
            return Some(self.settings.addr.clone());
        }
        self.transport.address(node)
    }

    /// Every other node this one knows: ring members, live gossip members
    /// and the seeds.
    pub(super) fn peers(&self) -> Vec<String> {
        let mut addrs: BTreeSet<String> = self
            .state
            .lock()
            .members
            .iter()
            .filter(|m| m.id != self.settings.id.0)
            .map(|m| m.addr.clone())
            .collect();
        addrs.extend(self.settings.seeds.iter().cloned());
        addrs.remove(&self.settings.addr);
        for m in self.members() {
            if m.id != self.settings.id && m.status == Liveness::Alive {
                addrs.insert(m.addr);
            }
        }
        addrs.into_iter().collect()
    }

    /// Installs `state` if it is newer than the ring held: persists it,
    /// switches placement to it, rebuilds the anti-entropy trees, and
    /// schedules a hand-off of the keys this node no longer replicates.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a state that is not a valid ring; `Internal` if it
    /// cannot be persisted.
    pub async fn install(&self, state: RingState) -> Result<bool, ClusterError> {
        let _one = self.installing.lock().await;
        if state.epoch <= self.epoch() {
            return Ok(false);
        }
        let ring = ring_of(&state).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let dir = self.settings.data_dir.clone();
        let persisted = state.clone();
        tokio::task::spawn_blocking(move || ring_state::store(&dir, &persisted))
            .await
            .map_err(ClusterError::internal)?
            .map_err(ClusterError::internal)?;
        for m in &state.members {
            if m.id != self.settings.id.0 {
                self.transport.set_address(NodeId(m.id), m.addr.clone());
            }
        }
        tracing::info!(
            epoch = state.epoch,
            members = state.members.len(),
            "ring installed"
        );
        let me = self.settings.id;
        let was_member = self.in_ring(me);
        self.ring.set(ring);
        *self.state.lock() = state;
        if was_member && let Some(warning) = self.outside_ring() {
            tracing::warn!(node = me.0, "{warning}");
        }
        let replica = self.coordinator.replica().clone();
        off_runtime(move || replica.rebuild_trees()).await?;
        self.handoff_pending.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Whether `node` owns tokens in the ring this node holds.
    pub fn in_ring(&self, node: NodeId) -> bool {
        self.state.lock().members.iter().any(|m| m.id == node.0)
    }

    /// Answers a peer's ring query.
    pub fn answer_ring_query(&self, query: RingQuery) -> RingState {
        let state = self.state.lock();
        if state.epoch > query.known_epoch {
            state.clone()
        } else {
            RingState {
                epoch: state.epoch,
                ..RingState::default()
            }
        }
    }

    pub(super) async fn ask_ring(&self, addr: &str) -> Option<RingState> {
        self.ask_ring_above(addr, self.epoch()).await
    }

    /// The peer's ring, whole if its epoch is above `known_epoch` (only
    /// the epoch otherwise).
    async fn ask_ring_above(&self, addr: &str, known_epoch: u64) -> Option<RingState> {
        let mut client = self.transport.bulk(addr).ok()?;
        let query = RingQuery { known_epoch };
        let reply = tokio::time::timeout(Duration::from_secs(2), client.get_ring(query))
            .await
            .ok()?
            .ok()?;
        Some(reply.into_inner())
    }

    /// Asks one peer (round robin) whether it holds a newer ring.
    pub(super) async fn sync_ring_once(&self) {
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        let turn = self.sync_turn.fetch_add(1, Ordering::Relaxed);
        let addr = &peers[turn % peers.len()];
        if let Some(state) = self.ask_ring(addr).await
            && !state.members.is_empty()
            && let Err(e) = self.install(state).await
        {
            tracing::warn!(peer = %addr, error = %e, "ring from peer refused");
        }
    }

    /// Asks every known peer for its ring and installs the newest.
    pub(super) async fn refresh_ring(&self) {
        let asks = self.peers().into_iter().map(|addr| async move {
            let state = self.ask_ring(&addr).await;
            state.filter(|s| !s.members.is_empty())
        });
        let newest = futures_max(asks).await;
        if let Some(state) = newest {
            let _ = self.install(state).await;
        }
    }

    /// Pushes `state` to every other node in `targets`; returns the nodes
    /// that hold a newer or equal, different ring (a concurrent change).
    pub(super) async fn push_ring(&self, state: &RingState, targets: Vec<String>) -> Vec<String> {
        let calls = targets.into_iter().map(|addr| {
            let state = state.clone();
            async move {
                let mut client = self.transport.bulk(&addr).ok()?;
                let reply: InstallReply = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.install_ring(state.clone()),
                )
                .await
                .ok()?
                .ok()?
                .into_inner();
                if reply.accepted || reply.epoch < state.epoch {
                    return None;
                }
                if reply.epoch == state.epoch {
                    // The peer holds this epoch already: ring sync may
                    // have brought it this very ring from here. Only a
                    // different ring at the epoch is a conflict.
                    let theirs = self
                        .ask_ring_above(&addr, state.epoch.saturating_sub(1))
                        .await;
                    return theirs.is_some_and(|t| t != state).then_some(addr);
                }
                Some(addr)
            }
        });
        let mut conflicts = Vec::new();
        for result in join_all(calls).await {
            conflicts.extend(result);
        }
        conflicts
    }

    pub(super) fn spec(&self) -> NodeSpec {
        NodeSpec {
            id: self.settings.id,
            weight: self.settings.weight,
            zone: self.settings.zone.clone(),
        }
    }

    pub(super) fn current_ring(&self) -> Result<(RingState, ConsistentHashRing), ClusterError> {
        let state = self.ring_state();
        if state.members.is_empty() {
            return Ok((
                state.clone(),
                ConsistentHashRing::empty(
                    state.vnodes.max(self.settings.vnodes),
                    TokenStrategy::Balanced,
                )
                .map_err(ClusterError::internal)?,
            ));
        }
        let ring = ring_of(&state).map_err(ClusterError::internal)?;
        Ok((state, ring))
    }
}
