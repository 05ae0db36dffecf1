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
//!
//! Here: the node's `Cluster`, the live ring and the gossip view. Beside:
//! `membership` (gossip in and out), `ring_sync` (installing, asking for
//! and pushing rings), `rebalance` (join, leave, range streaming, hand-off),
//! `recovery` (remove and replace dead nodes), `backup` (snapshots), `operator` (status and
//! hints), `repair` (anti-entropy on demand),
//! `proposal` (the promises that keep two ring changes from installing one
//! epoch).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use kv_core::{MembershipView, NodeId, Partitioner, Token, TokenRange};
use kv_gossip::{Event, Gossip, Meta, Outgoing, Status as Liveness};
use kv_ring::{ConsistentHashRing, NodeSpec, RingDiff, TokenStrategy};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::local::LiveRing;
use crate::local::{NodeCoordinator, off_runtime};
use crate::proto::{
    ChangeReply, FetchRequest, GossipRequest, HintCount, HintsReply, InstallReply, KeyState,
    MemberStatus, Range, RingQuery, RingState, StatusReply, TransferRequest,
};
use crate::ring_state::{self, ring_of, state_of};
use crate::transport::GrpcTransport;

mod backup;
mod error;
mod membership;
mod operator;
pub use operator::outside_ring_warning;
mod proposal;
mod rebalance;
mod recovery;
mod repair;
mod ring_sync;

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
    /// The directory snapshots must be written below (`None`: anywhere).
    pub snapshot_root: Option<PathBuf>,
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
    /// The next ring epoch as this node promised it to a change.
    promise: Mutex<Option<proposal::Promise>>,
    /// What each peer announced in its last gossip call.
    peer_versions: Mutex<HashMap<NodeId, crate::version::Versions>>,
    /// Where each peer said its status page is, in its last gossip call.
    peer_pages: Mutex<HashMap<NodeId, String>>,
}

pub use error::ClusterError;

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
            promise: Mutex::new(None),
            peer_versions: Mutex::new(HashMap::new()),
            peer_pages: Mutex::new(HashMap::new()),
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
