//! Membership and ownership: gossip over gRPC, the ring every node places
//! keys with, and the explicit changes of that ring (join and leave) with
//! the range streaming they need.
//!
//! Liveness comes from gossip (`kv-gossip`, driven here by a timer and the
//! `Gossip` RPC) and changes no ownership. Ownership is the ring: an epoch
//! and every owner's tokens, persisted in the data directory, spread by
//! pushing a changed ring to every node and by each node periodically
//! asking a peer whether it knows a newer epoch. A higher epoch wins.
//!
//! A join: the joining node computes the ring with itself added, pulls the
//! ranges it gains from *every* current replica of each (so a write that
//! reached only W of them is not missed), then installs the new ring and
//! pushes it. A leave: the leaving node pushes the ranges it loses to the
//! nodes that gain them, installs and pushes the ring without itself, then
//! hands off whatever arrived meanwhile and stops. In both, a node that
//! installs a ring in which it no longer replicates some keys hands them
//! to their replicas and deletes them only after all have acknowledged, so
//! writes that reached an old owner late are not lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use kv_core::{MembershipView, NodeId, Partitioner, PartitionerError, Token, TokenRange};
use kv_gossip::{Event, Gossip, Meta, Outgoing, Status as Liveness};
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff, TokenStrategy};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;

use crate::proto::{
    ChangeReply, FetchRequest, GossipRequest, HintCount, HintsReply, InstallReply, KeyState,
    MemberStatus, Range, RingQuery, RingState, StatusReply, TransferRequest,
};
use crate::ring_state::{self, ring_of, state_of};
use crate::service::{NodeCoordinator, blocking};
use crate::transport::GrpcTransport;

/// Keys per page of range streaming and hand-off.
const PAGE_KEYS: u32 = 512;
/// Bytes of states per page, about.
const PAGE_BYTES: usize = 4 << 20;

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

    fn set(&self, ring: ConsistentHashRing) {
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

/// Liveness as gossip reports it. A node not heard of yet counts as alive
/// (a request to it fails fast if it is not, and the write falls back to a
/// hint); suspected nodes count as alive until declared dead, so one missed
/// probe does not divert writes.
///
/// A node that says its storage refuses writes (unhealthy) counts as not
/// alive for writes: coordinators send its replica writes to the next
/// node with a hint, and requests it would coordinate go to the next
/// replica.
#[derive(Debug, Default)]
pub struct GossipView {
    /// Per node: its liveness, and whether its storage refuses writes.
    states: RwLock<HashMap<NodeId, (Liveness, bool)>>,
}

impl GossipView {
    /// What gossip last said of `node`.
    pub fn state(&self, node: NodeId) -> Option<Liveness> {
        self.states.read().get(&node).map(|&(state, _)| state)
    }

    /// Whether `node` says its storage refuses writes.
    pub fn is_unhealthy(&self, node: NodeId) -> bool {
        self.states.read().get(&node).is_some_and(|&(_, sick)| sick)
    }

    fn set(&self, node: NodeId, state: Liveness, unhealthy: bool) {
        self.states.write().insert(node, (state, unhealthy));
    }
}

impl MembershipView for GossipView {
    fn is_alive(&self, node: NodeId) -> bool {
        match self.states.read().get(&node) {
            Some(&(state, unhealthy)) => {
                !matches!(state, Liveness::Dead | Liveness::Left) && !unhealthy
            }
            None => true,
        }
    }
}

/// How this node takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node.
    pub id: NodeId,
    /// The gRPC address other nodes reach this one at.
    pub addr: String,
    /// Failure domain.
    pub zone: Option<String>,
    /// Relative capacity (virtual-node weight).
    pub weight: u32,
    /// Virtual nodes per unit of weight (for rings created here).
    pub vnodes: u32,
    /// Replicas per key.
    pub n: usize,
    /// Gossip protocol settings.
    pub gossip: kv_gossip::Config,
    /// Addresses to join gossip through.
    pub seeds: Vec<String>,
    /// How often gossip timers advance.
    pub tick: Duration,
    /// How often a peer is asked for a newer ring.
    pub ring_sync: Duration,
    /// Where the ring file lives.
    pub data_dir: PathBuf,
    /// Seeds gossip's random choices (`None`: from the clock).
    pub seed: Option<u64>,
    /// How the node protects its services (shown in status and metrics).
    pub posture: crate::security::Posture,
}

/// What a hand-off pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Keys acknowledged by all their replicas and deleted here.
    pub moved: u64,
    /// Keys this node does not replicate that are still here (a replica
    /// did not acknowledge, or the key changed while being handed off).
    pub remaining: u64,
}

/// This node's part in the cluster: its gossip state machine, the ring,
/// and the procedures that change the ring.
pub struct Cluster {
    settings: ClusterSettings,
    ring: Arc<LiveRing>,
    state: Mutex<RingState>,
    installing: tokio::sync::Mutex<()>,
    changing: tokio::sync::Mutex<()>,
    gossip: Mutex<Gossip>,
    origin: Instant,
    view: Arc<GossipView>,
    transport: Arc<GrpcTransport>,
    coordinator: Arc<NodeCoordinator>,
    handoff_pending: AtomicBool,
    handoff_running: tokio::sync::Mutex<()>,
    handed_off: AtomicU64,
    sync_turn: AtomicUsize,
    left: watch::Sender<bool>,
}

fn to_range(r: &TokenRange) -> Range {
    Range {
        start: r.start.0,
        end: r.end.0,
    }
}

fn from_range(r: &Range) -> TokenRange {
    TokenRange::new(Token(r.start), Token(r.end))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Cluster {
    /// The cluster part of a node whose coordinator places keys with
    /// `ring` and judges liveness with `view`; `state` is the ring it
    /// starts with (loaded from disk or built from the initial members).
    ///
    /// # Errors
    ///
    /// A ring state that does not give a valid ring.
    pub fn new(
        settings: ClusterSettings,
        state: RingState,
        ring: Arc<LiveRing>,
        view: Arc<GossipView>,
        transport: Arc<GrpcTransport>,
        coordinator: Arc<NodeCoordinator>,
    ) -> Result<Self, kv_gossip::Error> {
        let meta = Meta {
            zone: settings.zone.clone(),
            weight: settings.weight,
            unhealthy: false,
        };
        let seed = settings
            .seed
            .unwrap_or_else(|| settings.id.0 ^ wall_nanos());
        let mut gossip = Gossip::new(
            settings.gossip.clone(),
            settings.id,
            settings.addr.clone(),
            meta,
            seed,
        )?;
        let mut seeds = settings.seeds.clone();
        for m in &state.members {
            transport.set_address(NodeId(m.id), m.addr.clone());
            seeds.push(m.addr.clone());
        }
        seeds.sort();
        seeds.dedup();
        seeds.retain(|s| *s != settings.addr);
        gossip.join(seeds, Duration::ZERO);
        let (left, _) = watch::channel(false);
        let cluster = Cluster {
            settings,
            ring,
            state: Mutex::new(state),
            installing: tokio::sync::Mutex::new(()),
            changing: tokio::sync::Mutex::new(()),
            gossip: Mutex::new(gossip),
            origin: Instant::now(),
            view,
            transport,
            coordinator,
            handoff_pending: AtomicBool::new(true),
            handoff_running: tokio::sync::Mutex::new(()),
            handed_off: AtomicU64::new(0),
            sync_turn: AtomicUsize::new(0),
            left,
        };
        Ok(cluster)
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.settings.id
    }

    /// The ring as it is now.
    pub fn ring_state(&self) -> RingState {
        self.state.lock().clone()
    }

    /// The epoch of the ring this node holds.
    pub fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// Liveness as gossip reports it.
    pub fn view(&self) -> &Arc<GossipView> {
        &self.view
    }

    /// Resolves once this node has left the ring and handed off its data.
    pub fn left(&self) -> watch::Receiver<bool> {
        self.left.subscribe()
    }

    /// Keys handed off to their replicas since start.
    pub fn handed_off(&self) -> u64 {
        self.handed_off.load(Ordering::Relaxed)
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    // ---- gossip ----

    /// A gossip message from a peer.
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
    ) -> Result<(), Status> {
        let message = kv_gossip::Message::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("gossip message: {e}")))?;
        if let Some(sender) = sender
            && message.from != sender
        {
            return Err(Status::permission_denied(format!(
                "gossip from {} over {sender}'s certificate",
                message.from
            )));
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

    fn tick_gossip(self: &Arc<Self>) {
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

    fn dispatch(self: &Arc<Self>, out: Vec<Outgoing>, events: Vec<Event>) {
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

    /// Starts the timers: gossip ticks, ring synchronisation, hand-off.
    /// They end when the node drops its cluster.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        let tick = self.settings.tick;
        let gossip = tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(this) = weak.upgrade() else { return };
                this.tick_gossip();
            }
        });
        let weak = Arc::downgrade(self);
        let every = self.settings.ring_sync;
        let upkeep = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                this.sync_ring_once().await;
                if this.handoff_pending.load(Ordering::Relaxed) {
                    let _ = this.handoff_pass().await;
                }
            }
        });
        vec![gossip, upkeep]
    }

    // ---- the ring ----

    /// Where `node` is reached, by the ring or by gossip.
    fn addr_of(&self, node: NodeId) -> Option<String> {
        if node == self.settings.id {
            return Some(self.settings.addr.clone());
        }
        self.transport.address(node)
    }

    /// Every other node this one knows: ring members, live gossip members
    /// and the seeds.
    fn peers(&self) -> Vec<String> {
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
    pub async fn install(&self, state: RingState) -> Result<bool, Status> {
        let _one = self.installing.lock().await;
        if state.epoch <= self.epoch() {
            return Ok(false);
        }
        let ring = ring_of(&state).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let dir = self.settings.data_dir.clone();
        let persisted = state.clone();
        tokio::task::spawn_blocking(move || ring_state::store(&dir, &persisted))
            .await
            .map_err(internal)?
            .map_err(internal)?;
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
        self.ring.set(ring);
        *self.state.lock() = state;
        let replica = self.coordinator.replica().clone();
        blocking(move || replica.rebuild_trees()).await?;
        self.handoff_pending.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// How the node protects its services.
    pub fn posture(&self) -> crate::security::Posture {
        self.settings.posture
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

    async fn ask_ring(&self, addr: &str) -> Option<RingState> {
        let mut client = self.transport.bulk(addr).ok()?;
        let query = RingQuery {
            known_epoch: self.epoch(),
        };
        let reply = tokio::time::timeout(Duration::from_secs(2), client.get_ring(query))
            .await
            .ok()?
            .ok()?;
        Some(reply.into_inner())
    }

    /// Asks one peer (round robin) whether it holds a newer ring.
    async fn sync_ring_once(&self) {
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
    async fn refresh_ring(&self) {
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
    async fn push_ring(&self, state: &RingState, targets: Vec<String>) -> Vec<String> {
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
                (!reply.accepted && reply.epoch >= state.epoch).then_some(addr)
            }
        });
        let mut conflicts = Vec::new();
        for result in join_all(calls).await {
            conflicts.extend(result);
        }
        conflicts
    }

    fn spec(&self) -> NodeSpec {
        NodeSpec {
            id: self.settings.id,
            weight: self.settings.weight,
            zone: self.settings.zone.clone(),
        }
    }

    fn current_ring(&self) -> Result<(RingState, ConsistentHashRing), Status> {
        let state = self.ring_state();
        if state.members.is_empty() {
            return Ok((
                state.clone(),
                ConsistentHashRing::empty(
                    state.vnodes.max(self.settings.vnodes),
                    TokenStrategy::Balanced,
                )
                .map_err(internal)?,
            ));
        }
        let ring = ring_of(&state).map_err(internal)?;
        Ok((state, ring))
    }

    /// Makes this node an owner: pulls the ranges it will replicate from
    /// every current replica of each, then installs and pushes the ring
    /// with it added. Nothing changes if a range has no reachable replica.
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` if this node already owns ranges; `Aborted` if
    /// another ring change won meanwhile; `Unavailable` if a range could not be
    /// fetched from its replicas.
    pub async fn join(self: &Arc<Self>) -> Result<ChangeReply, Status> {
        let _one = self.changing.lock().await;
        // No hand-off pass while the ranges arrive: until the new ring is
        // installed this node owns nothing, and a pass would hand the
        // pulled keys straight back to their old replicas and delete them.
        let _no_handoff = self.handoff_running.lock().await;
        self.refresh_ring().await;
        let (before_state, before) = self.current_ring()?;
        let me = self.settings.id;
        if before.node_spec(me).is_some() {
            return Err(Status::failed_precondition(format!(
                "node {me} already owns ranges (ring epoch {})",
                before_state.epoch
            )));
        }
        if before_state.members.is_empty() {
            return Err(Status::unavailable(
                "no ring known yet: the seeds have not answered",
            ));
        }
        let mut after = before.clone();
        after.join(self.spec()).map_err(internal)?;
        let mut streamed = 0u64;
        let ranges;
        {
            let diff = RingDiff::between(&before, &after, self.settings.n).map_err(internal)?;
            let gained: Vec<_> = diff.moves().iter().filter(|m| m.to.contains(&me)).collect();
            ranges = gained.len() as u32;
            let mut by_source: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
            for mv in &gained {
                for &source in &mv.from {
                    by_source.entry(source).or_default().push(mv.range);
                }
            }
            tracing::info!(ranges, sources = by_source.len(), "join: streaming ranges");
            let mut answered = BTreeSet::new();
            for (source, ranges) in by_source {
                match self.pull(source, &ranges).await {
                    Ok(keys) => {
                        streamed += keys;
                        answered.insert(source);
                    }
                    Err(e) => tracing::warn!(%source, error = %e, "join: source failed"),
                }
            }
            if let Some(mv) = gained
                .iter()
                .find(|mv| !mv.from.iter().any(|s| answered.contains(s)))
            {
                return Err(Status::unavailable(format!(
                    "join: no replica of range {:?} answered; the ring is unchanged",
                    mv.range
                )));
            }
        }
        let state = state_of(before_state.epoch + 1, &after, |id| {
            self.addr_of(id).unwrap_or_default()
        });
        self.commit(state, streamed, ranges).await
    }

    /// Installs `state` here and pushes it to every peer.
    async fn commit(
        &self,
        state: RingState,
        streamed: u64,
        ranges: u32,
    ) -> Result<ChangeReply, Status> {
        let targets: Vec<String> = {
            let mut t: BTreeSet<String> = self.peers().into_iter().collect();
            t.extend(state.members.iter().map(|m| m.addr.clone()));
            t.remove(&self.settings.addr);
            t.into_iter().collect()
        };
        if !self.install(state.clone()).await? {
            return Err(Status::aborted(
                "a newer ring arrived during the change; retry",
            ));
        }
        let conflicts = self.push_ring(&state, targets).await;
        if !conflicts.is_empty() {
            return Err(Status::aborted(format!(
                "a concurrent ring change at {}; retry",
                conflicts.join(", ")
            )));
        }
        Ok(ChangeReply {
            epoch: state.epoch,
            keys_streamed: streamed,
            ranges,
        })
    }

    /// Pulls every key of `ranges` from `source` into this replica.
    async fn pull(&self, source: NodeId, ranges: &[TokenRange]) -> Result<u64, Status> {
        let mut client = self.transport.bulk_node(source)?;
        let ranges: Vec<Range> = ranges.iter().map(to_range).collect();
        let mut after = None;
        let mut keys = 0u64;
        loop {
            let page = client
                .fetch_range(FetchRequest {
                    ranges: ranges.clone(),
                    after: after.take(),
                    limit: PAGE_KEYS,
                })
                .await?
                .into_inner();
            keys += page.states.len() as u64;
            let replica = self.coordinator.replica().clone();
            blocking(move || {
                for s in page.states {
                    replica.merge_bytes(&s.key, &s.state)?;
                }
                Ok(())
            })
            .await?;
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Answers a page of range streaming.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a request without ranges; storage errors as
    /// `Internal`.
    pub async fn fetch_page(
        &self,
        request: FetchRequest,
    ) -> Result<(Vec<KeyState>, Option<Vec<u8>>), Status> {
        if request.ranges.is_empty() {
            return Err(Status::invalid_argument("fetch: no range given"));
        }
        let ranges: Vec<TokenRange> = request.ranges.iter().map(from_range).collect();
        let replica = self.coordinator.replica().clone();
        let limit = (request.limit as usize).clamp(1, 10_000);
        let (page, next) = blocking(move || {
            replica.range_page(&ranges, request.after.as_deref(), limit, PAGE_BYTES)
        })
        .await?;
        Ok((
            page.into_iter()
                .map(|(key, state)| KeyState { key, state })
                .collect(),
            next,
        ))
    }

    /// Merges states handed to this node.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a state that does not decode; storage errors as
    /// `Internal`.
    pub async fn accept_transfer(&self, request: TransferRequest) -> Result<(), Status> {
        let replica = self.coordinator.replica().clone();
        blocking(move || {
            for s in request.states {
                replica.merge_bytes(&s.key, &s.state)?;
            }
            Ok(())
        })
        .await
    }

    /// Sends `states` to `target`.
    async fn transfer(&self, target: NodeId, states: Vec<KeyState>) -> Result<(), Status> {
        let mut client = self.transport.bulk_node(target)?;
        client.transfer(TransferRequest { states }).await?;
        Ok(())
    }

    /// Takes this node out of the ring: pushes the ranges it replicates to
    /// the nodes that gain them, installs and pushes the ring without it,
    /// hands off what arrived meanwhile, announces the departure, and
    /// signals [`left`](Self::left). Nothing changes if a gaining node
    /// cannot take its ranges.
    ///
    /// # Errors
    ///
    /// `FailedPrecondition` for the last node or one that owns nothing;
    /// `Aborted` if another ring change won meanwhile; `Unavailable` if a range
    /// could not be handed to its new replicas.
    pub async fn leave(self: &Arc<Self>) -> Result<ChangeReply, Status> {
        let _one = self.changing.lock().await;
        self.refresh_ring().await;
        let (before_state, before) = self.current_ring()?;
        let me = self.settings.id;
        if before.node_spec(me).is_none() {
            return Err(Status::failed_precondition(format!(
                "node {me} owns no ranges (ring epoch {})",
                before_state.epoch
            )));
        }
        if before.node_count() < 2 {
            return Err(Status::failed_precondition(
                "the last node of the ring cannot leave: its data would have nowhere to go",
            ));
        }
        let after = before.without_node(me).map_err(internal)?;
        let diff = RingDiff::between(&before, &after, self.settings.n).map_err(internal)?;
        let mut by_target: BTreeMap<NodeId, Vec<TokenRange>> = BTreeMap::new();
        let mut ranges = 0u32;
        for mv in diff.moves().iter().filter(|m| m.from.contains(&me)) {
            ranges += 1;
            for target in mv.gained() {
                by_target.entry(target).or_default().push(mv.range);
            }
        }
        tracing::info!(ranges, targets = by_target.len(), "leave: streaming ranges");
        let mut streamed = 0u64;
        for (target, ranges) in by_target {
            streamed += self.push_ranges(target, &ranges).await.map_err(|e| {
                Status::unavailable(format!(
                    "leave: node {target} did not take its ranges ({}); the ring is unchanged",
                    e.message()
                ))
            })?;
        }
        let state = state_of(before_state.epoch + 1, &after, |id| {
            self.addr_of(id).unwrap_or_default()
        });
        let reply = self.commit(state, streamed, ranges).await?;
        // Whatever reached this node before every coordinator switched.
        let mut report = self.handoff_pass().await?;
        for _ in 0..20 {
            if report.remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            report = self.handoff_pass().await?;
        }
        if report.remaining > 0 {
            return Err(Status::unavailable(format!(
                "left the ring (epoch {}), but {} keys could not be handed off yet; \
                 the node keeps running and retrying",
                reply.epoch, report.remaining
            )));
        }
        let now = self.now();
        let (out, events) = {
            let mut g = self.gossip.lock();
            g.leave(now);
            (g.drain_outbox(), g.drain_events())
        };
        self.dispatch(out, events);
        self.left.send_replace(true);
        Ok(reply)
    }

    /// Sends every local key of `ranges` to `target`.
    async fn push_ranges(&self, target: NodeId, ranges: &[TokenRange]) -> Result<u64, Status> {
        let mut after: Option<Vec<u8>> = None;
        let mut keys = 0u64;
        loop {
            let replica = self.coordinator.replica().clone();
            let ranges = ranges.to_vec();
            let from = after.take();
            let (page, next) = blocking(move || {
                replica.range_page(&ranges, from.as_deref(), PAGE_KEYS as usize, PAGE_BYTES)
            })
            .await?;
            keys += page.len() as u64;
            let states = page
                .into_iter()
                .map(|(key, state)| KeyState { key, state })
                .collect();
            self.transfer(target, states).await?;
            match next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Hands the keys this node holds but does not replicate (after a ring
    /// change) to their replicas; each is deleted here once every replica
    /// acknowledged it, and only if it did not change meanwhile.
    ///
    /// # Errors
    ///
    /// Storage errors as `Internal`; keys whose new replicas cannot be reached
    /// stay here for the next pass.
    pub async fn handoff_pass(&self) -> Result<Handoff, Status> {
        let _one = self.handoff_running.lock().await;
        self.handoff_pending.store(false, Ordering::Relaxed);
        let full = [TokenRange::full(Token(0))];
        let mut report = Handoff::default();
        let mut after: Option<Vec<u8>> = None;
        let n = self.settings.n;
        loop {
            let replica = self.coordinator.replica().clone();
            let from = after.take();
            let (page, next) = blocking(move || {
                let (page, next) =
                    replica.range_page(&full, from.as_deref(), PAGE_KEYS as usize, PAGE_BYTES)?;
                Ok((
                    page.into_iter()
                        .filter(|(k, _)| !replica.replicates(k))
                        .collect::<Vec<_>>(),
                    next,
                ))
            })
            .await?;
            if !page.is_empty() {
                let page_len = page.len();
                let mut batches: BTreeMap<NodeId, Vec<KeyState>> = BTreeMap::new();
                let mut targets_of = Vec::with_capacity(page.len());
                for (key, state) in &page {
                    let targets = self.ring.preference_list(key, n).unwrap_or_default();
                    for &t in &targets {
                        batches.entry(t).or_default().push(KeyState {
                            key: key.clone(),
                            state: state.clone(),
                        });
                    }
                    targets_of.push(targets);
                }
                let sends = batches.into_iter().map(|(target, states)| async move {
                    (target, self.transfer(target, states).await)
                });
                let mut acked = BTreeSet::new();
                for (target, result) in join_all(sends).await {
                    match result {
                        Ok(()) => {
                            acked.insert(target);
                        }
                        Err(e) => tracing::debug!(%target, error = %e, "hand-off failed"),
                    }
                }
                let done: Vec<(Vec<u8>, Vec<u8>)> = page
                    .into_iter()
                    .zip(targets_of)
                    .filter_map(|(kv, targets)| {
                        (!targets.is_empty() && targets.iter().all(|t| acked.contains(t)))
                            .then_some(kv)
                    })
                    .collect();
                let replica = self.coordinator.replica().clone();
                let kept = (page_len - done.len()) as u64;
                let done_len = done.len() as u64;
                let moved = blocking(move || {
                    let mut moved = 0u64;
                    for (key, state) in &done {
                        moved += u64::from(replica.reap(key, state)?);
                    }
                    Ok(moved)
                })
                .await?;
                report.moved += moved;
                // Changed while handed off (reap refused): kept for the
                // next pass, like those a replica did not acknowledge.
                report.remaining += kept + (done_len - moved);
            }
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        self.handed_off.fetch_add(report.moved, Ordering::Relaxed);
        if report.remaining > 0 {
            self.handoff_pending.store(true, Ordering::Relaxed);
        }
        if report.moved > 0 || report.remaining > 0 {
            tracing::info!(
                moved = report.moved,
                remaining = report.remaining,
                "hand-off pass"
            );
        }
        Ok(report)
    }

    // ---- operator views ----

    /// `kvctl status`.
    ///
    /// # Errors
    ///
    /// `Internal` if the ring state does not give a ring.
    pub fn status(&self) -> Result<StatusReply, Status> {
        let (state, ring) = self.current_ring()?;
        let n = self.settings.n;
        let owned = if ring.is_empty() {
            BTreeMap::new()
        } else {
            ring.replicated_ownership(n).map_err(internal)?
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
    pub async fn hints(&self) -> Result<HintsReply, Status> {
        let replica = self.coordinator.replica().clone();
        let counts = blocking(move || replica.hints().counts()).await?;
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

fn wall_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The ring with the highest epoch among the answers.
async fn futures_max<F>(asks: impl IntoIterator<Item = F>) -> Option<RingState>
where
    F: std::future::Future<Output = Option<RingState>>,
{
    join_all(asks)
        .await
        .into_iter()
        .flatten()
        .max_by_key(|s| s.epoch)
}
