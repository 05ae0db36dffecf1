//! What operators see: members with their state and shares, hints held,
//! and how the node protects its services.

use super::*;

impl Cluster {
    /// How the node protects its services.
    pub fn posture(&self) -> crate::security::Posture {
        self.settings.posture
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
