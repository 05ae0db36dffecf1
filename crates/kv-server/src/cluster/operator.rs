//! What operators see: members with their state and shares, hints held,
//! and how the node protects its services.

use super::*;

impl Cluster {
    /// How the node protects its services.
    pub fn posture(&self) -> crate::security::Posture {
        self.settings.posture
    }

    /// A warning in plain words when this node owns no range of the ring
    /// it holds (and the ring has members): it left, was removed or
    /// replaced by another node and was started again on its old
    /// directory, or its join is not done yet. It then serves no key of
    /// its own and only forwards requests.
    pub fn outside_ring(&self) -> Option<String> {
        let state = self.state.lock();
        let me = self.settings.id.0;
        if state.members.is_empty() || state.members.iter().any(|m| m.id == me) {
            return None;
        }
        Some(outside_ring_warning(me, state.epoch))
    }

    /// `kvctl status`.
    ///
    /// # Errors
    ///
    /// `Internal` if the ring state does not give a ring.
    pub fn status(&self) -> Result<StatusReply, ClusterError> {
        let (state, ring) = self.current_ring()?;
        let n = self.settings.n;
        let owned = if ring.is_empty() {
            BTreeMap::new()
        } else {
            ring.replicated_ownership(n)
                .map_err(ClusterError::internal)?
        };
        let mut members: BTreeMap<u64, MemberStatus> = BTreeMap::new();
        for m in &state.members {
            members.insert(
                m.id,
                MemberStatus {
                    id: m.id,
                    addr: m.addr.clone(),
                    state: "unknown".into(),
                    zone: m.zone.clone(),
                    owned: owned.get(&NodeId(m.id)).copied().unwrap_or(0.0),
                    in_ring: true,
                    unhealthy: false,
                    ..MemberStatus::default()
                },
            );
        }
        for g in self.members() {
            let entry = members.entry(g.id.0).or_insert_with(|| MemberStatus {
                id: g.id.0,
                addr: g.addr.clone(),
                zone: g.meta.zone.clone(),
                ..MemberStatus::default()
            });
            entry.state = match g.status {
                Liveness::Alive => "alive",
                Liveness::Suspect => "suspect",
                Liveness::Dead => "dead",
                Liveness::Left => "left",
            }
            .into();
            if entry.zone.is_none() {
                entry.zone = g.meta.zone.clone();
            }
            let versions = if g.id == self.settings.id {
                Some(crate::version::Versions::OURS)
            } else {
                self.peer_versions.lock().get(&g.id).copied()
            };
            if let Some(v) = versions {
                entry.wire_version = v.wire;
                entry.format_version = v.format;
            }
            entry.unhealthy = if g.id == self.settings.id {
                self.coordinator.replica().health().is_err()
            } else {
                g.meta.unhealthy
            };
        }
        Ok(StatusReply {
            node: self.settings.id.0,
            ring_epoch: state.epoch,
            n: n as u32,
            members: members.into_values().collect(),
            ring: Some(state),
            tls: self.settings.posture.tls,
            authenticates: self.settings.posture.authenticates,
            insecure: self.settings.posture.insecure,
        })
    }

    /// `kvctl hints`.
    ///
    /// # Errors
    ///
    /// Storage errors from the hint store, as `Internal`.
    pub async fn hints(&self) -> Result<HintsReply, ClusterError> {
        let replica = self.coordinator.replica().clone();
        let counts = off_runtime(move || replica.hints().counts()).await?;
        let hints = self.coordinator.replica().hints();
        Ok(HintsReply {
            owners: counts
                .into_iter()
                .map(|(owner, pending)| HintCount {
                    owner: owner.0,
                    pending,
                })
                .collect(),
            stored: hints.stored(),
            delivered: hints.delivered(),
        })
    }
}

/// What a node outside the ring tells its operator (logs, status page;
/// `kvctl status` says the same from the status it is sent).
pub fn outside_ring_warning(node: u64, epoch: u64) -> String {
    format!(
        "node {node} owns no range in ring epoch {epoch}: it holds no keys of its own and \
         only forwards requests. If it is joining, this ends when the join is done. If it \
         left, or was removed (kvctl remove) or replaced (kvd --replace) and then started \
         again on its old data directory, it will not rejoin by itself: stop it, and to \
         bring the host back start kvd on an empty data directory with --join"
    )
}
