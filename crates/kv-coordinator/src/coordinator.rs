//! The coordinator: quorum writes and reads over the replicas of a key.

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
use crate::replica::{Replica, Siblings, Update, Value};

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
    /// Keys whose merged state was sent to the peer.
    pub keys_pushed: usize,
    /// Bytes of exchange messages (both directions), not counting states.
    pub exchange_bytes: u64,
}

impl std::ops::AddAssign for RepairReport {
    fn add_assign(&mut self, other: Self) {
        self.buckets += other.buckets;
        self.keys_pulled += other.keys_pulled;
        self.keys_pushed += other.keys_pushed;
        self.exchange_bytes += other.exchange_bytes;
    }
}

/// Runs a call into the storage engine on tokio's blocking pool, so that
/// engine work (an fsync under `Durability::Always`) never stalls the
/// threads that serve requests.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Peer(format!("engine task failed: {e}")))?
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

fn wall_clock_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The outcome of forwarding a request.
enum Forwarded {
    Reply(ClientReply),
    /// The coordinator could not be reached and this node is a healthy
    /// replica.
    Unreachable,
    /// The coordinator applied nothing (its storage refuses writes):
    /// another replica may take the request. The coordinator's message.
    NotApplied(String),
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

/// A failure reply for a request nobody applied.
fn not_applied(message: String) -> ClientReply {
    ClientReply::Failed {
        invalid: false,
        not_applied: true,
        message,
    }
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
}

/// The batcher of writes coordinated at this node.
type LocalWrites = Batcher<Update, Result<(Siblings, kv_clock::Dot)>>;

/// Most writes stored in one engine batch.
const LOCAL_BATCH_MAX: usize = 128;

/// Engine batches of coordinated writes under way at once (one can be
/// syncing while the next is built).
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
            config,
            replica,
            transport,
            ring,
            membership,
            metrics: Arc::new(Metrics::default()),
            local_writes: parking_lot::Mutex::new(None),
            replica_latency: crate::RecentLatency::default(),
        })
    }

    /// The batcher of local writes, started (again) if it is not running.
    fn local_writes(&self) -> LocalWrites {
        let mut slot = self.local_writes.lock();
        if let Some(batcher) = slot.as_ref().filter(|b| !b.is_stopped()) {
            return batcher.clone();
        }
        // The driver holds the replica weakly, so a dropped node releases
        // its engine at once.
        let replica = Arc::downgrade(&self.replica);
        let (max, prune) = (self.config.max_siblings, self.config.effective_prune());
        let run: RunBatch<Update, Result<(Siblings, kv_clock::Dot)>> =
            Arc::new(move |updates: Vec<Update>| {
                let (replica, prune) = (replica.upgrade(), prune.clone());
                Box::pin(async move {
                    let Some(replica) = replica else {
                        return Vec::new();
                    };
                    tokio::task::spawn_blocking(move || {
                        replica.coordinate_many(updates, max, &prune)
                    })
                    .await
                    .unwrap_or_default()
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

    /// Writes `value` under `key`, superseding what `context` covers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty or oversize key, an oversize value,
    /// a context that does not decode or W out of range; [`Error::WriteQuorum`]
    /// when fewer than W replicas acknowledged in time (the write may still
    /// have reached some); storage errors from this node's engine.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        w: Option<usize>,
    ) -> Result<PutResult> {
        self.write_once(key, Some(value), context, w, None).await
    }

    /// Deletes `key`: a tombstone that supersedes what `context` covers.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn delete(&self, key: &[u8], context: &[u8], w: Option<usize>) -> Result<PutResult> {
        self.write_once(key, None, context, w, None).await
    }

    /// A write (`value: None`: a delete) that the client may send more
    /// than once, to any node: every attempt carries the same `write` tag
    /// (a later attempt with `retry` set), and the store keeps one version
    /// of it. An attempt that reaches a replica already holding the write
    /// stores nothing new and answers with the first attempt's dot; copies
    /// stored by attempts at different coordinators become one version
    /// wherever they meet. `None` is an ordinary write.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put).
    pub async fn write_once(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
    ) -> Result<PutResult> {
        let started = Instant::now();
        let result = self.routed_write(key, value, context, w, write).await;
        self.write_histogram(value.is_some())
            .observe(started.elapsed(), &result);
        self.count_quorum(&result);
        result
    }

    /// A write (`None`: a delete) coordinated here, or forwarded to the
    /// key's coordinator.
    async fn routed_write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
    ) -> Result<PutResult> {
        let op = || ClientOp::Put {
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            context: context.to_vec(),
            w: w.map(|w| w as u32),
            write,
        };
        // An attempt the client sent again may have been stored by the
        // coordinator it tried first, which may be paused or cut off:
        // this node takes it itself when it can (the copies are one write).
        let here = write.is_some_and(|t| t.retry);
        match self.dispatch(key, here, op).await? {
            Dispatched::Here { after_forward } => {
                // A forwarded attempt that went unanswered may have been
                // stored there: this one is a retry of it.
                let write = write.map(|t| kv_core::WriteTag {
                    retry: t.retry || after_forward,
                    ..t
                });
                self.local_write(key, value, context, w, write).await
            }
            Dispatched::There(node, reply) => written(node, reply),
        }
    }

    /// Where a request for `key` is coordinated: here, or forwarded (`op`
    /// makes the request, only when it is) with the coordinator's reply. A
    /// coordinator that cannot be reached leaves it to this node when it is
    /// a healthy replica; one that applied nothing (its storage refuses
    /// writes) passes it to the next live replica, once. With `here`,
    /// this node coordinates whenever it is a healthy replica.
    async fn dispatch(
        &self,
        key: &[u8],
        here: bool,
        op: impl FnOnce() -> ClientOp,
    ) -> Result<Dispatched> {
        let route = if here && self.healthy_replica(key)? {
            None
        } else {
            self.route(key)?
        };
        let Some(coordinator) = route else {
            return Ok(Dispatched::Here {
                after_forward: false,
            });
        };
        let op = op();
        let message = match self.forward(coordinator, op.clone()).await {
            Forwarded::Reply(reply) => return Ok(Dispatched::There(coordinator, reply)),
            Forwarded::Unreachable => {
                return Ok(Dispatched::Here {
                    after_forward: true,
                });
            }
            Forwarded::NotApplied(message) => message,
        };
        Ok(match self.next_coordinator(key, coordinator) {
            None => Dispatched::There(coordinator, not_applied(message)),
            Some(next) if next == self.replica.id() => Dispatched::Here {
                after_forward: false,
            },
            Some(next) => match self.forward(next, op).await {
                Forwarded::Reply(reply) => Dispatched::There(next, reply),
                Forwarded::Unreachable => Dispatched::Here {
                    after_forward: true,
                },
                Forwarded::NotApplied(message) => Dispatched::There(next, not_applied(message)),
            },
        })
    }

    /// How long a write waits for a replica before it also sends the state
    /// to a fallback with a hint: `hedge_factor` times the recent replica
    /// latency, at least `hedge_floor`, at most half the request timeout.
    fn hedge_delay(&self) -> std::time::Duration {
        let floor = self.config.hedge_floor;
        self.replica_latency.scaled(
            self.config.hedge_factor,
            floor,
            self.config.request_timeout / 2,
            floor,
        )
    }

    /// The replica to try after `failed` refused a request without
    /// applying it: the next one of `key`'s preference list that is alive
    /// (this node when it is a healthy replica).
    fn next_coordinator(&self, key: &[u8], failed: NodeId) -> Option<NodeId> {
        let me = self.replica.id();
        let me_healthy = self.replica.health().is_ok();
        self.ring
            .preference_list(key, self.config.n)
            .ok()?
            .into_iter()
            .find(|&r| {
                r != failed
                    && if r == me {
                        me_healthy
                    } else {
                        self.membership.is_alive(r)
                    }
            })
    }

    /// A write coordinated by this node.
    async fn local_write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
    ) -> Result<PutResult> {
        if let Some(value) = value
            && value.len() > self.config.max_value_bytes
        {
            return Err(Error::InvalidInput(format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.config.max_value_bytes
            )));
        }
        self.write(key, value.map(<[u8]>::to_vec), context, w, write)
            .await
    }

    /// Where a request for `key` should be coordinated: `None` for here
    /// (this node is the first healthy replica, or a replica and no other
    /// is healthy), or the node to forward it to. When this node is no
    /// replica and believes every replica down, the first replica is tried
    /// anyway: liveness may be stale, and only a replica can coordinate.
    /// A node whose storage refuses writes steps aside: it coordinates
    /// nothing while another replica may.
    fn route(&self, key: &[u8]) -> Result<Option<NodeId>> {
        self.check_key(key)?;
        let replicas = self.ring.preference_list(key, self.config.n)?;
        let me = self.replica.id();
        let me_healthy = self.replica.health().is_ok();
        let first = replicas.iter().copied().find(|&r| {
            if r == me {
                me_healthy
            } else {
                self.membership.is_alive(r)
            }
        });
        Ok(match first {
            Some(c) if c == me => None,
            Some(c) => Some(c),
            None if replicas.contains(&me) && me_healthy => None,
            // Nobody is known healthy: try another replica (liveness may
            // be stale), or coordinate here when there is no other.
            None => replicas.iter().copied().find(|&r| r != me),
        })
    }

    /// Whether this node is a replica of `key` and its storage takes
    /// writes.
    fn healthy_replica(&self, key: &[u8]) -> Result<bool> {
        self.check_key(key)?;
        Ok(self
            .ring
            .preference_list(key, self.config.n)?
            .contains(&self.replica.id())
            && self.replica.health().is_ok())
    }

    /// Sends a request to its coordinator (one hop).
    async fn forward(&self, coordinator: NodeId, op: ClientOp) -> Forwarded {
        let me = self.replica.id();
        let could_coordinate = {
            let key = match &op {
                ClientOp::Put { key, .. } | ClientOp::Get { key, .. } => key,
            };
            self.ring
                .preference_list(key, self.config.n)
                .is_ok_and(|r| r.contains(&me))
                && self.replica.health().is_ok()
        };
        match tokio::time::timeout(
            self.config.request_timeout,
            self.transport.forward(coordinator, op),
        )
        .await
        {
            Ok(Ok(ClientReply::Failed {
                not_applied: true,
                message,
                ..
            })) => Forwarded::NotApplied(message),
            Ok(Ok(reply)) => Forwarded::Reply(reply),
            // The coordinator is unreachable: a replica coordinates itself.
            _ if could_coordinate => Forwarded::Unreachable,
            Ok(Err(e)) => Forwarded::Reply(ClientReply::Failed {
                invalid: false,
                not_applied: false,
                message: e.to_string(),
            }),
            Err(_) => Forwarded::Reply(ClientReply::Failed {
                invalid: false,
                not_applied: false,
                message: format!("{coordinator} did not answer in time"),
            }),
        }
    }

    /// Coordinates a request forwarded by another node: here, never
    /// forwarded again (one hop, no loops).
    pub async fn coordinate(&self, op: ClientOp) -> ClientReply {
        // A forwarded request this node cannot coordinate (the sender's
        // ring is older or newer) is a routing failure, not bad input: the
        // client may retry elsewhere.
        let failed = |e: Error| ClientReply::Failed {
            invalid: matches!(e, Error::InvalidInput(_)),
            // A storage error at the coordinator happens before anything
            // is stored (the local write is one atomic engine batch).
            not_applied: matches!(e, Error::Storage(_)),
            message: e.to_string(),
        };
        // A node whose storage refuses writes takes none: the sender tries
        // the next replica (it may not know yet, gossip takes a moment).
        if let (ClientOp::Put { .. }, Err(e)) = (&op, self.replica.health()) {
            return not_applied(format!("{} cannot take writes: {e}", self.replica.id()));
        }
        match op {
            ClientOp::Put {
                key,
                value,
                context,
                w,
                write,
            } => {
                let started = Instant::now();
                let result = self
                    .local_write(
                        &key,
                        value.as_deref(),
                        &context,
                        w.map(|w| w as usize),
                        write,
                    )
                    .await;
                self.write_histogram(value.is_some())
                    .observe(started.elapsed(), &result);
                result.map_or_else(failed, PutResult::into_reply)
            }
            ClientOp::Get { key, r } => {
                let started = Instant::now();
                let result = self.get_inner(&key, r.map(|r| r as usize)).await;
                self.metrics.get.observe(started.elapsed(), &result);
                result.map_or_else(failed, |g| ClientReply::Read {
                    values: g.values,
                    context: g.context,
                })
            }
        }
    }

    /// The latency histogram of a put (`true`) or a delete.
    fn write_histogram(&self, put: bool) -> &crate::metrics::OpMetrics {
        if put {
            &self.metrics.put
        } else {
            &self.metrics.delete
        }
    }

    fn count_quorum<R>(&self, result: &Result<R>) {
        if matches!(
            result,
            Err(Error::WriteQuorum { .. } | Error::ReadQuorum { .. })
        ) {
            Metrics::add(&self.metrics.quorum_failures, 1);
        }
    }

    async fn write(
        &self,
        key: &[u8],
        value: Value,
        context: &[u8],
        w: Option<usize>,
        write: Option<kv_core::WriteTag>,
    ) -> Result<PutResult> {
        self.check_key(key)?;
        let w = w.unwrap_or(self.config.w);
        self.config.check_quorum("w", w)?;
        // No context (a blind write) is the empty clock.
        let context = if context.is_empty() {
            VectorClock::new()
        } else {
            VectorClock::from_bytes(context)
                .map_err(|e| Error::InvalidInput(format!("context does not decode: {e}")))?
        };
        let replicas = self.replicas(key)?;
        let deadline = Instant::now() + self.config.request_timeout;
        let update = Update {
            key: key.to_vec(),
            value,
            context,
            write,
        };
        let (state, dot) = self
            .local_writes()
            .call(update)
            .await
            .map_err(|_| Error::Peer("engine task failed".into()))??;
        let bytes = state.to_bytes();
        // Fallbacks for a sloppy quorum: the healthy nodes after the
        // preference list, clockwise.
        let mut fallbacks: std::collections::VecDeque<NodeId> = if self.config.sloppy_quorum {
            self.ring
                .preference_list(key, usize::MAX)?
                .into_iter()
                .skip(self.config.n)
                .filter(|&f| self.membership.is_alive(f))
                .collect()
        } else {
            std::collections::VecDeque::new()
        };
        let others: Vec<NodeId> = replicas
            .into_iter()
            .filter(|&n| n != self.replica.id())
            .collect();
        // Every replica gets the state, whether or not we wait for it.
        let (tx, mut rx) = mpsc::channel(2 * others.len().max(1));
        let send = |target: NodeId, hint_for: Option<NodeId>| {
            let (transport, tx, key, bytes) = (
                self.transport.clone(),
                tx.clone(),
                key.to_vec(),
                bytes.clone(),
            );
            tokio::spawn(async move {
                let started = Instant::now();
                let result = transport.replicate(target, key, bytes, hint_for).await;
                let _ = tx.send((target, hint_for, result, started.elapsed())).await;
            });
        };
        let mut outstanding = 0;
        let mut failed = Vec::new();
        for &peer in &others {
            let down = self.config.sloppy_quorum && !self.membership.is_alive(peer);
            if down {
                match fallbacks.pop_front() {
                    Some(fallback) => send(fallback, Some(peer)),
                    None => {
                        failed.push(peer);
                        continue;
                    }
                }
            } else {
                send(peer, None);
            }
            outstanding += 1;
        }
        let mut acked = 1;
        let mut answered = Vec::new();
        // A replica that has not answered within a few times the recent
        // replica latency (paused, cut off, overloaded) gets a hinted
        // fallback without waiting for failure detection, so W is met.
        let mut hedge_at = (!fallbacks.is_empty()).then(|| Instant::now() + self.hedge_delay());
        let mut hinted: Vec<NodeId> = Vec::new();
        while acked < w && outstanding > 0 {
            let wake = hedge_at.filter(|&h| h < deadline).unwrap_or(deadline);
            match tokio::time::timeout_at(wake, rx.recv()).await {
                Ok(Some((target, hint_for, result, took))) => {
                    outstanding -= 1;
                    answered.push(hint_for.unwrap_or(target));
                    match result {
                        Ok(()) => {
                            acked += 1;
                            if hint_for.is_none() {
                                self.replica_latency.observe(took);
                            }
                        }
                        Err(_) => {
                            failed.push(target);
                            // A replica that failed gets a hinted fallback.
                            if hint_for.is_none()
                                && !hinted.contains(&target)
                                && let Some(fallback) = fallbacks.pop_front()
                            {
                                send(fallback, Some(target));
                                hinted.push(target);
                                outstanding += 1;
                            }
                        }
                    }
                }
                Err(_) if hedge_at == Some(wake) => {
                    hedge_at = None;
                    for &peer in &others {
                        if answered.contains(&peer)
                            || failed.contains(&peer)
                            || hinted.contains(&peer)
                        {
                            continue;
                        }
                        let Some(fallback) = fallbacks.pop_front() else {
                            break;
                        };
                        send(fallback, Some(peer));
                        hinted.push(peer);
                        outstanding += 1;
                        Metrics::add(&self.metrics.replica_writes_hedged, 1);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if acked >= w {
            // The rest still answer: a replica that fails after W was met
            // gets its hinted fallback all the same, so the write still
            // reaches N nodes (the request does not wait for it).
            if outstanding > 0 && !fallbacks.is_empty() {
                let (transport, key, bytes) = (self.transport.clone(), key.to_vec(), bytes.clone());
                tokio::spawn(async move {
                    while outstanding > 0 {
                        let Ok(Some((target, hint_for, result, _))) =
                            tokio::time::timeout_at(deadline, rx.recv()).await
                        else {
                            return;
                        };
                        outstanding -= 1;
                        if result.is_err()
                            && hint_for.is_none()
                            && !hinted.contains(&target)
                            && let Some(fallback) = fallbacks.pop_front()
                        {
                            let _ = transport
                                .replicate(fallback, key.clone(), bytes.clone(), Some(target))
                                .await;
                        }
                    }
                });
            }
            return Ok(PutResult {
                context: encode_context(&state),
                dot,
            });
        }
        let timed_out = others
            .into_iter()
            .filter(|p| !answered.contains(p) && !failed.contains(p))
            .collect();
        Err(Error::WriteQuorum {
            acked,
            needed: w,
            failed,
            timed_out,
        })
    }

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
        self.deliver_hints_at(batch, wall_clock_secs()).await
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
            if !in_ring.is_empty() && !in_ring.contains(&owner) {
                delivered += self.retarget_hints(owner, batch, cutoff).await?;
                continue;
            }
            if !self.membership.is_alive(owner) {
                continue;
            }
            let pending = {
                let r = self.replica.clone();
                off_runtime(move || r.hints().pending(owner, batch)).await?
            };
            for hint in pending {
                if hint.stored_at < cutoff {
                    self.hint_expired(owner, hint).await?;
                    continue;
                }
                let sent = tokio::time::timeout(
                    self.config.request_timeout,
                    self.transport
                        .replicate(owner, hint.key.clone(), hint.state.clone(), None),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
                delivered += usize::from(self.hint_delivered(owner, hint.key, hint.state).await?);
            }
        }
        Ok(delivered)
    }

    /// Drops an expired hint unsent.
    async fn hint_expired(&self, owner: NodeId, hint: crate::Hint) -> Result<()> {
        let r = self.replica.clone();
        off_runtime(move || r.hints().expire_one(owner, &hint.key, &hint.state)).await?;
        Ok(())
    }

    /// Deletes a delivered hint (unless it changed meanwhile) and counts it.
    async fn hint_delivered(&self, owner: NodeId, key: Vec<u8>, state: Vec<u8>) -> Result<bool> {
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
    async fn retarget_hints(&self, owner: NodeId, batch: usize, cutoff: u64) -> Result<usize> {
        let pending = {
            let r = self.replica.clone();
            off_runtime(move || r.hints().pending(owner, batch)).await?
        };
        let me = self.replica.id();
        let mut delivered = 0;
        for hint in pending {
            if hint.stored_at < cutoff {
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

    /// Anti-entropy with `peer`: compares the trees of the keys both
    /// replicate (kv-merkle's exchange, `fanout` nodes per message), then
    /// pulls the peer's states of the differing buckets, merges them here,
    /// and pushes the merged states back where the peer's differ. Afterwards
    /// both hold the merge of both, siblings kept.
    ///
    /// # Errors
    ///
    /// The peer's or the transport's error, or a storage error; nothing is
    /// half-applied (each key merges atomically).
    pub async fn anti_entropy_with(&self, peer: NodeId, fanout: usize) -> Result<RepairReport> {
        use kv_merkle::{Exchange, Message, Step};
        let peer_error = |e: &dyn std::fmt::Display| Error::Peer(format!("{peer}: {e}"));
        let mut report = RepairReport::default();
        let mut exchange =
            Exchange::new(self.replica.merkle_leaves(), fanout).map_err(|e| peer_error(&e))?;
        let buckets = loop {
            let step = self
                .replica
                .with_tree(peer, |tree| exchange.poll(tree))
                .map_err(|e| peer_error(&e))?;
            let compare = match step {
                Step::Done(buckets) => break buckets,
                Step::Send(compare) => compare,
            };
            let request = Message::Compare(compare).encode();
            report.exchange_bytes += request.len() as u64;
            let answer = tokio::time::timeout(
                self.config.request_timeout,
                self.transport
                    .merkle_exchange(peer, self.replica.id(), request),
            )
            .await
            .map_err(|_| peer_error(&"timed out"))?
            .map_err(|e| peer_error(&e))?;
            report.exchange_bytes += answer.len() as u64;
            let Message::Differences(differences) =
                Message::decode(&answer).map_err(|e| peer_error(&e))?
            else {
                return Err(peer_error(&"answered with a request"));
            };
            exchange.handle(&differences).map_err(|e| peer_error(&e))?;
        };
        report.buckets = buckets.len();
        if buckets.is_empty() {
            return Ok(report);
        }
        let theirs = tokio::time::timeout(
            self.config.request_timeout,
            self.transport
                .bucket_states(peer, self.replica.id(), buckets.clone()),
        )
        .await
        .map_err(|_| peer_error(&"timed out"))?
        .map_err(|e| peer_error(&e))?;
        let mut their_states = std::collections::BTreeMap::new();
        for (key, state) in theirs {
            let r = self.replica.clone();
            let (k, st) = (key.clone(), state.clone());
            let changed = off_runtime(move || {
                let before = r.state(&k)?.to_bytes();
                Ok(r.merge_bytes(&k, &st)?.to_bytes() != before)
            })
            .await?;
            if changed {
                Metrics::add(&self.metrics.keys_repaired, 1);
            }
            report.keys_pulled += 1;
            their_states.insert(key, state);
        }
        let mut keys: std::collections::BTreeSet<Vec<u8>> = their_states.keys().cloned().collect();
        let mine = {
            let (r, b) = (self.replica.clone(), buckets.clone());
            off_runtime(move || r.bucket_states(peer, &b)).await?
        };
        keys.extend(mine.into_iter().map(|(k, _)| k));
        for key in keys {
            let ours = {
                let (r, k) = (self.replica.clone(), key.clone());
                off_runtime(move || Ok(r.state(&k)?.to_bytes())).await?
            };
            if their_states.get(&key) != Some(&ours) {
                self.transport
                    .replicate(peer, key, ours, None)
                    .await
                    .map_err(|e| peer_error(&e))?;
                report.keys_pushed += 1;
                Metrics::add(&self.metrics.keys_repaired, 1);
            }
        }
        Ok(report)
    }

    /// Collects the tombstones of keys this node coordinates (it is their
    /// first replica) that are older than the grace period at `now_secs`
    /// (seconds since the Unix epoch) and that every replica holds,
    /// byte for byte; keys with a hint pending here are left alone. Each
    /// replica deletes only if its state is still that tombstone. Returns
    /// (tombstones examined, keys collected).
    ///
    /// # Errors
    ///
    /// Storage errors; replicas that cannot be reached keep their tombstones
    /// for a later pass.
    pub async fn collect_tombstones(&self, now_secs: u64) -> Result<(usize, usize)> {
        let me = self.replica.id();
        let grace = self.config.tombstone_grace.as_secs();
        let (mut examined, mut collected) = (0, 0);
        for key in self.replica.tombstone_keys() {
            let bytes = {
                let k = key.clone();
                match engine_read(&self.replica, move |r| Ok(r.engine().get(&k)?)).await? {
                    Some(bytes) => bytes,
                    None => continue,
                }
            };
            let state = Siblings::from_bytes(&bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
            if state.is_empty() || state.values().any(Option::is_some) {
                continue;
            }
            let replicas = self.ring.preference_list(&key, self.config.n)?;
            if replicas.first() != Some(&me) {
                continue;
            }
            examined += 1;
            // The newest tombstone's time: its dot's entry in the context.
            let newest = state
                .siblings()
                .iter()
                .filter_map(|s| {
                    state
                        .context()
                        .entries()
                        .iter()
                        .find(|e| e.actor == s.dot.actor)
                        .map(|e| e.timestamp)
                })
                .max()
                .unwrap_or(u64::MAX);
            let hinted = {
                let (r, k) = (self.replica.clone(), key.clone());
                off_runtime(move || r.hints().holds_key(&k)).await?
            };
            if now_secs.saturating_sub(newest) < grace || hinted {
                continue;
            }
            let mut everywhere = true;
            for &peer in replicas.iter().filter(|&&p| p != me) {
                let theirs = tokio::time::timeout(
                    self.config.request_timeout,
                    self.transport.read(peer, key.clone()),
                )
                .await;
                if !matches!(&theirs, Ok(Ok(Some(b))) if *b == bytes) {
                    everywhere = false;
                    break;
                }
            }
            if !everywhere {
                continue;
            }
            // Every other replica reaps first; this one only once all of
            // them confirmed. A replica that did not (it timed out, or a
            // write reached it meanwhile) keeps its tombstone, and so does
            // this node, so anti-entropy puts the tombstone back wherever
            // it went and a later pass collects it everywhere. Until then
            // no replica forgets the delete while another still holds the
            // deleted value's dots.
            let mut confirmed = true;
            for &peer in replicas.iter().filter(|&&p| p != me) {
                let reaped = tokio::time::timeout(
                    self.config.request_timeout,
                    self.transport.reap(peer, key.clone(), bytes.clone()),
                )
                .await;
                confirmed &= matches!(reaped, Ok(Ok(true)));
            }
            if !confirmed {
                Metrics::add(&self.metrics.reaps_unconfirmed, 1);
                continue;
            }
            let reaped = {
                let (r, k, b) = (self.replica.clone(), key.clone(), bytes.clone());
                off_runtime(move || r.reap(&k, &b)).await?
            };
            if reaped {
                collected += 1;
                Metrics::add(&self.metrics.tombstones_collected, 1);
            }
        }
        Ok((examined, collected))
    }

    /// Starts the background maintenance of this node: every
    /// `maintenance_interval` it delivers hints and collects tombstones;
    /// every `anti_entropy_interval` it runs one anti-entropy exchange with
    /// the next live peer, round robin (so repair traffic stays bounded).
    /// The task ends when the coordinator is dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let (tick, ae_every) = (
            self.config.maintenance_interval,
            self.config.anti_entropy_interval,
        );
        tokio::spawn(async move {
            let mut next_ae = Instant::now() + ae_every;
            let mut turn = 0usize;
            loop {
                tokio::time::sleep(tick).await;
                let Some(this) = weak.upgrade() else { return };
                let _ = this.deliver_hints(10_000).await;
                let _ = this.collect_tombstones(wall_clock_secs()).await;
                if Instant::now() >= next_ae {
                    next_ae = Instant::now() + ae_every;
                    let me = this.replica.id();
                    let peers: Vec<NodeId> = this
                        .ring
                        .nodes()
                        .into_iter()
                        .filter(|&p| p != me && this.membership.is_alive(p))
                        .collect();
                    if !peers.is_empty() {
                        let peer = peers[turn % peers.len()];
                        turn = turn.wrapping_add(1);
                        let _ = this
                            .anti_entropy_with(peer, this.config.anti_entropy_fanout)
                            .await;
                    }
                }
            }
        })
    }

    /// One anti-entropy pass: an exchange with every live peer. Failures
    /// with one peer do not stop the others; they are returned with it.
    pub async fn anti_entropy_round(&self, fanout: usize) -> (RepairReport, Vec<Error>) {
        let mut total = RepairReport::default();
        let mut errors = Vec::new();
        for peer in self.ring.nodes() {
            if peer == self.replica.id() || !self.membership.is_alive(peer) {
                continue;
            }
            match self.anti_entropy_with(peer, fanout).await {
                Ok(report) => total += report,
                Err(e) => errors.push(e),
            }
        }
        (total, errors)
    }

    /// Reads `key` from R replicas (this one included) and merges them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key or R out of range;
    /// [`Error::ReadQuorum`] when fewer than R replicas answered in time;
    /// storage errors from this node's engine.
    pub async fn get(&self, key: &[u8], r: Option<usize>) -> Result<GetResult> {
        let started = Instant::now();
        let op = || ClientOp::Get {
            key: key.to_vec(),
            r: r.map(|r| r as u32),
        };
        // Any replica reads as well as the first (a read asks R of them
        // either way), and a read sent to a second replica because the
        // first was slow must not be forwarded back to it.
        let result = match self.dispatch(key, true, op).await {
            Ok(Dispatched::Here { .. }) => self.get_inner(key, r).await,
            Ok(Dispatched::There(_, ClientReply::Read { values, context })) => {
                Ok(GetResult { values, context })
            }
            Ok(Dispatched::There(node, other)) => written(node, other).map(|_| GetResult {
                values: Vec::new(),
                context: Vec::new(),
            }),
            Err(e) => Err(e),
        };
        self.metrics.get.observe(started.elapsed(), &result);
        self.count_quorum(&result);
        if let Ok(got) = &result {
            Metrics::add(&self.metrics.siblings_returned, got.values.len() as u64);
            if got.values.len() > 1 {
                Metrics::add(&self.metrics.reads_with_siblings, 1);
            }
        }
        result
    }

    async fn get_inner(&self, key: &[u8], r: Option<usize>) -> Result<GetResult> {
        self.check_key(key)?;
        let r = r.unwrap_or(self.config.r);
        self.config.check_quorum("r", r)?;
        let replicas = self.replicas(key)?;
        let deadline = Instant::now() + self.config.request_timeout;
        let local = {
            let key = key.to_vec();
            engine_read(&self.replica, move |r| r.state(&key)).await?
        };
        let others: Vec<NodeId> = replicas
            .into_iter()
            .filter(|&n| n != self.replica.id())
            .collect();
        let (tx, mut rx) = mpsc::channel(others.len().max(1));
        for &peer in &others {
            let (transport, tx, key) = (self.transport.clone(), tx.clone(), key.to_vec());
            tokio::spawn(async move {
                let result = transport.read(peer, key).await;
                let _ = tx.send((peer, result)).await;
            });
        }
        drop(tx);
        let mut answers: Vec<(NodeId, Siblings)> = vec![(self.replica.id(), local)];
        let mut failed = Vec::new();
        while answers.len() < r {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((peer, Ok(state)))) => {
                    let state = match state {
                        Some(bytes) => match Siblings::from_bytes(&bytes) {
                            Ok(s) => s,
                            Err(_) => {
                                failed.push(peer);
                                continue;
                            }
                        },
                        None => Siblings::new(),
                    };
                    answers.push((peer, state));
                }
                Ok(Some((peer, Err(_)))) => failed.push(peer),
                Ok(None) | Err(_) => break,
            }
        }
        if answers.len() < r {
            let timed_out = others
                .into_iter()
                .filter(|p| !failed.contains(p) && !answers.iter().any(|(a, _)| a == p))
                .collect();
            return Err(Error::ReadQuorum {
                answered: answers.len(),
                needed: r,
                failed,
                timed_out,
            });
        }
        let mut merged = Siblings::new();
        for (_, state) in &answers {
            merged.sync(state);
        }
        self.read_repair(key, &merged, &answers).await;
        Ok(GetResult {
            values: merged.values().flatten().cloned().collect(),
            context: encode_context(&merged),
        })
    }

    /// Sends the merged state to every replica that answered with less:
    /// after the reply, or before it with `read_repair_blocking`.
    async fn read_repair(&self, key: &[u8], merged: &Siblings, answers: &[(NodeId, Siblings)]) {
        let bytes = merged.to_bytes();
        let mut pending = Vec::new();
        for (node, state) in answers {
            if state == merged {
                continue;
            }
            Metrics::add(&self.metrics.read_repairs, 1);
            if *node == self.replica.id() {
                let (replica, key, merged) = (self.replica.clone(), key.to_vec(), merged.clone());
                let _ = off_runtime(move || replica.merge(&key, &merged)).await;
                continue;
            }
            let (transport, peer, key, bytes) =
                (self.transport.clone(), *node, key.to_vec(), bytes.clone());
            pending.push(tokio::spawn(async move {
                let _ = transport.replicate(peer, key, bytes, None).await;
            }));
        }
        if self.config.read_repair_blocking {
            let deadline = Instant::now() + self.config.request_timeout;
            for task in pending {
                let _ = tokio::time::timeout_at(deadline, task).await;
            }
        }
    }
}
