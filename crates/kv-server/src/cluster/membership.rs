//! Gossip: messages in and out, liveness events into the view the
//! coordinator routes by, and peers' addresses into the transport.

use super::*;

impl Cluster {
    /// Where peer `id` said its status page is (`host:port`), if it said.
    pub fn peer_page(&self, id: NodeId) -> Option<String> {
        self.peer_pages.lock().get(&id).cloned()
    }

    /// A gossip message from a peer, with the versions (and the status
    /// page) its call announced.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for bytes that are not a gossip message;
    /// `PermissionDenied` when `sender` (the node the connection's
    /// certificate names, when nodes authenticate) is not the message's.
    pub fn receive_gossip(
        self: &Arc<Self>,
        bytes: &[u8],
        sender: Option<NodeId>,
        versions: Option<crate::version::Versions>,
        page: Option<crate::version::PeerPage>,
    ) -> Result<(), ClusterError> {
        let message = kv_gossip::Message::decode(bytes)
            .map_err(|e| ClusterError::Invalid(format!("gossip message: {e}")))?;
        if let Some(sender) = sender
            && message.from != sender
        {
            return Err(ClusterError::Impersonation(format!(
                "gossip from {} over {sender}'s certificate",
                message.from
            )));
        }
        if let Some(versions) = versions {
            self.peer_versions.lock().insert(message.from, versions);
        }
        if let Some(page) = page {
            self.peer_pages.lock().insert(message.from, page.0);
        }
        let now = self.now();
        let (out, events) = {
            let mut g = self.gossip.lock();
            g.handle(message, now);
            (g.drain_outbox(), g.drain_events())
        };
        self.dispatch(out, events);
        Ok(())
    }

    pub(super) fn tick_gossip(self: &Arc<Self>) {
        let now = self.now();
        // Tell the cluster when this node's storage starts (or stops)
        // refusing writes.
        let unhealthy = self.coordinator.replica().health().is_err();
        let (out, events) = {
            let mut g = self.gossip.lock();
            if g.me().meta.unhealthy != unhealthy {
                let mut meta = g.me().meta.clone();
                meta.unhealthy = unhealthy;
                g.set_meta(meta);
                tracing::warn!(
                    unhealthy,
                    "this node's storage health changed; gossiping it"
                );
            }
            g.tick(now);
            (g.drain_outbox(), g.drain_events())
        };
        self.dispatch(out, events);
    }

    pub(super) fn dispatch(self: &Arc<Self>, out: Vec<Outgoing>, events: Vec<Event>) {
        for event in events {
            let (member, state) = match event {
                Event::Joined(m) | Event::Alive(m) => (m, Liveness::Alive),
                Event::Suspect(m) => (m, Liveness::Suspect),
                Event::Dead(m) => (m, Liveness::Dead),
                Event::Left(m) => (m, Liveness::Left),
            };
            if member.id == self.settings.id {
                continue;
            }
            if self.view.state(member.id) != Some(state) {
                tracing::info!(node = %member.id, addr = %member.addr, ?state, "membership");
            }
            if self.view.is_unhealthy(member.id) != member.meta.unhealthy {
                tracing::warn!(
                    node = %member.id,
                    unhealthy = member.meta.unhealthy,
                    "storage health changed; writes are routed accordingly"
                );
            }
            match state {
                Liveness::Alive => self.transport.set_address(member.id, member.addr.clone()),
                Liveness::Left => self.transport.forget(member.id),
                _ => {}
            }
            self.view.set(member.id, state, member.meta.unhealthy);
        }
        let timeout = self.settings.gossip.probe_timeout;
        for Outgoing { to, message } in out {
            let Ok(mut client) = self.transport.bulk(&to) else {
                continue;
            };
            let bytes = message.encode();
            tokio::spawn(async move {
                let call = client.gossip(GossipRequest { message: bytes });
                let _ = tokio::time::timeout(timeout, call).await;
            });
        }
    }

    /// Members as gossip knows them, this node included.
    pub fn members(&self) -> Vec<kv_gossip::Member> {
        self.gossip.lock().members()
    }
}
