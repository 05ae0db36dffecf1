//! The coordinator: quorum writes and reads over the replicas of a key.
//!
//! Here: the [`Coordinator`] and its results. Beside, one concept a file:
//! `routing` (who coordinates, forwarding), `write` (the write quorum,
//! sloppy quorum, hedging), `read` (the read quorum and read repair),
//! `handoff` (hint delivery), `anti_entropy`, `gc` (tombstone collection),
//! `listing` (key listing),
//! `maintenance` (the timer that runs the last three).

use kv_clock::VectorClock;
use kv_core::{
    ClientOp, ClientReply, MembershipView, NodeId, Partitioner, StorageEngine, Transport,
};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::batch::{Batcher, RunBatch};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::replica::{Replica, Siblings, Stored, Update, off_runtime};

mod anti_entropy;
mod decide;
mod gc;
mod handoff;
mod listing;
mod maintenance;
mod read;
mod routing;
mod watch;
mod write;

pub use anti_entropy::PeerRepair;
pub use watch::{Watch, WatchBatch, WatchChange};

/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetResult {
    /// The live values: one, several siblings, or none (absent or deleted).
    pub values: Vec<Vec<u8>>,
    /// The context to send with the next write of this key, which then
    /// supersedes exactly what this read saw.
    pub context: Vec<u8>,
}

/// What an anti-entropy exchange did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Buckets found to differ.
    pub buckets: usize,
    /// Keys whose state was fetched from the peer and merged here.
    pub keys_pulled: usize,
    /// Of those, keys whose state here changed by the merge.
    pub keys_changed: usize,
    /// Keys whose merged state was sent to the peer.
    pub keys_pushed: usize,
    /// Bytes of exchange messages (both directions), not counting states.
    pub exchange_bytes: u64,
}

impl std::ops::AddAssign for RepairReport {
    fn add_assign(&mut self, other: Self) {
        self.buckets += other.buckets;
        self.keys_pulled += other.keys_pulled;
        self.keys_changed += other.keys_changed;
        self.keys_pushed += other.keys_pushed;
        self.exchange_bytes += other.exchange_bytes;
    }
}

/// Runs a read of the storage engine: inline when the engine says its
/// reads never wait on I/O ([`StorageEngine::inline_reads`]), which saves
/// two thread switches per read; otherwise like [`off_runtime`].
async fn engine_read<E: StorageEngine + 'static, T: Send + 'static>(
    replica: &Arc<Replica<E>>,
    f: impl FnOnce(&Replica<E>) -> Result<T> + Send + 'static,
) -> Result<T> {
    if replica.engine().inline_reads() {
        f(replica)
    } else {
        let replica = replica.clone();
        off_runtime(move || f(&replica)).await
    }
}

/// A write's result from a forwarded reply.
fn written(node: NodeId, reply: ClientReply) -> Result<PutResult> {
    match reply {
        ClientReply::Written { context, dot } => Ok(PutResult {
            context,
            dot: kv_clock::Dot {
                actor: dot.0,
                counter: dot.1,
            },
        }),
        ClientReply::Failed {
            invalid, message, ..
        } => Err(Error::Forwarded {
            node,
            invalid,
            message,
        }),
        ClientReply::Read { .. } => Err(Error::Forwarded {
            node,
            invalid: false,
            message: "answered a write with a read".into(),
        }),
    }
}

/// Where [`Coordinator::dispatch`] sent a request.
enum Dispatched {
    /// This node coordinates it; `after_forward` when a forward was sent
    /// and went unanswered first.
    Here {
        /// Whether a forwarded attempt went unanswered before.
        after_forward: bool,
    },
    /// Another node did, and answered this.
    There(NodeId, ClientReply),
}

/// Something that coordinates forwarded client requests (a node's
/// coordinator, as seen by transports that deliver them).
#[async_trait::async_trait]
pub trait ClientHandler: Send + Sync {
    /// Coordinates a forwarded request here.
    async fn handle_forwarded(&self, op: ClientOp) -> ClientReply;
}

#[async_trait::async_trait]
impl<E, T, P> ClientHandler for Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    async fn handle_forwarded(&self, op: ClientOp) -> ClientReply {
        self.coordinate(op).await
    }
}

/// What a write returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The context of the new state (for a later write).
    pub context: Vec<u8>,
    /// The new version's dot (the coordinator and its counter).
    pub dot: kv_clock::Dot,
}

impl PutResult {
    fn into_reply(self) -> ClientReply {
        ClientReply::Written {
            context: self.context,
            dot: (self.dot.actor, self.dot.counter),
        }
    }
}

/// Coordinates requests for the keys this node replicates.
///
/// Writes: a new version at this node (the coordinator is a replica), then
/// the new state to the other replicas in parallel; success after W
/// acknowledgements, this node's included. Reads: the replicas' states,
/// merged after R answers; replicas that answered with less are repaired
/// after the reply. Every wait is bounded by the request timeout.
pub struct Coordinator<E, T, P> {
    config: Config,
    replica: Arc<Replica<E>>,
    transport: Arc<T>,
    ring: Arc<P>,
    membership: Arc<dyn MembershipView>,
    metrics: Arc<Metrics>,
    /// Stores concurrent writes coordinated here as one engine batch
    /// (started on first use, on the runtime of that use).
    local_writes: parking_lot::Mutex<Option<LocalWrites>>,
    /// How long replicas have recently taken to take a write.
    replica_latency: crate::RecentLatency,
    /// Client requests begun, for the trace sampling.
    requests_begun: std::sync::atomic::AtomicU32,
    /// What anti-entropy knows of each peer.
    repair_peers: parking_lot::Mutex<std::collections::BTreeMap<NodeId, PeerRepair>>,
    /// The keys per second repair may move, shared by every exchange.
    repair_pace: anti_entropy::Pace,
}

/// One client write as this node takes it (no value: a delete), from
/// routing to the local write.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriteSpec<'a> {
    key: &'a [u8],
    value: Option<&'a [u8]>,
    context: &'a [u8],
    /// Per-request W.
    w: Option<usize>,
    /// The client's name for the write (see [`kv_core::WriteTag`]).
    tag: Option<kv_core::WriteTag>,
    /// When the value lapses (seconds since the Unix epoch).
    expires: Option<u64>,
    /// The request's span (`crate::trace`): the write's steps are its
    /// children.
    span: &'a tracing::Span,
}

/// The batcher of writes coordinated at this node: each write's new state
/// and dot once made, and the wait for its batch's sync.
type LocalWrites = Batcher<LocalWrite, Result<(Siblings, kv_clock::Dot, Stored)>>;

/// A write for this node's replica, and where to announce its new state and
/// dot as soon as they are made (before they are stored).
type LocalWrite = (
    Update,
    tokio::sync::oneshot::Sender<(Siblings, kv_clock::Dot)>,
);

/// Most writes stored in one engine batch.
const LOCAL_BATCH_MAX: usize = 128;

/// Engine batches of coordinated writes being made at once. A batch is
/// done once made (its writes await its sync on their own), so the next
/// one is made while it syncs.
const LOCAL_BATCHES_IN_FLIGHT: usize = 1;

fn encode_context(state: &Siblings) -> Vec<u8> {
    let mut out = Vec::new();
    state.context().encode_into(&mut out, false);
    out
}

impl<E, T, P> Coordinator<E, T, P>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    /// A coordinator for `replica`'s node; `membership` says which nodes
    /// are believed alive (for sloppy quorums and hint delivery).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `config` does not validate.
    pub fn new(
        config: Config,
        replica: Arc<Replica<E>>,
        transport: Arc<T>,
        ring: Arc<P>,
        membership: Arc<dyn MembershipView>,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Coordinator {
            replica,
            transport,
            ring,
            membership,
            metrics: Arc::new(Metrics::default()),
            local_writes: parking_lot::Mutex::new(None),
            replica_latency: crate::RecentLatency::default(),
            requests_begun: std::sync::atomic::AtomicU32::new(0),
            repair_peers: parking_lot::Mutex::default(),
            repair_pace: anti_entropy::Pace::new(config.repair_keys_per_sec),
            config,
        })
    }

    /// The batcher of local writes, started (again) if it is not running.
    /// Whether the client request beginning now is traced: one in
    /// `trace_every`, picked by a hash of the request's number rather than
    /// every n-th, so a workload that alternates kinds of requests has each
    /// kind traced.
    pub(super) fn traced(&self) -> bool {
        match self.config.trace_every {
            0 => false,
            1 => true,
            every => {
                let n = self
                    .requests_begun
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Murmur3's 32-bit finaliser: every bit of n moves every
                // bit of the result.
                let mut h = n;
                h ^= h >> 16;
                h = h.wrapping_mul(0x85eb_ca6b);
                h ^= h >> 13;
                h = h.wrapping_mul(0xc2b2_ae35);
                h ^= h >> 16;
                h.is_multiple_of(every)
            }
        }
    }

    fn local_writes(&self) -> LocalWrites {
        let mut slot = self.local_writes.lock();
        if let Some(batcher) = slot.as_ref().filter(|b| !b.is_stopped()) {
            return batcher.clone();
        }
        // The driver holds the replica weakly, so a dropped node releases
        // its engine at once.
        let replica = Arc::downgrade(&self.replica);
        let (max, prune) = (self.config.max_siblings, self.config.effective_prune());
        let run: RunBatch<LocalWrite, Result<(Siblings, kv_clock::Dot, Stored)>> =
            Arc::new(move |writes: Vec<LocalWrite>| {
                let (replica, prune) = (replica.upgrade(), prune.clone());
                Box::pin(async move {
                    let Some(replica) = replica else {
                        return Vec::new();
                    };
                    let (updates, announce): (Vec<Update>, Vec<_>) = writes.into_iter().unzip();
                    let announce = move |made: &[Result<(Siblings, kv_clock::Dot)>]| {
                        for (made, to) in made.iter().zip(announce) {
                            if let Ok(made) = made {
                                let _ = to.send(made.clone());
                            }
                        }
                    };
                    let with = |results: Vec<Result<(Siblings, kv_clock::Dot)>>, stored: Stored| {
                        results
                            .into_iter()
                            .map(|r| r.map(|(state, dot)| (state, dot, stored.clone())))
                            .collect()
                    };
                    // Inline when the engine's write returns at once: no
                    // blocking thread per batch, and the batch ends here,
                    // before its sync (under `always` the next batch is
                    // then made and appended while this one syncs, where
                    // awaiting the sync here queued it behind a whole one).
                    if replica.inline_writes() {
                        let (results, stored) = replica
                            .coordinate_many_pending(updates, max, &prune, announce)
                            .into_parts();
                        return with(results, stored);
                    }
                    let results = tokio::task::spawn_blocking(move || {
                        replica
                            .coordinate_many_pending(updates, max, &prune, announce)
                            .wait()
                    })
                    .await
                    .unwrap_or_default();
                    with(results, Stored::done())
                })
            });
        let batcher = Batcher::spawn(LOCAL_BATCH_MAX, LOCAL_BATCHES_IN_FLIGHT, run);
        *slot = Some(batcher.clone());
        batcher
    }

    /// What this coordinator has counted.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The ring this coordinator places keys with.
    pub fn ring(&self) -> &Arc<P> {
        &self.ring
    }

    /// Whether `node` is believed alive.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.membership.is_alive(node)
    }

    /// This node's replica.
    pub fn replica(&self) -> &Arc<Replica<E>> {
        &self.replica
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidInput("empty key".into()));
        }
        if key.len() > self.config.max_key_bytes {
            return Err(Error::InvalidInput(format!(
                "key of {} bytes exceeds the limit of {} bytes",
                key.len(),
                self.config.max_key_bytes
            )));
        }
        Ok(())
    }

    /// The replicas of `key`, this node first-class among them.
    fn replicas(&self, key: &[u8]) -> Result<Vec<NodeId>> {
        let replicas = self.ring.preference_list(key, self.config.n)?;
        if !replicas.contains(&self.replica.id()) {
            return Err(Error::NotReplica(replicas));
        }
        Ok(replicas)
    }
}
