//! An in-process network of replicas for tests: a [`Transport`] that can
//! take nodes down, partition pairs of nodes, drop messages with a seeded
//! probability and delay them (in tokio time, so tests can pause it).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};

use crate::coordinator::ClientHandler;
use std::time::Duration;

use kv_core::{
    ClientOp, ClientReply, MembershipView, NodeId, StorageEngine, Transport, TransportError,
};
use parking_lot::Mutex;

use crate::replica::Replica;

#[derive(Debug, Default)]
struct Faults {
    down: BTreeSet<NodeId>,
    /// Nodes whose messages are held (alive, but not answering).
    paused: BTreeSet<NodeId>,
    /// Unordered pairs that cannot talk.
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_rate: f64,
    delay: Duration,
    rng: u64,
    messages: u64,
    dropped: u64,
}

/// The replicas of an in-process cluster and the faults between them.
#[derive(Debug)]
pub struct SimNetwork<E> {
    replicas: Mutex<HashMap<NodeId, Arc<Replica<E>>>>,
    handlers: Mutex<HashMap<NodeId, Weak<dyn ClientHandler>>>,
    faults: Mutex<Faults>,
}

impl<E> SimNetwork<E> {
    /// An empty network; `seed` drives message drops.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(SimNetwork {
            replicas: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults {
                rng: seed,
                ..Faults::default()
            }),
        })
    }

    /// Adds (or replaces, after a restart) a node's replica.
    pub fn attach(&self, replica: Arc<Replica<E>>) {
        self.replicas.lock().insert(replica.id(), replica);
    }

    /// Registers the coordinator that handles requests forwarded to `node`.
    pub fn attach_handler(&self, node: NodeId, handler: Weak<dyn ClientHandler>) {
        self.handlers.lock().insert(node, handler);
    }

    /// Takes a node down (or brings it back).
    pub fn set_down(&self, node: NodeId, down: bool) {
        toggle(&mut self.faults.lock().down, node, down);
    }

    /// Whether a node is down.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.faults.lock().down.contains(&node)
    }

    /// Cuts (or restores) the link between `a` and `b`.
    pub fn set_cut(&self, a: NodeId, b: NodeId, cut: bool) {
        toggle(&mut self.faults.lock().cut, (a.min(b), a.max(b)), cut);
    }

    /// Drops this share of messages (seeded).
    pub fn set_drop_rate(&self, rate: f64) {
        self.faults.lock().drop_rate = rate;
    }

    /// Pauses a node (or resumes it): messages to and from it are held
    /// for an hour, and it still counts as alive (a SIGSTOPped process,
    /// before failure detection notices).
    pub fn set_paused(&self, node: NodeId, paused: bool) {
        toggle(&mut self.faults.lock().paused, node, paused);
    }

    /// Delays every message by this much.
    pub fn set_delay(&self, delay: Duration) {
        self.faults.lock().delay = delay;
    }

    /// (messages sent, messages dropped or refused).
    pub fn counts(&self) -> (u64, u64) {
        let f = self.faults.lock();
        (f.messages, f.dropped)
    }

    /// Decides whether a message from `from` to `to` gets through.
    fn admit(&self, from: NodeId, to: NodeId) -> Result<Duration, TransportError> {
        let mut f = self.faults.lock();
        f.messages += 1;
        let cut = f.cut.contains(&(from.min(to), from.max(to)));
        if f.down.contains(&to) || f.down.contains(&from) || cut {
            f.dropped += 1;
            return Err(TransportError::Unreachable(to));
        }
        if f.drop_rate > 0.0 {
            f.rng = f
                .rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if ((f.rng >> 11) as f64 / (1u64 << 53) as f64) < f.drop_rate {
                f.dropped += 1;
                return Err(TransportError::Timeout(to));
            }
        }
        if f.paused.contains(&to) || f.paused.contains(&from) {
            return Ok(Duration::from_secs(3600));
        }
        Ok(f.delay)
    }

    fn replica(&self, node: NodeId) -> Result<Arc<Replica<E>>, TransportError> {
        self.replicas
            .lock()
            .get(&node)
            .cloned()
            .ok_or(TransportError::Unreachable(node))
    }
}

/// Puts `item` in `set` (`on`) or takes it out.
fn toggle<T: Ord>(set: &mut BTreeSet<T>, item: T, on: bool) {
    if on {
        set.insert(item);
    } else {
        set.remove(&item);
    }
}

/// The network's idea of liveness: a node is alive unless taken down.
impl<E: Send + Sync> MembershipView for SimNetwork<E> {
    fn is_alive(&self, node: NodeId) -> bool {
        !self.is_down(node)
    }
}

/// A message's time on the wire: `delay`, or, with no delay set, one
/// yield to the scheduler (a zero-length tokio sleep would wait for the
/// timer's next millisecond tick).
async fn in_flight(delay: Duration) {
    if delay.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(delay).await;
    }
}

/// One node's view of a [`SimNetwork`].
#[derive(Debug, Clone)]
pub struct SimTransport<E> {
    me: NodeId,
    network: Arc<SimNetwork<E>>,
}

impl<E> SimTransport<E> {
    /// The transport of node `me`.
    pub fn new(me: NodeId, network: Arc<SimNetwork<E>>) -> Self {
        SimTransport { me, network }
    }
}

#[async_trait::async_trait]
impl<E: StorageEngine + 'static> Transport for SimTransport<E> {
    async fn replicate(
        &self,
        to: NodeId,
        key: Vec<u8>,
        state: Vec<u8>,
        hint_for: Option<NodeId>,
    ) -> Result<(), TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        // A node that went down while the message was in flight.
        if self.network.is_down(to) {
            return Err(TransportError::Unreachable(to));
        }
        replica
            .receive(&key, &state, hint_for)
            .map_err(|e| e.to_transport(to))
    }

    async fn read(&self, to: NodeId, key: Vec<u8>) -> Result<Option<Vec<u8>>, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        if self.network.is_down(to) {
            return Err(TransportError::Unreachable(to));
        }
        let state = replica.state(&key).map_err(|e| e.to_transport(to))?;
        Ok((!state.is_empty() || !state.context().is_empty()).then(|| state.to_bytes()))
    }

    async fn merkle_exchange(
        &self,
        to: NodeId,
        from: NodeId,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        replica
            .answer_exchange(from, &request)
            .map_err(|e| e.to_transport(to))
    }

    async fn bucket_states(
        &self,
        to: NodeId,
        from: NodeId,
        query: kv_core::BucketQuery,
    ) -> Result<kv_core::BucketPage, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        replica
            .bucket_page(from, &query, None)
            .map_err(|e| e.to_transport(to))
    }

    async fn list_keys(
        &self,
        to: NodeId,
        query: kv_core::KeyQuery,
    ) -> Result<kv_core::KeyPage, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        replica.key_page(&query).map_err(|e| e.to_transport(to))
    }

    async fn changes(
        &self,
        to: NodeId,
        query: kv_core::FeedQuery,
    ) -> Result<kv_core::FeedPage, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        let page = replica
            .changes(query)
            .await
            .map_err(|e| e.to_transport(to))?;
        // The answer crosses the network after a wait: a cut made
        // meanwhile loses it.
        let delay = self.network.admit(to, self.me)?;
        in_flight(delay).await;
        Ok(page)
    }

    async fn forward(&self, to: NodeId, op: ClientOp) -> Result<ClientReply, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let handler = self
            .network
            .handlers
            .lock()
            .get(&to)
            .and_then(Weak::upgrade)
            .ok_or(TransportError::Unreachable(to))?;
        Ok(handler.handle_forwarded(op).await)
    }

    async fn reap(
        &self,
        to: NodeId,
        key: Vec<u8>,
        expected: Vec<u8>,
    ) -> Result<bool, TransportError> {
        let delay = self.network.admit(self.me, to)?;
        in_flight(delay).await;
        let replica = self.network.replica(to)?;
        replica
            .reap(&key, &expected)
            .map_err(|e| e.to_transport(to))
    }
}
